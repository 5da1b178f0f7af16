"""The tables' registry: ``@table("name")`` on a table function puts it in :data:`TABLES` under the name the
report stage knows it by (``subtune report NAME``), so that a new table is one module in
:mod:`subtune.report.tables`, picked up without being listed anywhere else (as ``@register`` does for methods).

A table that the report stage runs also declares its command line there: ``arguments`` adds its options to a
parser, ``run`` calls the table function with the parsed options (:class:`TableCLI`, kept in :data:`CLIS`).
The stage finds a table's module by its name (module name == table name) and builds the table's own parser
(:func:`table_parser`) only when that table runs, so that no table module is imported to build the CLI. Every
table's parser also takes ``--out-html``: the table's Markdown (or CSV) rendered as one HTML page
(:mod:`subtune.report.html`), which Snakemake's HTML report shows inside the report instead of as a download.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from .. import SubtuneError

F = TypeVar("F", bound=Callable)

#: table name -> the function that reads its inputs and writes its outputs (registration order)
TABLES: dict[str, Callable] = {}


@dataclass(frozen=True)
class TableCLI:
    """A table's command line (``subtune report NAME``): ``arguments`` adds its options to a parser, ``run`` calls
    the table with the parsed options; ``help``: its one-line summary, the first line of its module's docstring
    (the report stage reads that line from the file to list the tables without importing them)."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Any]


#: table name -> its command line, for the tables the report stage runs
CLIS: dict[str, TableCLI] = {}


def table(name: str, *, arguments: Callable[[argparse.ArgumentParser], None] | None = None,
          run: Callable[[argparse.Namespace], Any] | None = None) -> Callable[[F], F]:
    """Register the decorated function as table ``name``; a name taken by another function is refused (the
    same function registered again, as when its module is reloaded, replaces itself).

    ``arguments`` makes it a table of the report stage: it adds the table's options to its parser. ``run`` calls
    the function with the parsed options; without one, the options are passed as keyword arguments under their
    ``dest`` (name an option's ``dest`` after the parameter it fills, and no adapter is needed).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise SubtuneError(f"report table name {name!r} is not an identifier")

    def register(fn: F) -> F:
        old = TABLES.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise SubtuneError(f"report table {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        TABLES[name] = fn
        if arguments is None:
            CLIS.pop(name, None)
        else:
            call = run if run is not None else (lambda a: fn(**vars(a)))
            CLIS[name] = TableCLI(_module_summary(fn.__module__), arguments, call)
        return fn

    return register


def get_table(name: str) -> Callable:
    """The table registered as ``name``; an unknown name is refused, naming the known ones."""
    try:
        return TABLES[name]
    except KeyError:
        raise SubtuneError(f"unknown report table {name!r} (known: {', '.join(sorted(TABLES))})") from None


def get_cli(name: str) -> TableCLI:
    """The command line of table ``name``; a table without one (or no table) is refused, naming those with one."""
    try:
        return CLIS[name]
    except KeyError:
        raise SubtuneError(f"report table {name!r} has no command line (tables with one: "
                           f"{', '.join(sorted(CLIS))})") from None  # fmt: skip


def table_parser(name: str) -> argparse.ArgumentParser:
    """The parser of ``subtune report NAME``: the table's own options, its summary as the description, and the
    options every table has (``--out-html``)."""
    cli = get_cli(name)
    parser = argparse.ArgumentParser(prog=f"subtune report {name}", description=cli.help)
    cli.arguments(parser)
    every = parser.add_argument_group("every table")
    every.add_argument("--out-html", metavar="PATH",
                       help="also write the table's Markdown (or, without one, its CSV) as one HTML page here "
                            "(Snakemake's report shows HTML pages inside the report, other tables as downloads)")
    return parser


def html_source(name: str, args: argparse.Namespace) -> str:
    """The file ``--out-html`` renders: the table's ``--out-md``, else its ``--out-csv``; a table that writes
    neither is refused (before it runs)."""
    source = getattr(args, "out_md", None) or getattr(args, "out_csv", None)
    if not source:
        raise SubtuneError(f"report table {name!r} writes no Markdown or CSV table to render as HTML "
                           f"(--out-html {args.out_html})")
    return str(source)


def run_table(name: str, argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv`` with the table's parser (argparse's own errors and ``--help``: exit 2 and 0) and run the
    table, then render its page (``--out-html``); returns the parsed options (the caller reports the outputs
    written)."""
    args = table_parser(name).parse_args(list(argv))
    own = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "out_html"})  # the table's options
    source = html_source(name, args) if args.out_html else None
    get_cli(name).run(own)
    if source:
        from .html import write_html

        write_html(source, args.out_html)
    return args


def _module_summary(module: str) -> str:
    """The first line of ``module``'s docstring, without reST's double backquotes (the table's help line)."""
    doc = (getattr(sys.modules.get(module), "__doc__", None) or "").strip()
    return doc.splitlines()[0].replace("``", "") if doc else ""


# ---------------------------------------------------------------- options several tables share
def add_references(parser: argparse.ArgumentParser) -> None:
    """``--references`` and ``--backbone``: the published numbers a table sets beside its own."""
    parser.add_argument("--references", nargs="*", default=[], help="published numbers (references/*.csv)")
    parser.add_argument("--backbone", help="the backbone's timm name, to match published numbers")


def add_outputs(parser: argparse.ArgumentParser, *kinds: str) -> None:
    """A required ``--out-KIND`` for each of ``kinds`` (``csv``, ``md``, ``png``): the files a table writes."""
    for kind in kinds:
        parser.add_argument(f"--out-{kind}", required=True)
