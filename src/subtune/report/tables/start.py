"""The HTML report's start page: the workflow's description, the main table and the claims' verdicts.

Snakemake renders the report's description (the Snakefile's ``report:``) with Jinja and docutils, and the page a
reader sees first shows nothing but that: so this table writes ``report/start.rst``, the description
(``report/workflow.rst``, still a Jinja template over the config) with the results quoted as reStructuredText
tables where its line :data:`MARK` stands (else at its end): the pivot of ``tables/main.md`` (method x target,
mean ± std), one line per claim of ``tables/claims.csv`` with its verdicts, and every claim's row with its interval
and verdict. The quoted part is wrapped in Jinja's ``raw`` so that no value is read as a template.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Sequence

import pandas as pd

from ... import SubtuneError
from ..format import PathLike, write_text
from ..registry import table

# the line of report/workflow.rst that the results replace (a Jinja comment: nothing where the description is
# shown alone); a description without it gets the results at its end
MARK = "{# subtune report start: the results quoted here #}"
CLAIM_COLUMNS = ["claim_id", "claim", "source", "target", "diff_mean", "ci_low", "ci_high", "p_value", "verdict"]
_MD_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_RST_SPECIAL = re.compile(r"([\\`*_|])")
_LIST_START = re.compile(r"^([-+*•#]|\(?\w{1,3}[.)])(\s|$)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--description", required=True, help="the report's description (report/workflow.rst)")
    p.add_argument("--main-md", required=True, help="the main table (tables/main.md): its first table is quoted")
    p.add_argument("--claims", required=True, help="the claims table (tables/claims.csv)")
    p.add_argument("--out-rst", required=True, help="the start page (the Snakefile's report: reads it)")


def run(a: argparse.Namespace) -> pd.DataFrame:
    return start_page(a.description, a.main_md, a.claims, a.out_rst)


@table("start", arguments=add_arguments, run=run)
def start_page(description: PathLike, main_md: PathLike, claims_csv: PathLike, out_rst: PathLike) -> pd.DataFrame:
    """Write the report's start page ``out_rst``: ``description`` as it is, then the first table of ``main_md``
    and the claims of ``claims_csv``. Every input is read and checked before anything is written; returns the
    main table as quoted (a header row and one row per method)."""
    text = _read(description)
    title, lead, main = markdown_table(_read(main_md), main_md)
    claims = _claims(claims_csv)
    n = len(claims)
    counts = ", ".join(f"{v} {k}" for k, v in claims["verdict"].value_counts().items()) or "no claims"
    quoted = [
        "**The results.** The main table (``tables/main.md``; *main.html* under *Tables*)"
        + (f": {_rst(lead)}" if lead else "."),
        "",
        *list_table(title or "Test accuracy (%)", main[0], main[1:]),
        "",
        f"**The papers' claims** (``tables/claims.md``; *claims.html* under *Tables*, with each row's test and "
        f"note and the decision rules): {n} row{'s' if n != 1 else ''}, {counts}"
        + (". Each claim's verdict:" if n else "."),
    ]
    if n:  # a table needs a row below its header
        quoted += ["", *(f"- {_rst(line)}" for line in verdict_lines(claims)), "",
                   *list_table("Claims: the mean paired difference A − B, its 95% interval and the verdict",
                               ["#", "claim", "target", "Δ (A − B)", "95% interval", "verdict"],
                               [_claim_row(r) for _, r in claims.iterrows()])]
    block = "{% raw %}\n\n" + "\n".join(quoted) + "\n\n{% endraw %}"
    write_text(text.replace(MARK, block, 1) if MARK in text else text.rstrip("\n") + "\n\n" + block + "\n", out_rst)
    return pd.DataFrame(main[1:], columns=main[0])


def _read(path: PathLike) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SubtuneError(f"{path}: cannot be read ({exc.strerror or exc})") from None


def markdown_table(md: str, where: PathLike) -> tuple[str, str, list[list[str]]]:
    """The first pipe table of a Markdown file: (the heading above it, the paragraph between the two, its rows:
    the header first, the alignment row dropped, ``\\|`` read as ``|``). No table: refused, naming the file."""
    lines = md.splitlines()
    for i in range(len(lines) - 1):
        if lines[i].lstrip().startswith("|") and re.fullmatch(r"\s*\|?(\s*:?-+:?\s*\|)+\s*:?-*:?\s*", lines[i + 1]):
            break
    else:
        raise SubtuneError(f"{where}: no Markdown table in it")
    end = i
    while end < len(lines) and lines[end].lstrip().startswith("|"):
        end += 1
    rows = [[c.strip().replace("\\|", "|") for c in _MD_CELL_SPLIT.split(line.strip().strip("|"))]
            for k, line in enumerate(lines[i:end]) if k != 1]
    if len(rows) < 2 or any(len(r) != len(rows[0]) for r in rows):
        raise SubtuneError(f"{where}: its first table has no rows, or rows with different numbers of cells")
    heads = [k for k in range(i) if lines[k].startswith("#")]
    title = lines[heads[-1]].lstrip("#").strip() if heads else ""
    lead = " ".join(s.strip() for s in lines[(heads[-1] + 1 if heads else 0):i] if s.strip())
    return title, lead, rows


def _claims(path: PathLike) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={"claim_id": str, "target": str}, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SubtuneError(f"{path}: not a readable claims table ({exc})") from None
    missing = [c for c in CLAIM_COLUMNS if c not in df.columns]
    if missing:
        raise SubtuneError(f"{path}: missing column(s) {', '.join(missing)} (not a claims table?)")
    return df.fillna({c: "" for c in ("claim_id", "claim", "source", "target", "verdict")})


def verdict_lines(claims: pd.DataFrame) -> list[str]:
    """One line per claim: its number, text and source, then its verdicts with the targets each holds for
    (``Claim 2, SubTuning ≥ LP (source): holds on digits; inconclusive on fmnist``)."""
    out = []
    for cid, rows in claims.groupby("claim_id", sort=False):
        by_verdict: dict[str, list[str]] = {}
        for _, r in rows.iterrows():
            by_verdict.setdefault(r["verdict"], []).append(r["target"])
        parts = [v + (f" on {', '.join(ts)}" if (ts := [t for t in targets if t and t != "–"]) else "")
                 for v, targets in by_verdict.items()]
        first = rows.iloc[0]
        out.append(f"Claim {cid}, {first['claim']} ({first['source']}): {'; '.join(parts)}.")
    return out


def _number(x: float, fmt: str) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def _claim_row(r: pd.Series) -> list[str]:
    lo, hi = _number(r["ci_low"], "+.2f"), _number(r["ci_high"], "+.2f")
    return [r["claim_id"], r["claim"], r["target"] or "–", _number(r["diff_mean"], "+.2f"),
            "–" if "–" in (lo, hi) else f"[{lo}, {hi}]", r["verdict"]]


def _rst(text: str) -> str:
    """``text`` as reStructuredText that shows it as it is: inline markup escaped, a list-like start escaped,
    and no ``{%`` (which would end Jinja's ``raw``)."""
    text = _RST_SPECIAL.sub(r"\\\1", str(text)).replace("{%", "{\\%")
    return "\\" + text if _LIST_START.match(text) else text


def list_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """An rst ``list-table`` (docutils renders it as an HTML table): the header row, then ``rows``."""
    out = [f".. list-table:: {_rst(title)}", "   :header-rows: 1", ""]
    for row in [header, *rows]:
        out += [f"   {'*' if k == 0 else ' '} - {_rst(c) if str(c) else '–'}" for k, c in enumerate(row)]
    return out
