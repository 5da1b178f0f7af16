"""``status``: which rows of an experiment's main table were made by other code, or another config, than now.

Snakemake reruns a job when its params, inputs or shell command change, but not when library code in
``src/subtune`` does; every training job records the code that ran in its metrics file
(:mod:`subtune.provenance`) and the report copies it into ``tables/main.csv`` beside the config's hash. This
stage compares both with the installed code and the current config, prints the rows that differ and exits 1
when there is one (0 when every row matches), so that a script or ``make status`` can tell.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import SubtuneError
from . import Stage

UNKNOWN = "unknown"


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--configfile", default="config.yaml",
                   help="the experiment's config, as given to snakemake --configfile (default: config.yaml)")
    s.add_argument("--results", help="the experiment's results directory (default: results/<experiment>)")
    s.add_argument("--schema", default="schemas/config.schema.yaml", help="the config schema")


def _current_config_hash(configfile: str, schema: str) -> tuple[str, dict]:
    """The validated config's hash (as the workflow computes it for the report) and the config."""
    import yaml

    from ..config import validate
    from ..provenance import config_hash

    path = Path(configfile)
    if not path.is_file():
        raise SubtuneError(f"--configfile: missing file {path}")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise SubtuneError(f"{path}: not a YAML mapping")
    try:
        validate(config, schema)
    except SubtuneError as exc:
        raise SubtuneError(f"{path}: config error: {exc}") from None
    return config_hash(config), config


def _read_table(path: Path) -> list[dict[str, str]]:
    import csv

    if not path.is_file():
        raise SubtuneError(f"missing results table: {path} (run the workflow, or give --results)")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"method", "target"} <= set(rows[0]):
        raise SubtuneError(f"{path}: not a main table (no method and target columns)")
    return rows


def _run_files(results: Path, row: dict[str, str]) -> list[Path]:
    """The final runs' metrics files a row aggregates (``runs/<target>/<method>/seed<S>.json``), those present."""
    seeds = [s for s in (row.get("seeds") or "").split(",") if s.strip()]
    files = [results / "runs" / row["target"] / row["method"] / f"seed{s.strip()}.json" for s in seeds]
    return [f for f in files if f.is_file()]


def _code_made_by(results: Path, row: dict[str, str], current: dict[str, str]) -> tuple[str, bool]:
    """(the code versions that made the row, whether any differs from the installed code).

    From the row's metrics files where present: a run differs when its sources' SHA-256 differs from the
    installed package's (so two runs of one dirty work tree are told apart), or, recorded without one, when its
    code version does; a run that recorded no provenance differs. Else from the table's ``code_version``.
    """
    from ..provenance import read

    recorded = [read(f) for f in _run_files(results, row)]
    if recorded:
        versions = [str(p.get("code_version") or UNKNOWN) for p in recorded]
        other = any(p.get("sources_sha256") != current["sources_sha256"] if p.get("sources_sha256")
                    else p.get("code_version") != current["code_version"] for p in recorded)
    else:
        versions = [v.strip() for v in (row.get("code_version") or "").split("|") if v.strip()] or [UNKNOWN]
        other = any(v != current["code_version"] for v in versions)
    return " | ".join(dict.fromkeys(versions)), other


def _table(header: list[str], rows: list[list[str]]) -> str:
    """Plain columns, each as wide as its widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def run(a: argparse.Namespace) -> int:
    """Print the stale rows of ``<results>/tables/main.csv``; 1 when there is one, 0 when all match."""
    from ..provenance import code

    want_config, config = _current_config_hash(a.configfile, a.schema)
    results = Path(a.results or f"results/{config['experiment']}")
    table = results / "tables" / "main.csv"
    rows = _read_table(table)
    current = code()
    stale = []
    for row in rows:
        made_by, other_code = _code_made_by(results, row, current)
        made_with = (row.get("config_hash") or "").strip() or UNKNOWN
        other_config = made_with != want_config
        if other_code or other_config:
            why = " and ".join(w for w, x in (("code", other_code), ("config", other_config)) if x)
            stale.append([row["method"], row["target"], row.get("seeds") or "", made_by, made_with, why])
    now = f"installed code {current['code_version']}, config {a.configfile} ({want_config})"
    if not stale:
        print(f"{table}: all {len(rows)} rows were made by the {now}")
        return 0
    print(f"{table}: {len(stale)} of {len(rows)} rows were made by other code or another config than the {now}:")
    print()
    print(_table(["method", "target", "seeds", "made by code", "with config", "differs"], stale))
    print()
    if any("code" in r[-1] for r in stale):
        print("Snakemake does not rerun a job when library code changes: rerun the rules the change affects, e.g. "
              "snakemake --cores all --forcerun train (the final runs, then the tables after them); docs/workflow.md.")
    if any("config" in r[-1] for r in stale):
        print("A config change reruns the jobs it affects by itself: run the workflow with this config.")
    return 1


STAGE = Stage("status", "list the results made by other code or another config than the installed ones (exit 1)",
              add_arguments, run, order=150, heavy=False)
