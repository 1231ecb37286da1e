"""The offline tools' one entry point: `python -m scripts <command> [args]`.

Each command is one line here: its module, the function that takes argv, and what it does.
The module is imported only when its command runs, so `python -m scripts --help` needs
nothing beyond the standard library (no torch), and each command keeps its own --help.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple


class Command(NamedTuple):
    target: str  # "module:function"; the function takes argv (list[str]) and may return an rc
    help: str


COMMANDS: dict[str, Command] = {
    # recipes: the models and data sets this project builds
    "build-models": Command(
        "scripts.recipes.build_models:cli", "build the default model set into models/ (cached)"
    ),
    "build-elpv": Command(
        "scripts.recipes.build_elpv:main", "build the solar-cell defect classifier vgg16-elpv"
    ),
    "elpv-data": Command(
        "scripts.recipes.cli:elpv_data", "write the ELPV solar-cell ImageFolders (both variants)"
    ),
    "lfw-data": Command(
        "scripts.recipes.lfw:main", "write the LFW-subset faces/non-faces ImageFolder (--bench)"
    ),
    "make-shapes": Command(
        "scripts.recipes.cli:make_shapes", "generate the COCO-format shapes segmentation data set"
    ),
    # train: one package per task, the same shape for all three
    "train-classifier": Command(
        "scripts.train.classification.cli:main", "fine-tune a pretrained classifier, export it"
    ),
    "train-segmenter": Command(
        "scripts.train.segmentation.cli:main", "fine-tune Mask R-CNN on COCO data, export it"
    ),
    "train-faces": Command(
        "scripts.train.similarity.cli:main", "train a face-embedding tower (triplet loss)"
    ),
    # export: a trained model in, ONNX + model card out
    "export": Command("scripts.export.cli:main", "export a model to ONNX + model card"),
    "export-triton": Command(
        "scripts.export.triton:main", "write a Triton model repository from the model cards"
    ),
    "quantize": Command("scripts.quantize.cli:main", "static INT8 quantisation of a served model"),
    # bench: figures and checks against running services
    "smoke": Command("scripts.bench.smoke:main", "check a running service end to end"),
    "bench": Command(
        "scripts.bench.serving:main", "serving benchmark: this service against peer servers"
    ),
    "bench-faces": Command("scripts.bench.faces:main", "/verify-faces latency vs bare sessions"),
    "bench-gallery": Command(
        "scripts.bench.gallery:main", "face-gallery figures (identify, search, enrol)"
    ),
    "bench-segment": Command("scripts.bench.segment:main", "/segment latency vs a bare session"),
    "bench-nms": Command("scripts.bench.nms:main", "time the service's NMS on random boxes"),
    "bench-tiling": Command(
        "scripts.bench.tiling:main", "tiled inference: what it finds and what it costs"
    ),
    "bench-repository": Command(
        "scripts.bench.repository:main", "the live model repository: memory and reloads"
    ),
    "soak": Command("scripts.bench.soak:main", "mixed good and bad requests for a fixed time"),
    "time-first-answer": Command(
        "scripts.bench.first_answer:main", "time a fresh checkout's serve.sh to its first answer"
    ),
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m scripts",
        description="Offline tools: build, train, export, quantize and benchmark models. "
        "`python -m scripts <command> --help` shows a command's own arguments.",
    )
    sub = p.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, command in COMMANDS.items():
        sub.add_parser(name, help=command.help, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-") or argv[0] not in COMMANDS:
        parser().parse_args(argv)  # prints help, or the error with the list of commands
        return 2
    name, rest = argv[0], argv[1:]
    module, function = COMMANDS[name].target.split(":")
    run = getattr(importlib.import_module(module), function)
    program, sys.argv[0] = sys.argv[0], f"python -m scripts {name}"  # argparse's prog
    try:
        rc = run(rest)
    finally:
        sys.argv[0] = program
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
