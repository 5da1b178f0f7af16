"""The report's plots with every registered method: one (colour, marker) per method, fixed by its name and the same
in every plot; log axes labelled in plain numbers without minor tick labels; no two tick labels and no legend
over each other or over the axes. Each plot function runs on results written as the stages write them, for all
registered methods at once (no training), and its Figure's artists are read back."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_hex

from subtune import report
from subtune.methods import REGISTRY, method_label, method_needs, method_order
from subtune.report.cost import cost_plot, params_plot
from subtune.report.format import fmt_params, fmt_seconds, fmt_times, log_ticks, method_style, method_styles
from subtune.report.tables.grid import grid_plot, grid_rows
from subtune.report.tables.sweep import sweep, sweep_plot

from helpers.reports import BLOCKS, run_json, tune_json, write_json

METHODS = method_order(REGISTRY)
LABELS = {method_label(m): m for m in METHODS}
TARGETS = ["fmnist", "kmnist"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _want(m: str) -> tuple[str, str]:
    col, mk = method_style(m)
    return to_hex(col), mk


def test_no_two_registered_methods_share_a_style():
    styles = [method_style(m) for m in METHODS]
    assert len(set(styles)) == len(METHODS)
    if len(METHODS) <= 15:  # 15 colours and 15 markers: each method differs from every other in both
        assert len({c for c, _ in styles}) == len({mk for _, mk in styles}) == len(METHODS)
    # fixed by the name: the same whatever else a plot shows, and in any order
    assert method_styles(list(reversed(METHODS[:3]))) == {m: method_style(m) for m in reversed(METHODS[:3])}
    # a name no method registers: deterministic, and never a registered method's style
    assert method_style("someone_elses") == method_style("someone_elses")
    assert method_style("someone_elses") not in styles
    many = method_styles([*METHODS, *(f"extra{i}" for i in range(40))])
    assert len(set(many.values())) == len(many)
    assert all(many[m] == method_style(m) for m in METHODS)


def test_log_ticks_are_plain_numbers():
    assert [fmt_params(v) for v in (100, 1e3, 1e4, 1e5, 1e6)] == ["100", "1K", "10K", "100K", "1M"]
    assert [fmt_seconds(v) for v in (0.5, 10, 1000, 1e6)] == ["0.5 s", "10 s", "1000 s", "1M s"]
    assert [fmt_times(v) for v in (0.1, 1, 10)] == ["0.1×", "1×", "10×"]
    from subtune.report.format import figure

    for lo, hi, at_least in ((2.0, 3.0, 2), (20.0, 90.0, 2), (650, 11e6, 4)):  # within a decade, two, many
        fig = figure(4, 3)
        ax = fig.add_subplot()
        ax.plot([lo, hi], [0, 1])
        ax.set_xscale("log")
        log_ticks(ax.xaxis, fmt_seconds)
        _check_axes(fig, ax, log_labels_at_least=at_least)


def _labels_overlap(texts, renderer) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:] if ba.overlaps(bb)]


def _check_axes(fig, *axes, log_labels_at_least: int = 2) -> None:
    """Every log axis (the secondary ones too): labelled major ticks that do not overlap, no minor tick label;
    every legend clear of every axes."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in axes:
        for a in (ax, *ax.child_axes):
            for axis in (a.xaxis, a.yaxis):
                if axis.get_scale() not in ("log", "functionlog"):
                    continue
                lo, hi = sorted(axis.get_view_interval())
                major = [t for t, loc in zip(axis.get_majorticklabels(), axis.get_majorticklocs())
                         if t.get_visible() and t.get_text() and lo * (1 - 1e-9) <= loc <= hi * (1 + 1e-9)]
                minor = [t.get_text() for t in axis.get_minorticklabels() if t.get_visible() and t.get_text()]
                assert not minor, f"{a.get_title()!r}: minor tick labels {minor}"
                assert len(major) >= log_labels_at_least, (a.get_title(), [t.get_text() for t in major])
                assert not any(c in t.get_text() for t in major for c in ("$", "^", "e+", "e-")), \
                    [t.get_text() for t in major]  # plain numbers, not 10^n
                assert not _labels_overlap(major, renderer), (a.get_title(), _labels_overlap(major, renderer))
        for leg in fig.legends:
            assert not leg.get_window_extent(renderer).overlaps(ax.get_window_extent(renderer)), ax.get_title()


