"""DVC metrics: one small JSON file per method and target of the main table (``dvc metrics show``: one row each).

DVC prints a metrics file as one row (its flattened keys as columns) and expands a directory into its files, so
``results/<experiment>/metrics/<method>/<target>.json`` reads as the main table, one row per method and target
with a few columns, where ``main.json`` (every number in one file) reads as one very long row.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import pandas as pd

from ... import SubtuneError
from ...io import write_json
from ..format import PathLike
from ..load import as_list
from ..registry import table
from .main import main_metrics

#: the main table's columns each metrics file holds (the few a row of ``dvc metrics show`` can show)
METRICS = ["test_acc_mean", "test_acc_std", "val_acc_mean", "trainable_params"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--main", required=True, help="the main table (tables/main.csv)")
    p.add_argument("--out-json", nargs="+", required=True,
                   help="the files to write, DIR/<method>/<target>.json, all in one DIR")


def run(a: argparse.Namespace) -> pd.DataFrame:
    return metrics(a.main, a.out_json)


@table("metrics", arguments=add_arguments, run=run)
def metrics(main_csv: PathLike, out_files: Sequence[PathLike]) -> pd.DataFrame:
    """Each ``DIR/<method>/<target>.json`` of ``out_files`` from the main table's row of that method and target:
    test_acc_mean, test_acc_std, val_acc_mean (percent) and trainable_params, rounded as in ``main.json`` (null
    where the table has no number, e.g. the std of one seed: DVC leaves it out). A file named for a method and
    target the table has no row of is refused before anything is written. Rows not asked for (the VTAB-1k
    averages) are not written, and any other ``DIR/*/*.json`` is deleted: a method or target dropped from the
    config leaves no file that DVC would still show. Returns the rows written (``file``: the path written)."""
    path = Path(main_csv)
    if not path.is_file():
        raise SubtuneError(f"missing main table: {path}")
    df = pd.read_csv(path)
    missing = [c for c in ("method", "target", *METRICS) if c not in df.columns]
    if missing:
        raise SubtuneError(f"{path}: no column {', '.join(missing)} (not a main table?)")
    files = as_list(out_files)
    if not files:
        raise SubtuneError("no metrics file to write")
    root = files[0].parent.parent
    wanted: dict[tuple[str, str], Path] = {}
    for f in files:
        if f.suffix != ".json" or f.parent.parent != root:
            raise SubtuneError(f"metrics file {f}: not {root}/<method>/<target>.json like {files[0]}")
        wanted[(f.parent.name, f.stem)] = f
    rows = df[[(str(m), str(t)) in wanted for m, t in zip(df["method"], df["target"])]]
    rows = rows[["method", "target", *METRICS]].drop_duplicates(["method", "target"])
    have = set(zip(rows["method"].astype(str), rows["target"].astype(str)))
    if len(have) < len(wanted):
        m, t = next(k for k in wanted if k not in have)
        raise SubtuneError(f"{path}: no row of method {m!r} on target {t!r} (for {wanted[(m, t)]})")

    numbers = main_metrics(rows)
    for m, t in zip(rows["method"].astype(str), rows["target"].astype(str)):
        write_json(wanted[(m, t)], numbers[m][t])
    keep = set(wanted.values())
    for f in root.glob("*/*.json"):
        if f not in keep:
            f.unlink()
    for d in root.iterdir():
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()
    rows = rows.reset_index(drop=True)
    rows["file"] = [str(wanted[(str(m), str(t))]) for m, t in zip(rows["method"], rows["target"])]
    return rows
