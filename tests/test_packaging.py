"""Set-up files stay in step, and the CLI lists its stages."""

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip) - {"-e ."} == wanted


def test_cli_lists_every_stage_and_each_has_help():
    out = subprocess.run([sys.executable, "-m", "subtune", "--help"], capture_output=True, text=True, check=True)
    stages = ["download", "prepare", "fetch", "pretrain", "blocks", "score", "decide", "train", "track-init",
              "log", "report"]
    for s in stages:
        assert s in out.stdout
        sub = subprocess.run([sys.executable, "-m", "subtune", s, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and "usage:" in sub.stdout