def _errorbar_styles(ax) -> dict[str, tuple[str, str]]:
    """Method -> (colour, marker) of the errorbar points drawn on ``ax`` (their container's label)."""
    out = {}
    for c in ax.containers:
        lab = c.get_label()
        if lab in LABELS:
            line = c.lines[0]
            out[LABELS[lab]] = (to_hex(line.get_color()), line.get_marker())
    return out


def _assert_own_styles(drawn: dict[str, tuple[str, str]], methods) -> None:
    assert set(drawn) == set(methods)
    assert all(drawn[m] == _want(m) for m in methods), {m: (drawn[m], _want(m)) for m in methods
                                                        if drawn[m] != _want(m)}
    assert len(set(drawn.values())) == len(drawn)


def _main_summary(tmp_path: Path, methods: list[str]):
    """The main table's frame for ``methods`` on two targets, two seeds; wall times from 0.4 s to 300 s and
    trainable parameters from 650 to 5M; selection costs for the methods that need one (SubTuning's greedy
    rounds: 30 s, 2 fine-tunes by FLOPs; Surgical's scores: 12 s, 1 fine-tune)."""
    files = []
    for i, m in enumerate(methods):
        for t in TARGETS:
            for s in range(2):
                params = int(650 * 1.9 ** i) + (1000 * s if m == "subtuning" else 0)  # SubTuning: seeds differ
                files.append(write_json(tmp_path / "runs" / t / m / f"seed{s}.json", run_json(
                    m, t, s, 0.6 + 0.02 * i + 0.01 * s, params, wall_time_s=0.4 * 1.6 ** i)))
    rounds = [{"round": 1, "base": [], "base_score": 0.5, "scores": {b: 0.5 for b in BLOCKS},
               "cost": {"wall_time_s": 30.0, "ft_equiv": 2.0}}]
    sel = [write_json(tmp_path / "select" / t / "seed0" / "selected.json",
                      {"selected": ["layer2.1"], "score": 0.9, "done": True, "stop_reason": "x", "rounds": rounds,
                       "config": {}, "blocks": BLOCKS}) for t in TARGETS]
    sur = [write_json(tmp_path / "select" / t / "seed0" / "surgical.json",
                      {"kind": "surgical", "target": t, "seed": 0, "blocks": BLOCKS,
                       "results": [{"key": b, "score": 0.8} for b in BLOCKS],
                       "cost": {"wall_time_s": 12.0, "ft_equiv": 1.0}}) for t in TARGETS]
    params_png = tmp_path / "params.png"
    summ = report.main_table(files, tmp_path / "main.csv", tmp_path / "main.md", selected_files=sel,
                             surgical_files=sur, out_cost_png=tmp_path / "cost.png", out_params_png=params_png)
    assert params_png.read_bytes()[:8] == PNG_MAGIC
    return summ[summ["target"].isin(TARGETS)].reset_index(drop=True)


@pytest.fixture
def main_summary(tmp_path):
    return _main_summary(tmp_path, METHODS)


def test_cost_plot_styles_both_units_and_ticks(main_summary, tmp_path):
    fig = cost_plot(main_summary, TARGETS, tmp_path / "cost.png")
    axes = [ax for ax in fig.axes if ax.get_title() in TARGETS]
    assert len(axes) == 2
    for ax in axes:
        assert ax.get_xscale() == "log"
        _assert_own_styles(_errorbar_styles(ax), METHODS)
        # the methods that need a selection: also the final run alone, hollow, in the method's colour and marker
        hollow = {(to_hex(ln.get_color()), ln.get_marker()) for ln in ax.get_lines()
                  if ln.get_markerfacecolor() in ("white", (1.0, 1.0, 1.0, 1.0))}
        assert hollow == {_want(m) for m in METHODS if method_needs(m)}
        # seconds below, plain fine-tunes above: FT's final run is 1×
        (top,) = ax.child_axes
        assert "fine-tunes" in top.get_xlabel() and ax.get_xlabel() == "wall time (s)"
        ft = main_summary[(main_summary["method"] == "ft") & (main_summary["target"] == ax.get_title())]
        assert top._functions[0](ft["wall_time_s_mean"].iloc[0]) == pytest.approx(1.0)
        assert any(t.get_text().endswith(" s") for t in ax.get_xticklabels())
        assert any(t.get_text().endswith("×") for t in top.xaxis.get_majorticklabels())
    _check_axes(fig, *axes)


