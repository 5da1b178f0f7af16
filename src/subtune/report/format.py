"""Formatting shared by every table and plot: Markdown tables, numbers, labels, colours and markers, and the
atomic writers (:func:`subtune.io.atomic_path`), so that two tables never format the same thing differently."""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import pandas as pd

from ..io import atomic_path

PathLike = str | os.PathLike
LP_LABEL = "(lp)"  # the empty block set in tables
# Edge flags (the tune file's ``edge``: the final choice is still the largest/smallest value tried, after the
# grid was extended by up to tuning.extend values beyond it): shown beside the chosen value in tables/main.md.
EDGE_MARKS = {"upper": "↑edge", "lower": "↓edge"}
# 15 methods: each a distinct (colour, marker) pair; the first ten colours are tab20's dark ones
GRID_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">", "p", "d", "H", "8"]


def fmt_params(n: float | None) -> str:
    """Parameter count, 3 significant digits: 512, 5.13K, 11.2M."""
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "n/a"
    n = float(n)
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.0f}" if n == int(n) else f"{n:.3g}"


def sample_std(x: pd.Series) -> float:
    """Sample std (ddof=1); 0.0 for a single value."""
    return float(x.std(ddof=1)) if len(x) > 1 else 0.0


def edge_mark(direction: Any) -> str:
    """`` ↑edge``/`` ↓edge`` for a value still on the upper/lower edge of the values tried ('' otherwise)."""
    return f" {EDGE_MARKS[direction]}" if direction in EDGE_MARKS else ""


def md_table(header: list[str], rows: list[list[str]], align: list[str] | None = None) -> str:
    """A Markdown table; ``align``: ``l``/``r`` per column (default: the first left, the others right)."""
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(lines)


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """A matplotlib cycle colour per method, in table order (the cost plot)."""
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def method_styles(methods: Sequence[str]) -> dict[str, tuple[Any, str]]:
    """A distinct (tab20 colour, marker) per method, dark colours first (the grid plot's many lines)."""
    from matplotlib import colormaps

    tab = colormaps["tab20"]
    return {m: (tab((2 * i) % 20 + (2 * i) // 20), GRID_MARKERS[i % len(GRID_MARKERS)]) for i, m in enumerate(methods)}


def write_csv(df: pd.DataFrame, out: PathLike) -> None:
    """CSV; counts (parameters, sizes) that are whole numbers are written as integers."""
    df = df.copy()
    for c in df.columns:
        col = df[c]
        countlike = "params" in c or c in ("train_size", "n_seeds", "index", "seed") or c.endswith("candidates")
        if countlike and pd.api.types.is_float_dtype(col):
            df[c] = pd.Series([v if pd.isna(v) else int(v) if v == int(v) else round(v, 2) for v in col],
                              index=df.index, dtype=object)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, index=False, lineterminator="\n")


def write_text(text: str, out: PathLike) -> None:
    """A text file, atomically."""
    with atomic_path(out) as tmp:
        tmp.write_text(text)


def figure(width: float, height: float):
    """A matplotlib Figure without pyplot (no global state, no backend switch)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def save_png(fig, out: PathLike) -> None:
    """A PNG whose bytes depend on the data, not the matplotlib version (no "Software" metadata)."""
    # Agg via the Figure's own canvas: no pyplot, no global backend switch.
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
