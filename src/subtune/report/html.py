"""A table as one standalone HTML page, for Snakemake's HTML report.

The report app shows an image or an HTML page inside the report and offers every other file (Markdown, CSV) only
as a download, so each table's Markdown (or, for a table without one, its CSV) is also written as an HTML page:
python-markdown's ``tables`` extension for Markdown (its column alignment kept), pandas' ``to_html`` for a CSV
(its text as written, number columns right-aligned). A small inline stylesheet keeps the page readable without
any file beside it: the report embeds the page as a data URI.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from .. import SubtuneError
from .format import PathLike, write_text

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; margin: 1.2em; }
h1 { font-size: 1.35em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.8em 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #c8ccd1; padding: 0.3em 0.6em; vertical-align: top; }
th { background: #eef1f4; text-align: left; }
tbody tr:nth-child(even) { background: #f6f8fa; }
code { font: 0.92em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: #f0f2f4;
       padding: 0 0.2em; }
"""


def page(body: str, title: str, style: str = "") -> str:
    """A whole HTML document around ``body`` (already HTML), titled ``title``, with the stylesheet inline."""
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}'
            f"</title>\n<style>{STYLE}{style}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def markdown_page(text: str, title: str) -> str:
    """A Markdown table file as an HTML page: its headings, paragraphs and tables (alignment as the ``---:``
    markers give it: the tables right-align their number columns that way)."""
    import markdown

    return page(markdown.markdown(text, extensions=["tables"], output_format="html"), title)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_page(df: pd.DataFrame, title: str) -> str:
    """A CSV (read as text: the page shows each value as the file writes it) as an HTML page under a heading;
    a column whose non-empty values are all numbers is right-aligned."""
    numeric = [i for i, c in enumerate(df.columns, 1)
               if (vals := [v for v in df[c] if v != ""]) and all(map(_is_number, vals))]
    style = "".join(f"th:nth-child({i}), td:nth-child({i}) {{ text-align: right; }}\n" for i in numeric)
    body = df.to_html(index=False, border=0, escape=True, na_rep="")
    return page(f"<h1>{html.escape(title)}</h1>\n{body}", title, style)


def write_html(source: PathLike, out: PathLike, title: str | None = None) -> None:
    """Render the table file ``source`` (``.md`` or ``.csv``) as the HTML page ``out``, titled ``title``
    (default: the file's name without its suffix); any other kind of file is refused, naming it."""
    src = Path(source)
    title = title or src.stem
    if src.suffix == ".md":
        text = markdown_page(src.read_text(encoding="utf-8"), title)
    elif src.suffix == ".csv":
        text = csv_page(pd.read_csv(src, dtype=str, keep_default_na=False), title)
    else:
        raise SubtuneError(f"{src}: only a Markdown (.md) or CSV (.csv) table can be rendered as HTML")
    write_text(text, out)
