"""The workflow in a temporary directory: a copy of its files, Snakemake runs and the jobs they plan.

Shared by the end-to-end tests (tests/test_workflow.py, test_configs.py, test_dvc.py, test_lint.py,
test_mlflow_server.py, test_mlflow_load.py, test_models_names.py, test_paper_configs.py, test_slurm.py).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def workdir(tmp: Path) -> Path:
    """``tmp`` with a copy of the workflow (Snakefile, rules, schemas, configs, references, report captions)."""
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, tmp / name)
    for name in ("rules", "schemas", "configs", "references", "report"):
        shutil.copytree(ROOT / name, tmp / name)
    return tmp


def smk(wd: Path, *args: str, config: str = "configs/test.yaml", check: bool = True, cores: int = 2):
    """``snakemake`` in ``wd`` with ``config``, outside any MLflow or subtune setting of the caller's environment."""
    cmd = [SNAKEMAKE, "--cores", str(cores), "--configfile", config, *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SUBTUNE_"))}
    p = subprocess.run(cmd, cwd=wd, capture_output=True, text=True, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return p


def job_stats(output: str) -> dict[str, int]:
    """Parse Snakemake's 'Job stats' table: {rule: count} (empty when nothing would run)."""
    stats: dict[str, int] = {}
    lines = output.splitlines()
    for i, line in enumerate(lines):
        if line.strip() == "Job stats:":
            for row in lines[i + 3 :]:
                m = re.match(r"^(\S+)\s+(\d+)$", row.strip())
                if not m:
                    break
                if m.group(1) not in ("total", "all"):
                    stats[m.group(1)] = int(m.group(2))
            break
    return stats


def edit_config(wd: Path, name: str, fn) -> str:
    """configs/test.yaml changed by ``fn`` (in place on the parsed dict), written as configs/``name``: its path."""
    cfg = yaml.safe_load((wd / "configs/test.yaml").read_text())
    fn(cfg)
    (wd / "configs" / name).write_text(yaml.safe_dump(cfg))
    return f"configs/{name}"
