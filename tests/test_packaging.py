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
    from subtune.cli import build_parser

    out = subprocess.run([sys.executable, "-m", "subtune", "--help"], capture_output=True, text=True, check=True)
    stages = list(build_parser()._subparsers._group_actions[0].choices)
    modules = [p for p in (ROOT / "src/subtune/stages").glob("*.py") if not p.name.startswith("_")]
    assert len(stages) == len(modules)  # one stage per module of subtune.stages, each found
    for s in stages:
        assert s in out.stdout
        sub = subprocess.run([sys.executable, "-m", "subtune", s, "--help"], capture_output=True, text=True)
        assert sub.returncode == 0 and "usage:" in sub.stdout
