"""``replay``: the selection another epsilon makes, replayed from a finished greedy walk.

The epsilon sensitivity's sets cost no new scoring: :func:`subtune.select.replay` reads them off a walk that went
at least as far.
"""

from __future__ import annotations

import argparse

from . import Stage
from ._common import existing


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--state", required=True, help="final state of a walk that went at least as far")
    s.add_argument("--epsilon", type=float, required=True)
    s.add_argument("--out", required=True)


def run(a: argparse.Namespace) -> None:
    """The final state a selection with ``--epsilon`` reaches, replayed from a finished walk."""
    from .. import select
    from ..io import read_json, write_json

    state = select.replay(read_json(existing(a.state)), a.epsilon)
    write_json(a.out, state)
    print(f"epsilon {a.epsilon}: selected {state['selected']} after {len(state['rounds'])} round(s) "
          f"({state['stop_reason']})")


STAGE = Stage("replay", "the selection another epsilon makes, replayed from a finished greedy walk", add_arguments,
              run, order=80, heavy=False)
