"""Published numbers (``references/*.csv``) beside ours: reading them, matching them to our rows, and the
*Published numbers beside ours* section."""

from __future__ import annotations

import math
from typing import Sequence

import pandas as pd

from .. import SubtuneError
from ..methods import method_label
from .format import PathLike, md_table
from .load import as_list

REFERENCE_COLUMNS = ["backbone", "target", "method", "train_size", "metric", "value", "paper", "table", "arxiv", "note"]


def load_references(files: Sequence[PathLike] | None) -> pd.DataFrame:
    """Published numbers (``references/*.csv``): one row per backbone, target, method (and training size).

    Columns: backbone (the timm model name the paper's backbone corresponds to),
    target (our dataset name), method (ours), train_size (empty: the config's
    regime), metric (``test_acc``), value (percent), paper, table, arxiv
    (identifier and version) and note. Every row must name its source.
    """
    frames = []
    for f in as_list(files or []):
        if not f.is_file():
            raise SubtuneError(f"missing references file: {f}")
        df = pd.read_csv(f, comment="#", dtype={"train_size": "Int64"})
        missing = [c for c in REFERENCE_COLUMNS if c not in df.columns]
        if missing:
            raise SubtuneError(f"{f}: missing column {missing[0]!r} (columns: {', '.join(REFERENCE_COLUMNS)})")
        bad = df[df[["paper", "table", "arxiv"]].isna().any(axis=1)]
        if len(bad):
            raise SubtuneError(f"{f}: row {int(bad.index[0]) + 2} has no source (paper, table, arxiv)")
        frames.append(df.assign(file=str(f)))
    if not frames:
        return pd.DataFrame(columns=[*REFERENCE_COLUMNS, "file"])
    return pd.concat(frames, ignore_index=True)


def attach_published(summ: pd.DataFrame, refs: pd.DataFrame, backbone: str | None) -> pd.DataFrame:
    """Add ``published`` (percent), ``diff`` (ours - published, points) and ``published_source`` columns.

    A published number is matched on the backbone (the config's timm name, with
    or without its pretrained tag), the target, the method and, where the
    reference gives one, the training-set size. No match: empty cells.
    """
    out = summ.copy()
    out["published"], out["diff"], out["published_source"] = math.nan, math.nan, ""
    if refs.empty or not backbone:
        return out
    base = backbone.split(".")[0]
    refs = refs[(refs["metric"] == "test_acc") & refs["backbone"].isin([backbone, base])]
    for i, r in out.iterrows():
        m = refs[(refs["target"] == r["target"]) & (refs["method"] == r["method"])]
        if "train_size" in out.columns:
            m = m[m["train_size"].isna() | (m["train_size"] == r["train_size"])]
        else:
            m = m[m["train_size"].isna()]
        if len(m):
            ref = m.iloc[0]
            out.at[i, "published"] = float(ref["value"])
            out.at[i, "diff"] = round(float(r["test_acc_mean"]) - float(ref["value"]), 4)
            out.at[i, "published_source"] = f"{ref['paper']}, {ref['table']}, arXiv:{ref['arxiv']}"
    return out


def published_md(summ: pd.DataFrame) -> list[str]:
    """The main table's published numbers beside ours, with their sources (nothing when none matched)."""
    pub = summ.dropna(subset=["published"])
    if pub.empty:
        return []
    rows = [[method_label(r["method"]), r["target"], f"{r['test_acc_mean']:.2f}", f"{r['published']:.2f}",
             f"{r['diff']:+.2f}", r["published_source"]] for _, r in pub.iterrows()]
    return ["", "## Published numbers beside ours", "",
            "Test accuracy (%); Δ = ours − published, in points. Published numbers are matched on backbone, "
            "target and method (`references/*.csv`).", "",
            md_table(["method", "target", "ours", "published", "Δ", "source"], rows,
                     ["l", "l", "r", "r", "r", "l"])]
