"""Formatting shared by every table and plot: Markdown tables, numbers, labels, colours and markers, and the
atomic writers (:func:`subtune.io.atomic_path`), so that two tables never format the same thing differently."""

from __future__ import annotations

import functools
import hashlib
import math
import os
from typing import Any, Callable, Sequence

import pandas as pd

from ..io import atomic_path
from ..methods import REGISTRY, method_order

PathLike = str | os.PathLike
LP_LABEL = "(lp)"  # the empty block set in tables
# Edge flags (the tune file's ``edge``: the final choice is still the largest/smallest value tried, after the
# grid was extended by up to tuning.extend values beyond it): shown beside the chosen value in tables/main.md.
EDGE_MARKS = {"upper": "↑edge", "lower": "↓edge"}
# A (colour, marker) per method, the same in every plot of every experiment: the registered methods, in table
# order, take the n-th colour with the n-th marker (15 of each, so 15 methods differ in both); see method_style.
# tab10's colours, black, and four dark ones of tab20b (distinct from tab10's at a marker's size).
METHOD_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#000000", "#7f7f7f",
                 "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#7b4173"]
METHOD_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "h", "<", ">", "p", "d", "H", "8"]
GRID_MARKERS = METHOD_MARKERS  # the name this package exports


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


def _style_pair(i: int) -> tuple[str, str]:
    """The i-th (colour, marker) pair: colour i, marker i for the first 15, then the markers shifted by one per
    further round of 15 colours (225 distinct pairs)."""
    nc, nm = len(METHOD_COLORS), len(METHOD_MARKERS)
    c = i % nc
    return METHOD_COLORS[c], METHOD_MARKERS[(c + i // nc) % nm]


def _style_index(name: str) -> int:
    """``name``'s pair index: its place among the registered methods in table order, else one derived from the
    name itself (sha256, not ``hash``: the same in every process) among the pairs no registered method takes."""
    known = method_order(REGISTRY)
    if name in known:
        return known.index(name)
    free = len(METHOD_COLORS) * len(METHOD_MARKERS) - len(known)
    return len(known) + int(hashlib.sha256(name.encode()).hexdigest(), 16) % free


def method_style(name: str) -> tuple[str, str]:
    """The (colour, marker) of method ``name`` in every plot: fixed by the name (and the registry), so a method
    looks the same across plots and experiments and no two registered methods look alike."""
    return _style_pair(_style_index(name))


def method_styles(methods: Sequence[str]) -> dict[str, tuple[str, str]]:
    """:func:`method_style` of each method, kept distinct within one plot: an unregistered name whose pair is
    already taken moves to the next free pair (registered names never move)."""
    n = len(METHOD_COLORS) * len(METHOD_MARKERS)
    out: dict[str, tuple[str, str]] = {}
    taken: set[int] = set()
    names = list(dict.fromkeys(methods))
    for m in sorted(names, key=lambda m: (m not in REGISTRY, m)):  # registered first: they keep their pair
        i = _style_index(m)
        while i in taken and m not in REGISTRY:
            i = len(REGISTRY) + (i + 1 - len(REGISTRY)) % (n - len(REGISTRY))
        taken.add(i)
        out[m] = _style_pair(i)
    return {m: out[m] for m in names}


def fmt_seconds(v: float) -> str:
    """A tick in seconds: ``0.5 s``, ``10 s``, ``1000 s``, ``100K s``."""
    return f"{v:g} s" if v < 1e5 else f"{fmt_params(v)} s"


def fmt_times(v: float) -> str:
    """A tick in multiples (of a plain fine-tune): ``0.1×``, ``1×``, ``10×``."""
    return f"{v:g}×"


def log_ticks(axis, fmt: Callable[[float], str] = fmt_params) -> None:
    """Readable ticks on a log-scaled matplotlib Axis (``ax.xaxis``, a secondary axis' ``xaxis``): major ticks
    labelled as plain numbers by ``fmt`` (:func:`fmt_params`: 1K, 10K, 1M; :func:`fmt_seconds`;
    :func:`fmt_times`), at decades, at 1-2-5 on a short range, at round values within one decade; minor ticks
    unlabelled. matplotlib's default labels minor ticks on short ranges in scientific notation, where they print
    over each other."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis.set_major_locator(_plain_log_locator()())
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: fmt(v)))
    axis.set_minor_formatter(NullFormatter())


@functools.cache
def _plain_log_locator():
    """The major-tick locator of :func:`log_ticks` (a class made on first use: matplotlib is imported lazily)."""
    from matplotlib.ticker import Locator, LogLocator, MaxNLocator

    class PlainLogLocator(Locator):
        """The coarsest of decades (thinned to the room there is), 1-3-10, 1-2-5 and whole multiples (2, 3, 4,
        ...) that puts three ticks in view, each at least 1/room of the axis from the next; else three or four round
        values (MaxNLocator, on a short range): a few labelled ticks, evenly spread, whatever the range."""

        def __call__(self):
            return self.tick_values(*self.axis.get_view_interval())

        def tick_values(self, vmin, vmax):
            vmin, vmax = sorted((float(vmin), float(vmax)))
            if vmax <= 0:
                return []
            vmin = vmin if vmin > 0 else vmax / 1000
            span = math.log10(vmax / vmin)
            room = max(3, min(8, self.axis.get_tick_space())) if self.axis is not None else 6
            exps = range(math.floor(math.log10(vmin)), math.ceil(math.log10(vmax)) + 1)
            for subs in ((1.0,), (1.0, 3.0), (1.0, 2.0, 5.0), tuple(range(1, 10))):
                ticks = (LogLocator(base=10, subs=subs, numticks=room).tick_values(vmin, vmax) if len(subs) == 1
                         else [s * 10.0 ** e for e in exps for s in subs])
                seen = [math.log10(t) for t in ticks if vmin * (1 - 1e-9) <= t <= vmax * (1 + 1e-9)]
                if len(seen) >= 3:
                    if min(b - a for a, b in zip(seen, seen[1:])) >= span / room:
                        return ticks
                    break  # finer steps only come closer together
            return [v for v in MaxNLocator(nbins=3, steps=[1, 2, 2.5, 5, 10]).tick_values(vmin, vmax) if v > 0]

    return PlainLogLocator


def panels(fig, n: int, per_row: int = 4):
    """``n`` axes, at most ``per_row`` to a row (many targets wrap instead of making a figure metres wide); the
    unused cells of the last row are removed."""
    rows = max(1, math.ceil(n / per_row))
    axes = fig.subplots(rows, min(n, per_row) or 1, squeeze=False).ravel()
    for ax in axes[n:]:
        ax.remove()
    return list(axes[:n])


def legend_outside(fig, handles, fontsize: float = 8) -> None:
    """The figure's legend in a column right of every panel (constrained layout makes room): it never covers a
    point."""
    if handles:
        fig.legend(handles=handles, loc="outside right center", fontsize=fontsize)


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
