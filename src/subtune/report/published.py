"""Published numbers (``references/*.csv``) beside ours: reading them, matching them to our rows, and the
*Published numbers beside ours* section."""

from __future__ import annotations

import json
import math
from typing import Sequence

import pandas as pd

from .. import SubtuneError
from ..methods import method_label
from .format import PathLike, md_table
from .load import as_list
from .vtab import VTAB_GROUP_OF, VTAB_MEAN_TASKS, vtab_means

REFERENCE_COLUMNS = ["backbone", "target", "method", "train_size", "metric", "value", "paper", "table", "arxiv", "note"]
#: optional column: the source's short name, one column per source in tables/main.md (default: ``paper``)
SOURCE_COLUMN = "source"
#: the main table's column of one source's numbers: ``published: <source>`` (see :func:`attach_published`)
SOURCE_PREFIX = "published: "
#: per row, JSON: source column -> its paper, arXiv identifier and backbone
SOURCES_COLUMN = "published_sources"


def load_references(files: Sequence[PathLike] | None) -> pd.DataFrame:
    """Published numbers (``references/*.csv``): one row per backbone, target, method (and training size).

    Columns: backbone (the timm model name the paper's backbone corresponds to),
    target (our dataset name), method (ours), train_size (empty: the config's
    regime), metric (``test_acc``), value (percent), paper, table, arxiv
    (identifier and version), note and, optionally, source (a short name of
    where the number comes from, e.g. ``V-PETL Bench``: several sources may give
    a number for the same backbone, target and method, and each gets its own
    column; empty or missing: the paper). Every row must name its source.
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
        source = df[SOURCE_COLUMN] if SOURCE_COLUMN in df.columns else pd.Series(pd.NA, index=df.index)
        frames.append(df.assign(**{SOURCE_COLUMN: source.fillna(df["paper"]).astype(str)}, file=str(f)))
    if not frames:
        return pd.DataFrame(columns=[*REFERENCE_COLUMNS, SOURCE_COLUMN, "file"])
    return pd.concat(frames, ignore_index=True)


def _weights(backbone: str) -> str:
    """The pretrained tag of a timm name (``augreg_in21k`` of ``vit_base_patch16_224.augreg_in21k``; '' for none)."""
    return backbone.partition(".")[2]


def attach_published(summ: pd.DataFrame, refs: pd.DataFrame, backbone: str | None) -> pd.DataFrame:
    """Add ``published`` (percent), ``diff`` (ours - published, points) and ``published_source`` columns, and one
    ``published: <source>`` column per source that has a number for one of our rows.

    ``published``/``diff``/``published_source``: the first reference (in the order of ``refs``: the config's
    ``references:``) for our weights, matched on the backbone (the config's timm name, or the reference's without
    a pretrained tag), the target, the method and, where the reference gives one, the training-set size; the
    VTAB-1k averages and the sweep read these. ``published: <source>``: every source's number for the same
    architecture, target, method (and size); a source whose backbone has other pretrained weights than ours (the
    original ImageNet-21k ViT-B/16 release beside AugReg's) is a column of its own, ``published: <source>,
    <weights> weights``, so that a number from other weights is never read as a repeat of our experiment. No
    match: empty cells.
    """
    out = summ.copy()
    out["published"], out["diff"], out["published_source"] = math.nan, math.nan, ""
    if refs.empty or not backbone:
        return out
    base = backbone.split(".")[0]
    refs = refs[(refs["metric"] == "test_acc") & (refs["backbone"].str.split(".").str[0] == base)]
    if SOURCE_COLUMN not in refs.columns:
        refs = refs.assign(**{SOURCE_COLUMN: refs["paper"]})
    same = refs["backbone"].isin([backbone, base])
    column = [SOURCE_PREFIX + (s if ok else f"{s}, {_weights(b)} weights")
              for s, b, ok in zip(refs[SOURCE_COLUMN], refs["backbone"], same)]
    refs = refs.assign(_same=same.to_numpy(), _column=column)
    per_source: dict[str, dict[int, float]] = {}
    described: dict[int, dict[str, str]] = {}
    for i, r in out.iterrows():
        m = refs[(refs["target"] == r["target"]) & (refs["method"] == r["method"])]
        if "train_size" in out.columns:
            m = m[m["train_size"].isna() | (m["train_size"] == r["train_size"])]
        else:
            m = m[m["train_size"].isna()]
        for col, ref in m.drop_duplicates("_column").set_index("_column").iterrows():
            per_source.setdefault(col, {})[i] = float(ref["value"])
            described.setdefault(i, {})[col] = f"{ref['paper']}, arXiv:{ref['arxiv']}, backbone `{ref['backbone']}`"
        m = m[m["_same"]]
        if len(m):
            ref = m.iloc[0]
            out.at[i, "published"] = float(ref["value"])
            out.at[i, "diff"] = round(float(r["test_acc_mean"]) - float(ref["value"]), 4)
            out.at[i, "published_source"] = f"{ref['paper']}, {ref['table']}, arXiv:{ref['arxiv']}"
    order = [c for c in dict.fromkeys(refs["_column"]) if c in per_source]  # the order of refs (the config's)
    for col in order:
        out[col] = pd.Series(per_source[col], dtype=float).reindex(out.index)
    if order:  # what each source column of the row holds (the Markdown's list of sources)
        out[SOURCES_COLUMN] = [json.dumps(described.get(i, {}), sort_keys=True) if i in described else ""
                               for i in out.index]
    return out


def source_columns(summ: pd.DataFrame) -> list[str]:
    """The ``published: <source>`` columns of a table :func:`attach_published` made, in order."""
    return [c for c in summ.columns if c.startswith(SOURCE_PREFIX)]


def _source_means(summ: pd.DataFrame, cols: list[str]) -> list[dict]:
    """Per method with VTAB-1k rows: the mean of its tasks, ours and each source's, where the source has every
    task of ours (over the same tasks only: an average over other tasks would not compare)."""
    out = []
    for m in dict.fromkeys(summ["method"]):
        sub = summ[(summ["method"] == m) & summ["target"].isin(list(VTAB_GROUP_OF))]
        if sub.empty:
            continue
        row = {"method": m, "target": VTAB_MEAN_TASKS, "test_acc_mean": vtab_means(
            dict(zip(sub["target"], sub["test_acc_mean"])))[0]}
        for c in cols:
            if sub[c].notna().all():
                row[c] = vtab_means(dict(zip(sub["target"], sub[c])))[0]
        if len(row) > 3:
            out.append(row)
    return out


def published_md(summ: pd.DataFrame) -> list[str]:
    """The main table's published numbers beside ours: a column per source (value and Δ), the VTAB-1k mean of
    tasks where a source has every task of ours, and the sources (nothing when none matched)."""
    cols = source_columns(summ)
    pub = summ.dropna(subset=cols, how="all") if cols else summ.iloc[0:0]
    if pub.empty:
        return []
    means = _source_means(pub, cols)
    rows_in = [r for _, r in pub.iterrows()] + means

    def cell(r, c) -> str:
        v = r.get(c, math.nan)
        return "–" if pd.isna(v) else f"{v:.2f} ({float(r['test_acc_mean']) - v:+.2f})"

    rows = [[method_label(r["method"]), r["target"], f"{r['test_acc_mean']:.2f}", *(cell(r, c) for c in cols)]
            for r in rows_in]
    info: dict[str, dict[str, None]] = {c: {} for c in cols}
    for text in pub.get(SOURCES_COLUMN, pd.Series(dtype=str)).dropna():
        for c, what in (json.loads(text) if text else {}).items():
            info.setdefault(c, {})[what] = None
    notes = [f"- **{c.removeprefix(SOURCE_PREFIX)}**: {'; '.join(info[c])}" for c in cols if info.get(c)]
    other = [c for c in cols if c.endswith(" weights")]
    return ["", "## Published numbers beside ours", "",
            "Test accuracy (%), each source in its own column as `published (Δ)`, Δ = ours − published, in points. "
            "Published numbers are matched on backbone, target and method (`references/*.csv`)"
            + (("; a column named with other weights than ours comes from the same architecture pretrained "
                "otherwise, so its Δ includes the difference of the pretrained weights") if other else "")
            + "." + (f" {VTAB_MEAN_TASKS}: over our VTAB-1k tasks, where the source has all of them." if means else ""),
            "",
            md_table(["method", "target", "ours", *(c.removeprefix(SOURCE_PREFIX) for c in cols)], rows,
                     ["l", "l", "r", *(["r"] * len(cols))]),
            "", "Sources:", "", *notes]
