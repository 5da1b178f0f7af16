"""The report's table registry: every table is registered under the name the report stage calls it by, documented
and runnable on a minimal input, with its command line; a new table module is picked up, and runs as
``subtune report NAME``, without being listed anywhere."""

from __future__ import annotations

import ast
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from subtune import SubtuneError, report
from subtune.cli import main
from subtune.report import registry, tables
from subtune.report.tables import start
from subtune.stages import report as report_stage

from helpers.reports import greedy_state, run_json, scored, tune_json, write_json

SRC = Path(report.__file__).resolve().parent
# `subtune report NAME`: the tables the workflow's report rules ask for
STAGE_TABLES = {"main", "rounds", "profile", "pairs", "sweep", "epsilon", "grid", "selection", "claims", "multilora",
                "start"}
BLOCKS = ["layer1.0", "layer2.0"]


def _runs(tmp_path: Path, **extra) -> list[Path]:
    return [write_json(tmp_path / "runs" / f"{m}{s}.json",
                       run_json(m, "fmnist", s, 0.8 + s / 100 + i / 10, 100, **extra))
            for i, m in enumerate(("ft", "subtuning")) for s in range(3)]


def _scores(tmp_path: Path, kind: str, sets: list[list[str]]) -> list[Path]:
    head = {"kind": kind, "target": "fmnist", "seed": 0, "blocks": BLOCKS, "round": 1}
    return [write_json(tmp_path / "select" / "fmnist" / "seed0" / f"{kind}.json",
                       {**head, "results": [scored(b, 0.5 + len(b) / 10, 10) for b in sets]})]


def _state(tmp_path: Path) -> Path:
    walk = greedy_state({"layer1.0": 0.05})
    for r in walk["rounds"]:
        r["cost"] = {"wall_time_s": 1.0, "ft_equiv": 0.1}
    return write_json(tmp_path / "select" / "fmnist" / "seed0" / "selected.json", walk)


def _start_inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The start page's inputs: a description with the results' mark, and the main and claims tables of real runs."""
    desc = tmp_path / "workflow.rst"
    desc.write_text(f"subtune: {{{{ snakemake.config['experiment'] }}}}\n{'=' * 20}\n\nIntro.\n\n{start.MARK}\n\n"
                    "**Configuration.** The rest.\n")
    runs = _runs(tmp_path)
    report.main_table(runs, tmp_path / "main.csv", tmp_path / "main.md")
    report.claims_table(runs, tmp_path / "claims.csv", tmp_path / "claims.md")
    return desc, tmp_path / "main.md", tmp_path / "claims.csv"


def _multilora(tmp_path: Path) -> list[Path]:
    d = {"seed": 0}
    for kind, acc in (("multilora", 0.8), ("separate_lora", 0.82)):
        d[kind] = {"per_task": {t: {"val_acc": acc, "test_acc": acc} for t in "ab"}, "params_trained": 300,
                   "params_stored": 400, "rank": 4}
    return [write_json(tmp_path / "ml.json", d)]


# name -> how to call it on a minimal input (in tmp_path, outputs named o.*)
MINIMAL = {
    "main": lambda p: report.main_table(_runs(p), p / "o.csv", p / "o.md"),
    "rounds": lambda p: report.rounds([_state(p)], p / "o.csv"),
    "profile": lambda p: report.profile(_scores(p, "profile", [[], ["layer1.0"], ["layer2.0"]]), p / "o.csv",
                                        p / "o.png"),
    "pairs": lambda p: report.pairs(_scores(p, "pairs", [["layer1.0"], ["layer1.0", "layer2.0"]]), p / "o.csv",
                                    p / "o.png"),
    "sweep": lambda p: report.sweep(_runs(p), p / "o.csv", p / "o.png"),
    "epsilon": lambda p: report.epsilon(
        [_state(p)], [write_json(p / "eps.json", run_json("subtuning", "fmnist", 0, 0.9, 10,
                                                          method_params={"blocks": ["layer1.0"]}))],
        [0.01], 0.01, p / "o.csv", p / "o.md"),
    "grid": lambda p: report.grid_table(
        [write_json(p / "tune.json", tune_json("lp", "fmnist", [(0.01, 0.5, "grid"), (0.1, 0.6, "grid")], 1))],
        p / "o.csv", p / "o.md", p / "o.png"),
    "selection": lambda p: report.selection_table([_state(p)], p / "o.csv", p / "o.md"),
    "claims": lambda p: report.claims_table(_runs(p), p / "o.csv", p / "o.md"),
    "multilora": lambda p: report.multilora(_multilora(p), p / "o.csv", p / "o.md"),
    "start": lambda p: start.start_page(*_start_inputs(p), p / "o.rst"),
}
# the file each table's minimal run must write (o.csv unless named here)
MINIMAL_OUTPUT = {"start": "o.rst"}


# ---------------------------------------------------------------- contract
def test_every_report_stage_table_is_registered_under_its_name():
    assert STAGE_TABLES <= set(report.TABLES)
    assert report.get_table("main") is report.main_table and report.get_table("grid") is report.grid_table
    with pytest.raises(SubtuneError, match="unknown report table 'nope'"):
        report.get_table("nope")


def test_every_table_module_registers_a_table():
    modules = {fn.__module__.rsplit(".", 1)[-1] for fn in report.TABLES.values()}
    assert set(tables.discover()) <= modules


def test_the_report_stage_lists_every_table_with_its_command_line_and_help():
    """The stage reads the names and help lines from the files; the registry's, from the imported modules."""
    listed = report_stage.tables()
    assert STAGE_TABLES <= set(listed) == set(registry.CLIS)  # every table module declares its command line
    for name, help_line in listed.items():
        assert help_line and help_line == registry.get_cli(name).help, name
        parser = registry.table_parser(name)
        assert parser.prog == f"subtune report {name}" and help_line in " ".join(parser.format_help().split())
    with pytest.raises(SubtuneError, match="report table 'nope' has no command line"):
        registry.get_cli("nope")


