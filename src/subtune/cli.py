"""``python -m subtune STAGE ...``: one subcommand per pipeline stage.

Each stage reads explicit input paths and writes explicit output paths
atomically; hyperparameters arrive as JSON (the workflow passes config
sections through ``params``). Bad input is reported as one line naming the
culprit (exit status 2) before any expensive work starts; so is a full disk
(one line naming the file being written, :func:`subtune.io.full_disk_error`).

The stages themselves, each with its arguments, live in :mod:`subtune.stages`
(one module per stage); this module builds the parser from them and dispatches.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import SubtuneError
from .stages import discover


def build_parser() -> argparse.ArgumentParser:
    """The parser of every stage :func:`subtune.stages.discover` finds, in their order."""
    p = argparse.ArgumentParser(prog="python -m subtune", description="subtune: one subcommand per pipeline stage "
                                "(each reads explicit inputs and writes explicit outputs atomically).")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage in discover().values():
        sp = sub.add_parser(stage.name, help=stage.help, description=stage.help)
        stage.add_arguments(sp)
        sp.set_defaults(fn=stage.run)
    return p


def warm_stages() -> frozenset[str]:
    """The stages a warm server runs (:mod:`subtune.warm`): those that import torch, timm, MLflow or pandas."""
    return frozenset(name for name, stage in discover().items() if stage.heavy)


def main(argv: list[str] | None = None) -> int:
    """Run one stage: its exit status (2 and one line on stderr for bad input; argparse exits 2 by itself; a
    stage whose run function returns an int exits with it, e.g. ``status``'s 1 for stale results)."""
    from . import timing

    timing.reset()
    parser = build_parser()
    a = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.INFO, format="%(message)s")
    try:
        code = a.fn(a)
    except SubtuneError as exc:
        print(f"subtune {a.stage}: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a full disk outside the atomic writers (which name their file themselves)
        from .io import full_disk_error

        full = full_disk_error(exc)
        if full is None:
            raise
        print(f"subtune {a.stage}: error: {full}", file=sys.stderr)
        return 2
    if a.stage in warm_stages():  # the job log's last line: where its time went (bench/pipeline.py reads it)
        print(timing.summary(a.stage), file=sys.stderr, flush=True)
    return code if isinstance(code, int) and not isinstance(code, bool) else 0
