"""Trainers, one package per task, each the same shape: `train.py` holds a `Config` dataclass
and `run(config)`, `cli.py` builds the Config from argparse and calls run."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def config_from(cls: type[T], source: object, *, skip: Collection[str] = (), **given: Any) -> T:
    """cls (a dataclass) from the same-named attributes of source (parsed arguments, a recipe);
    `given` wins; fields source lacks, and those named in skip, keep their defaults."""
    values = {
        f.name: getattr(source, f.name)
        for f in fields(cls)  # type: ignore[arg-type]
        if f.init and f.name not in skip and hasattr(source, f.name)
    }
    return cls(**{**values, **given})