@pytest.mark.parametrize("name", sorted(report.TABLES))
def test_every_table_is_documented_and_runs_on_a_minimal_input(name, tmp_path):
    fn = report.get_table(name)
    assert fn.__module__.startswith("subtune.report.tables.") and (fn.__doc__ or "").strip(), name
    if name not in MINIMAL:  # a table this test does not know: its own tests run it
        return
    out = MINIMAL[name](tmp_path)
    assert isinstance(out, pd.DataFrame) and len(out)
    written = {p.name: p.stat().st_size for p in tmp_path.glob("o.*")}
    assert MINIMAL_OUTPUT.get(name, "o.csv") in written and all(written.values()), written


def test_the_report_package_stays_small_and_below_the_cli():
    """No module over 600 lines, no function over 120, and nothing in the report imports the CLI."""
    for f in sorted(SRC.rglob("*.py")):
        text = f.read_text()
        assert len(text.splitlines()) <= 600, f
        tree = ast.parse(text)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 120, f"{f}: {node.name}"
            if isinstance(node, ast.ImportFrom):
                assert "cli" not in (node.module or "").split("."), f"{f} imports {node.module}"


# ---------------------------------------------------------------- a new table is one file
PROBE = '''
"""A throwaway table of the registry test."""

from subtune.report.format import write_text
from subtune.report.registry import table

import pandas as pd


def add_arguments(p):
    p.add_argument("--title", default="probe")
    p.add_argument("--out-md", dest="out_md", required=True)


@table("zz_probe", arguments=add_arguments)  # no run adapter: the options are its keyword arguments
def zz_probe(out_md, title="probe"):
    """One line of Markdown."""
    write_text(f"# {title}\\n", out_md)
    return pd.DataFrame({"x": [1]})
'''


@pytest.fixture
def probe_table(tmp_path, monkeypatch):
    """The module of table ``zz_probe`` in a directory of the tables package, nothing else changed."""
    d = tmp_path / "tables"
    d.mkdir()
    (d / "zz_probe.py").write_text(textwrap.dedent(PROBE))
    monkeypatch.setattr(tables, "__path__", [*tables.__path__, str(d)])
    try:
        yield "zz_probe"
    finally:
        report.TABLES.pop("zz_probe", None)
        registry.CLIS.pop("zz_probe", None)
        sys.modules.pop("subtune.report.tables.zz_probe", None)


