"""Where the workflow's time goes: total wall time, jobs, job-seconds, and each rule's per-job overhead.

    python bench/pipeline.py                              # the embedded default (config.yaml), warm start on
    python bench/pipeline.py --config configs/test.yaml   # the small test config
    python bench/pipeline.py --cold                       # SUBTUNE_WARM=0: every job imports torch/timm/MLflow itself
    python bench/pipeline.py --read bench/work/pipeline   # only read a finished run's files
    python bench/pipeline.py --drop-methods llrd gradual autorgn adalora siamese --drop-analyses
                                                          # the default as it was before issue 14's additions

Runs ``snakemake --cores CORES`` on a config in a fresh working directory (a copy of the workflow: Snakefile,
rules, schemas, configs, references, report; ``bench/work/pipeline`` unless ``--workdir``), then reads

- Snakemake's benchmark files (``benchmarks/<experiment>/**.tsv``, column ``s``): each job's wall time;
- each job's log (``logs/<experiment>/**.log``, same relative name): the closing line every heavy stage writes
  (:mod:`subtune.timing`), ``subtune STAGE: T s, of which fit and evaluation W s, MLflow M s``.

A job's overhead is its wall time minus its fitting and evaluation (W; 0 for stages that fit nothing:
downloads, data preparation, reports): imports, data and checkpoint loading, model building, writing, MLflow.
Prints total wall time, job count, job-seconds, the overhead's median and total over all jobs, MLflow's median
per logged run, and per rule (benchmark folder): jobs, job-seconds, fit+evaluation, overhead median and total.
Writes the numbers to ``<workdir>/pipeline.json``. Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ["Snakefile", "config.yaml", "rules", "schemas", "configs", "references", "report"]
SUMMARY = re.compile(r"^subtune (\S+): ([\d.]+) s, of which fit and evaluation ([\d.]+) s, MLflow ([\d.]+) s$")


def fresh_workdir(wd: Path) -> None:
    if wd.exists():
        shutil.rmtree(wd)
    wd.mkdir(parents=True)
    for name in WORKFLOW:
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, wd / name)


def derived_config(wd: Path, config: str, drop_methods: list[str], drop_analyses: bool) -> str:
    """``config`` less some methods (and the epsilon list and Multi-LoRA ablations), written into the workdir."""
    import yaml

    cfg = yaml.safe_load((ROOT / config).read_text())
    unknown = sorted(set(drop_methods) - set(cfg["methods"]))
    if unknown:
        raise SystemExit(f"--drop-methods: {', '.join(unknown)} not in {config}'s methods")
    for m in drop_methods:
        del cfg["methods"][m]
    if drop_analyses:
        cfg.get("selection", {}).pop("epsilons", None)
        cfg.get("multilora", {}).pop("ablations", None)
    out = wd / "configs" / "bench.yaml"
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(out.relative_to(wd))


def run_workflow(wd: Path, config: str | None, cores: str, cold: bool) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SUBTUNE_"))}
    if cold:
        env["SUBTUNE_WARM"] = "0"
    snakemake = Path(sys.executable).with_name("snakemake")
    cmd = [str(snakemake), "--cores", cores, *(["--configfile", config] if config else [])]
    print(f"running {' '.join(cmd)} in {wd}{' (SUBTUNE_WARM=0)' if cold else ''}", flush=True)
    t = time.monotonic()
    with open(wd / "snakemake.log", "w") as log:
        p = subprocess.run(cmd, cwd=wd, env=env, stdout=log, stderr=subprocess.STDOUT)
    took = time.monotonic() - t
    if p.returncode != 0:
        raise SystemExit(f"snakemake failed (exit {p.returncode}): see {wd / 'snakemake.log'}")
    return took


def job_times(wd: Path) -> list[dict]:
    """One row per job: rule (benchmark folder), wall s, fit+eval s, MLflow s (None when nothing was logged)."""
    rows = []
    for exp_dir in sorted((wd / "benchmarks").iterdir()):
        for tsv in sorted(exp_dir.rglob("*.tsv")):
            rel = tsv.relative_to(exp_dir)
            lines = tsv.read_text().splitlines()
            head, last = lines[0].split("\t"), lines[-1].split("\t")
            wall = float(last[head.index("s")])
            # benchmarks/download/RAW.tsv, benchmarks/EXP/RULE.tsv, benchmarks/EXP/RULE/JOB[/...].tsv
            rule = "download" if exp_dir.name == "download" else rel.parts[0] if len(rel.parts) > 1 else rel.stem
            work, mlflow = 0.0, None
            log = wd / "logs" / exp_dir.name / rel.with_suffix(".log")
            if log.is_file():
                for line in log.read_text(errors="replace").splitlines():
                    m = SUMMARY.match(line.strip())
                    if m:
                        work, mlflow = float(m[3]), float(m[4]) if float(m[4]) > 0 else None
            rows.append({"job": f"{exp_dir.name}/{rel.with_suffix('').as_posix()}", "rule": rule, "wall_s": wall,
                         "work_s": work, "overhead_s": max(wall - work, 0.0), "mlflow_s": mlflow})  # fmt: skip
    return rows


def summarize(rows: list[dict], took: float | None) -> dict:
    by_rule: dict[str, list[dict]] = {}
    for r in rows:
        by_rule.setdefault(r["rule"], []).append(r)
    mlflow = [r["mlflow_s"] for r in rows if r["mlflow_s"] is not None]
    out = {
        "wall_s": took, "jobs": len(rows), "job_seconds": sum(r["wall_s"] for r in rows),
        "work_seconds": sum(r["work_s"] for r in rows),
        "overhead_median_s": statistics.median(r["overhead_s"] for r in rows) if rows else None,
        "overhead_total_s": sum(r["overhead_s"] for r in rows),
        "mlflow_median_s": statistics.median(mlflow) if mlflow else None, "mlflow_runs": len(mlflow),
        "rules": {rule: {"jobs": len(rs), "job_seconds": sum(r["wall_s"] for r in rs),
                         "work_seconds": sum(r["work_s"] for r in rs),
                         "overhead_median_s": statistics.median(r["overhead_s"] for r in rs),
                         "overhead_total_s": sum(r["overhead_s"] for r in rs)}
                  for rule, rs in sorted(by_rule.items())},
        "rows": rows,
    }  # fmt: skip
    return out


def report(s: dict) -> None:
    wall = f"{s['wall_s']:.0f} s ({s['wall_s'] / 60:.1f} min)" if s["wall_s"] is not None else "(not run here)"
    print(f"snakemake wall time: {wall}; jobs: {s['jobs']}; job-seconds: {s['job_seconds']:.0f} "
          f"(fit and evaluation {s['work_seconds']:.0f})")  # fmt: skip
    print(f"per-job overhead (wall - fit and evaluation): median {s['overhead_median_s']:.2f} s, "
          f"total {s['overhead_total_s']:.0f} s")  # fmt: skip
    if s["mlflow_median_s"] is not None:
        print(f"MLflow logging in the job: median {s['mlflow_median_s']:.2f} s over {s['mlflow_runs']} runs")
    print(f"{'rule':<16} {'jobs':>5} {'job-s':>8} {'fit+eval s':>10} {'overhead median':>16} {'overhead total':>15}")
    for rule, r in s["rules"].items():
        print(f"{rule:<16} {r['jobs']:>5} {r['job_seconds']:>8.1f} {r['work_seconds']:>10.1f} "
              f"{r['overhead_median_s']:>16.2f} {r['overhead_total_s']:>15.1f}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", help="a config file (relative to the repository; default: the embedded config.yaml)")
    ap.add_argument("--workdir", type=Path, default=ROOT / "bench/work/pipeline")
    ap.add_argument("--cores", default="all")
    ap.add_argument("--cold", action="store_true", help="SUBTUNE_WARM=0: no warm start (every job imports itself)")
    ap.add_argument("--read", type=Path, metavar="WORKDIR", help="only read the files of a finished run")
    ap.add_argument("--drop-methods", nargs="+", default=[], metavar="METHOD",
                    help="run the config without these methods (e.g. to time what other methods cost)")
    ap.add_argument("--drop-analyses", action="store_true",
                    help="run the config without selection.epsilons and multilora.ablations")
    a = ap.parse_args()
    took = None
    wd = a.read or a.workdir
    if a.read is None:
        fresh_workdir(wd)
        config = a.config
        if a.drop_methods or a.drop_analyses:
            config = derived_config(wd, a.config or "config.yaml", a.drop_methods, a.drop_analyses)
        took = run_workflow(wd, config, a.cores, a.cold)
    s = summarize(job_times(wd), took)
    s.update(config=a.config or "config.yaml", cold=a.cold, cores=a.cores, dropped_methods=a.drop_methods,
             dropped_analyses=a.drop_analyses)
    if took is None and (wd / "pipeline.json").is_file():
        s["wall_s"] = json.loads((wd / "pipeline.json").read_text()).get("wall_s")
    (wd / "pipeline.json").write_text(json.dumps(s, indent=1))
    report(s)


if __name__ == "__main__":
    main()