def test_cost_plot_without_ft_counts_fine_tunes_by_flops(tmp_path):
    summ = _main_summary(tmp_path, [m for m in METHODS if m != "ft"])
    fig = cost_plot(summ, TARGETS, tmp_path / "cost.png")
    axes = [ax for ax in fig.axes if ax.get_title() in TARGETS]
    for ax in axes:
        (top,) = ax.child_axes
        assert top.get_xlabel() == "plain full fine-tunes (FLOPs estimate)"
        # the median over the selecting methods of selection seconds per FLOPs-estimated fine-tune: 30 s / 2
        assert top._functions[0](15.0) == pytest.approx(1.0)
    _check_axes(fig, *axes)


def test_params_plot_styles_and_ticks(main_summary, tmp_path):
    fig = params_plot(main_summary, TARGETS, tmp_path / "params.png")
    axes = [ax for ax in fig.axes if ax.get_title() in TARGETS]
    assert len(axes) == 2
    for ax in axes:
        assert ax.get_xscale() == "log" and ax.get_xlabel() == "trainable parameters"
        _assert_own_styles(_errorbar_styles(ax), METHODS)
        # one point per method at its mean parameter count; SubTuning's seeds differ: a bar over their range
        sub = [c for c in ax.containers if c.get_label() == method_label("subtuning")][0]
        assert sub.has_xerr and not [c for c in ax.containers if c.get_label() == "LP"][0].has_xerr
    _check_axes(fig, *axes)
    assert {t.get_text() for ax in axes for t in ax.get_xticklabels() if t.get_text()} >= {"1K", "10K", "100K", "1M"}


def test_grid_plot_styles_and_ticks(tmp_path):
    files = [write_json(tmp_path / f"{m}_{t}.json", tune_json(m, t, [(1e-4, 0.5, "grid"), (1e-3, 0.5 + i / 100, "grid"),
                                                                    (1e-2, 0.55, "extension")], 1))
             for i, m in enumerate(METHODS) for t in TARGETS]
    fig = grid_plot(grid_rows(files), tmp_path / "grid.png")
    axes = [ax for ax in fig.axes if ax.get_title() in TARGETS]
    assert len(axes) == 2
    for ax in axes:
        drawn = {LABELS[ln.get_label()]: (to_hex(ln.get_color()), ln.get_marker()) for ln in ax.get_lines()
                 if ln.get_label() in LABELS}
        _assert_own_styles(drawn, METHODS)
    _check_axes(fig, *axes)


def test_sweep_plot_styles_and_ticks(tmp_path):
    files = [write_json(tmp_path / "sweep" / m / f"{n}_{s}.json",
                        run_json(m, "fmnist", s, 0.5 + 0.01 * i + n / 10_000, 650, train_size=n,
                                 method_params={"blocks": ["layer2.1"]} if m == "subtuning" else {}))
             for i, m in enumerate(METHODS) for n in (100, 200, 400, 800) for s in range(2)]
    summ = sweep(files, tmp_path / "sweep.csv", tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    fig = sweep_plot(summ, ["fmnist"], tmp_path / "sweep2.png")
    (ax,) = fig.axes
    _assert_own_styles(_errorbar_styles(ax), METHODS)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "200", "400", "800"]
    _check_axes(fig, ax)


def test_profile_lp_line_in_lps_colour(tmp_path):
    from helpers.reports import scored
    from subtune.report.tables.profile import profile_plot

    head = {"kind": "greedy", "target": "fmnist", "seed": 0, "blocks": BLOCKS, "round": 1}
    f = write_json(tmp_path / "r1.json", {**head, "results": [scored([], 0.6, 650)] + [
        scored([b], 0.6 + i / 50, 1000 * (i + 1)) for i, b in enumerate(BLOCKS)]})
    df = report.profile([f], tmp_path / "p.csv", tmp_path / "p.png")
    fig = profile_plot(df, "fmnist", Path(tmp_path / "p2.png"))
    (ax,) = fig.axes
    (lp,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("LP")]
    assert to_hex(lp.get_color()) == _want("lp")[0]
    _check_axes(fig, ax)