def test_a_new_table_module_runs_as_a_report_stage_table(probe_table, tmp_path, capsys):
    out = tmp_path / "o" / "p.md"
    assert main(["report", probe_table, "--out-md", str(out), "--title", "hello"]) == 0
    assert out.read_text() == "# hello\n" and f"report zz_probe: {out}\n" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # the stage lists it, with its docstring's first line
        main(["report", "--help"])
    help_text = capsys.readouterr().out
    assert exc.value.code == 0 and "zz_probe   A throwaway table of the registry test." in help_text
    with pytest.raises(SystemExit) as exc:  # its own options
        main(["report", probe_table, "--help"])
    assert exc.value.code == 0 and "--title TITLE" in capsys.readouterr().out
    for argv in ([probe_table], [probe_table, "--out-md", str(out), "--nope"], ["zz_missing"]):
        with pytest.raises(SystemExit) as exc:  # argparse's own errors
            main(["report", *argv])
        assert exc.value.code == 2, argv
    err = capsys.readouterr().err
    assert "subtune report zz_probe: error: the following arguments are required: --out-md" in err
    assert "unrecognized arguments: --nope" in err and "invalid choice: 'zz_missing'" in err


def test_a_new_table_module_is_picked_up_without_being_listed(probe_table, tmp_path):
    assert "zz_probe" in tables.discover()
    fn = report.get_table("zz_probe")
    assert fn.__module__ == "subtune.report.tables.zz_probe" and fn.__doc__
    assert fn(tmp_path / "p.md")["x"].tolist() == [1] and (tmp_path / "p.md").read_text() == "# probe\n"
    tables.discover()  # a second discovery imports nothing twice and registers nothing twice
    assert list(report.TABLES).count("zz_probe") == 1


def test_the_registry_refuses_a_second_table_of_the_same_name():
    def other(out_csv):
        """Another table."""

    with pytest.raises(SubtuneError, match="'main' is already registered by subtune.report.tables.main"):
        registry.table("main")(other)
    with pytest.raises(SubtuneError, match="not an identifier"):
        registry.table("two words")
    try:
        assert registry.table("zz_api")(other) is other and report.get_table("zz_api") is other
        assert registry.table("zz_api")(other) is other  # the same function again: no error
    finally:
        report.TABLES.pop("zz_api", None)


# ---------------------------------------------------------------- the HTML report's pages
def test_every_table_renders_its_markdown_or_csv_as_an_html_page(tmp_path, capsys):
    """``--out-html``: the table's Markdown (else its CSV) as a standalone page, numbers right-aligned."""
    state = _state(tmp_path)
    html = tmp_path / "rounds.html"
    assert main(["report", "rounds", "--states", str(state), "--out-csv", str(tmp_path / "rounds.csv"),
                 "--out-html", str(html)]) == 0
    assert f"rounds.csv, {html}" in capsys.readouterr().out
    page = html.read_text(encoding="utf-8")
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    assert page.startswith("<!DOCTYPE html>") and "<title>rounds</title>" in page and "<style>" in page
    assert page.count("<tr") == len(rounds) + 1 and "<th>chosen_score</th>" in page  # the header and every row
    col = list(rounds.columns).index("chosen_score") + 1  # a number column is right-aligned, a text column not
    assert f"td:nth-child({col}) {{ text-align: right; }}" in page
    assert f"td:nth-child({list(rounds.columns).index('target') + 1}) " not in page
    runs = _runs(tmp_path)
    md_html = tmp_path / "claims.html"
    main(["report", "claims", "--runs", *map(str, runs), "--out-csv", str(tmp_path / "c.csv"), "--out-md",
          str(tmp_path / "c.md"), "--out-html", str(md_html)])
    page = md_html.read_text(encoding="utf-8")  # the Markdown: its heading, its tables, their alignment
    assert "<h1>Claims of the papers against this experiment's results</h1>" in page and "<table>" in page
    verdict = pd.read_csv(tmp_path / "c.csv")["verdict"].iloc[0]
    assert '<td style="text-align: right;">+' in page and f"<strong>{verdict}</strong>" in page


def test_out_html_is_refused_for_a_table_without_markdown_or_csv_before_it_runs(tmp_path):
    desc, main_md, claims = _start_inputs(tmp_path)
    with pytest.raises(SubtuneError, match="report table 'start' writes no Markdown or CSV table to render as HTML"):
        registry.run_table("start", ["--description", str(desc), "--main-md", str(main_md), "--claims", str(claims),
                                     "--out-rst", str(tmp_path / "s.rst"), "--out-html", str(tmp_path / "s.html")])
    assert not (tmp_path / "s.rst").exists()
    from subtune.report.html import write_html

    with pytest.raises(SubtuneError, match="only a Markdown"):
        write_html(desc, tmp_path / "w.html")


