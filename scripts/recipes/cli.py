"""The data-set commands: argparse -> the recipe module's one function."""

from __future__ import annotations

import argparse
from pathlib import Path

from scripts.recipes import elpv_data as elpv
from scripts.recipes import shapes


def make_shapes(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=shapes.__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--train", type=int, default=800, help="training images")
    parser.add_argument("--val", type=int, default=100, help="validation images")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for spec in shapes.splits(args.train, args.val, args.seed):
        print(shapes.make_split(args.out, spec))


def elpv_data(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=elpv.__doc__.split("\n\n")[0])
    p.add_argument("root", type=Path, help="writes root/extracted, root/binary, root/4-level")
    p.add_argument("--variant", choices=elpv.VARIANTS, action="append", help="default: both")
    args = p.parse_args(argv)
    elpv.prepare(args.root, tuple(args.variant or elpv.VARIANTS))
