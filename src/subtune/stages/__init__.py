"""The CLI's stages: one module per ``python -m subtune STAGE``, each holding its arguments beside its run function.

A stage module defines ``STAGE = Stage(...)`` at module level; :func:`discover` imports every module of this package
whose name does not start with ``_`` and collects those, so adding a stage is adding its module, listed nowhere else
(:mod:`subtune.cli` builds the parser from them). Arguments shared between stages (training options, ``--track``,
...) live in :mod:`._common`.

A stage module imports without torch, timm, MLflow or pandas: ``--help``, the argument check and the warm-start
client (:mod:`subtune.warm`) read every stage's definition, and those libraries take seconds to import. The run
functions import what they need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .._lazy import import_submodules

if TYPE_CHECKING:
    import argparse


@dataclass(frozen=True)
class Stage:
    """One subcommand: its name and help line, what it adds to its parser, what it runs.

    ``order`` places it in ``--help``'s list (the pipeline's order, not the alphabet). ``heavy``: it imports
    torch, timm, MLflow or pandas, so a warm server runs it (:mod:`subtune.warm`) and its log ends with the
    timing line (:func:`subtune.timing.summary`); a light stage runs in its own process.
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]
    order: int
    heavy: bool = True


def discover() -> dict[str, Stage]:
    """Every stage of this package's modules, by name, in ``order``.

    Scans the package directory (or directories: ``__path__`` may be extended) on each call; modules already
    imported are not imported again. A module without ``STAGE``, or two claiming one name, is a bug.
    """
    found: dict[str, Stage] = {}
    for module in import_submodules(__name__, __path__):
        stage = getattr(module, "STAGE", None)
        if not isinstance(stage, Stage):
            raise TypeError(f"{module.__name__}: a stage module defines STAGE = Stage(...)")
        if stage.name in found:
            raise ValueError(f"{module.__name__}: stage {stage.name!r} is defined twice")
        found[stage.name] = stage
    return dict(sorted(found.items(), key=lambda kv: (kv[1].order, kv[0])))


discover()  # import every stage module now: a warm server preloads this package (subtune.warm.PRELOAD)

__all__ = ["Stage", "discover"]