def _rendered(rst: str, experiment: str = "exp") -> str:
    """The start page as Snakemake's report renders its description: Jinja over the config, then docutils (a
    docutils warning, such as a malformed table, fails)."""
    from docutils.core import publish_parts
    from jinja2 import Environment

    class Snakemake:
        config = {"experiment": experiment}

    text = Environment(trim_blocks=True, lstrip_blocks=True).from_string(rst).render(snakemake=Snakemake)
    return publish_parts(text, writer="html", settings_overrides={"halt_level": 2})["html_body"]  # warnings raise


def test_the_start_page_quotes_the_main_table_and_the_claims(tmp_path):
    desc, main_md, claims_csv = _start_inputs(tmp_path)
    pivot = start.start_page(desc, main_md, claims_csv, tmp_path / "start.rst")
    rst = (tmp_path / "start.rst").read_text(encoding="utf-8")
    page = _rendered(rst)
    main_rows = pd.read_csv(tmp_path / "main.csv")
    ft = main_rows[main_rows["method"] == "ft"].iloc[0]
    cell = f"{ft['test_acc_mean']:.2f} ± {ft['test_acc_std']:.2f}"
    assert list(pivot.columns) == ["method", "fmnist"] and cell in pivot.set_index("method").loc["FT", "fmnist"]
    assert "<h1 class=\"title\">subtune: exp</h1>" in page  # the description's Jinja still renders
    tables = page.split("<table")[1:]
    assert len(tables) == 2 and "Test accuracy (%)" in tables[0] and "<td>FT</td>" in tables[0]
    assert cell in tables[0]
    claims = pd.read_csv(claims_csv, dtype={"claim_id": str})
    row = claims[claims["claim_id"] == "1"].iloc[0]  # SubTuning ≥ FT on fmnist: a paired verdict with its interval
    assert row["verdict"] == "holds" and f"Claim 1, {row['claim']} ({row['source']}): holds on fmnist." in page
    assert f"[{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" in tables[1] and row["verdict"] in tables[1]
    assert page.index("Intro.") < page.index("Test accuracy (%)") < page.index("Configuration.")  # at the mark
    assert "{%" not in page and "System Message" not in page


def test_the_start_page_shows_values_as_they_are_and_refuses_bad_inputs(tmp_path):
    desc, main_md, claims_csv = _start_inputs(tmp_path)
    desc.write_text("Title\n=====\n\nNo mark: the results go at the end.\n")
    main_md.write_text("# Test accuracy (%)\n\n| method | a\\|b |\n| :--- | ---: |\n| *x*_ | {% endraw %} |\n"
                       "| (lp) | 1. x |\n")
    start.start_page(desc, main_md, claims_csv, tmp_path / "start.rst")
    page = _rendered((tmp_path / "start.rst").read_text(encoding="utf-8"))
    assert page.index("No mark") < page.index("Test accuracy (%)")
    for text in ("<th class=\"head\">a|b</th>", "<td>*x*_</td>", "<td>{% endraw %}</td>", "<td>(lp)</td>",
                 "<td>1. x</td>"):
        assert text in page, text
    main_md.write_text("# Test accuracy (%)\n\nno table\n")
    with pytest.raises(SubtuneError, match=f"{main_md}: no Markdown table in it"):
        start.start_page(desc, main_md, claims_csv, tmp_path / "s2.rst")
    _start_inputs(tmp_path)
    pd.read_csv(claims_csv).drop(columns=["verdict"]).to_csv(claims_csv, index=False)
    with pytest.raises(SubtuneError, match=r"claims.csv: missing column\(s\) verdict"):
        start.start_page(desc, main_md, claims_csv, tmp_path / "s2.rst")
    with pytest.raises(SubtuneError, match="nope.rst: cannot be read"):
        start.start_page(tmp_path / "nope.rst", main_md, claims_csv, tmp_path / "s2.rst")
    assert not (tmp_path / "s2.rst").exists()
