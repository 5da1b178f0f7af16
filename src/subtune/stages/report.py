"""``report TABLE``: results aggregated into tables (CSV, Markdown) and plots (:mod:`subtune.report`).

Each table declares its own options next to its function (``@table(name, arguments=..., run=...)``,
:mod:`subtune.report.registry`), in its module of :mod:`subtune.report.tables`, whose name is the table's name.
This stage lists the tables by those modules' names and takes the table's options unparsed: building the CLI
(every call of ``python -m subtune``, and the warm-start client) must not import the table modules, which import
pandas and matplotlib. When the stage runs, it imports the table and parses the options with the table's parser;
every table also takes ``--out-html PATH``, its Markdown (or CSV) as one HTML page for Snakemake's HTML report.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import sys
import tokenize

from .._lazy import submodules
from . import Stage

TABLES_PACKAGE = "subtune.report.tables"


def _table_paths() -> list[str]:
    """The directories of the tables package: its ``__path__`` once imported (it may have been extended), else
    found from ``subtune.report``'s spec (finding it imports ``subtune`` alone; ``subtune.report`` imports pandas)."""
    pkg = sys.modules.get(TABLES_PACKAGE)
    if pkg is not None:
        return list(pkg.__path__)
    spec = importlib.util.find_spec(TABLES_PACKAGE.rpartition(".")[0])
    return [os.path.join(p, "tables") for p in (spec.submodule_search_locations or [])] if spec else []


def _summary(path: str) -> str:
    """The first line of a module's docstring, read from its file (tokenized up to the docstring, not imported,
    so listing the tables costs a few file reads rather than pandas' import); empty when there is none."""
    try:
        with open(path, "rb") as f:
            for tok in tokenize.tokenize(f.readline):
                if tok.type in (tokenize.ENCODING, tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
                    continue
                doc = ast.literal_eval(tok.string).strip() if tok.type == tokenize.STRING else ""
                return doc.splitlines()[0].replace("``", "") if isinstance(doc, str) and doc else ""
    except (OSError, SyntaxError, ValueError, tokenize.TokenError):
        pass
    return ""


def tables() -> dict[str, str]:
    """Every table the stage runs, by name (its module's name), with its one-line help, in name order.

    The help is the first line of the module's docstring (what :class:`subtune.report.registry.TableCLI` shows
    as the table's description too): one source for both, readable without importing the module."""
    found: dict[str, str] = {}
    for m in submodules(_table_paths(), sort=True):
        where = m.module_finder.path  # the directory holding it (the first one, as on import)
        found[m.name] = _summary(os.path.join(where, m.name, "__init__.py") if m.ispkg
                                 else os.path.join(where, f"{m.name}.py"))  # fmt: skip
    return found


def add_arguments(s: argparse.ArgumentParser) -> None:
    found = tables()
    width = max(map(len, found), default=0)
    s.formatter_class = argparse.RawDescriptionHelpFormatter  # the table list below, line by line
    s.epilog = "tables:\n" + "".join(f"  {n:<{width}}  {h}\n" for n, h in found.items()) + (
        "\n'python -m subtune report TABLE --help' shows the table's own options.")
    s.add_argument("what", metavar="TABLE", choices=list(found), help="the table to write (listed below)")
    s.add_argument("options", nargs=argparse.REMAINDER, metavar="...", help="the table's options")


def run(a: argparse.Namespace) -> None:
    importlib.import_module(f"{TABLES_PACKAGE}.{a.what}")  # registers the table (and imports subtune.report)
    from ..report.registry import run_table

    args = run_table(a.what, a.options)
    written = [v for k in ("out_csv", "out_png") if (v := getattr(args, k, None))]
    written = written or [v for k, v in vars(args).items() if k.startswith("out_") and k != "out_html" and v]
    written += [args.out_html] if args.out_html else []
    print(f"report {a.what}: " + ", ".join(map(str, written)))


STAGE = Stage("report", "aggregate results into tables (csv, markdown, html) and plots", add_arguments, run, order=140)
