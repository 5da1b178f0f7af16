"""``download``: a dataset's raw files, from its mirrors, SHA-256 checked (:mod:`subtune.data.download`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import Stage


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--dataset", required=True)
    s.add_argument("--out", required=True, help="directory for the raw files")
    s.add_argument("--mirror", action="append", help="extra mirror base URL, tried first (repeatable)")


def run(a: argparse.Namespace) -> None:
    from ..data import download as dl

    files = dl.download_dataset(a.dataset, Path(a.out), mirrors=a.mirror or None)
    for name, path in files.items():
        print(f"{name}\t{path}")


STAGE = Stage("download", "download a dataset's raw files (mirrors, SHA-256 checked)", add_arguments, run, order=10,
              heavy=False)
