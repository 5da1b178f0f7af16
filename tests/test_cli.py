"""The CLI is built from the stage modules of subtune.stages: a new stage is one file, listed nowhere else."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

import subtune.stages as stages_pkg
from subtune.cli import build_parser, main, warm_stages

PROBE_STAGE = '''
import argparse

from subtune import SubtuneError
from subtune.stages import Stage
from subtune.stages._common import json_arg


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--word", required=True)
    s.add_argument("--params", type=json_arg, default={})


def run(a: argparse.Namespace) -> None:
    if a.word == "bad":
        raise SubtuneError("--word: bad is not a word")
    print(f"probe says {a.word} {a.params}")


STAGE = Stage("zz-probe", "a test stage", add_arguments, run, order=999, heavy=False)
'''


@pytest.fixture
def probe_stage(tmp_path, monkeypatch):
    (tmp_path / "zz_probe_stage.py").write_text(PROBE_STAGE)
    monkeypatch.setattr(stages_pkg, "__path__", [*stages_pkg.__path__, str(tmp_path)])
    try:
        yield "zz-probe"
    finally:
        sys.modules.pop(f"{stages_pkg.__name__}.zz_probe_stage", None)


def stage_names(parser) -> list[str]:
    return list(parser._subparsers._group_actions[0].choices)


def test_a_new_stage_is_one_module(probe_stage, capsys):
    names = stage_names(build_parser())
    assert names[-1] == probe_stage  # placed by its order, after the pipeline's stages
    assert probe_stage not in warm_stages()  # light: runs in its own process
    assert main([probe_stage, "--word", "hello", "--params", '{"k": 1}']) == 0
    assert capsys.readouterr().out == "probe says hello {'k': 1}\n"
    assert main([probe_stage, "--word", "bad"]) == 2
    assert capsys.readouterr().err == "subtune zz-probe: error: --word: bad is not a word\n"
    with pytest.raises(SystemExit) as exc:  # argparse's own check, as for every stage
        main([probe_stage])
    assert exc.value.code == 2


def test_stages_come_in_pipeline_order_and_only_heavy_ones_are_served_warm():
    found = stages_pkg.discover()
    assert list(found) == stage_names(build_parser())
    orders = [s.order for s in found.values()]
    assert orders == sorted(orders) and len(set(orders)) == len(orders)
    assert warm_stages() == {n for n, s in found.items() if s.heavy}
    assert {"download", "decide", "replay", "status"} == set(found) - warm_stages()  # no torch, MLflow, pandas


def test_help_and_the_warm_client_import_no_heavy_library():
    """``--help``, the argument check and the warm-start client read every stage without torch, timm, MLflow."""
    code = ("import sys\n"
            "import subtune.warm\n"
            "assert 'subtune.cli' not in sys.modules and 'subtune.stages' not in sys.modules, 'warm imports the CLI'\n"
            "from subtune.cli import build_parser, warm_stages\n"
            "build_parser(), warm_stages()\n"
            "heavy = {'torch', 'timm', 'mlflow', 'pandas', 'peft'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)


def test_help_of_every_stage_is_fast_and_starts_no_warm_server(tmp_path):
    """``-h``/``--help`` runs in the process itself: no warm server is started or contacted (its socket directory
    stays untouched), so the usage comes in well under a second instead of a server's start-up."""
    warm_dir = tmp_path / "warm"
    env = {k: v for k, v in os.environ.items() if k not in ("SUBTUNE_WARM", "SLURM_JOB_ID")}
    env["SUBTUNE_WARM_DIR"] = str(warm_dir)
    times = {}
    for name in stages_pkg.discover():
        for flag in ("--help", "-h"):
            argv = [sys.executable, "-m", "subtune", name, flag] if flag == "--help" else \
                [sys.executable, "-m", "subtune", "-v", name, flag]
            t = time.perf_counter()
            p = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
            times[f"{name} {flag}"] = time.perf_counter() - t
            assert p.returncode == 0, p.stderr
            assert p.stdout.startswith(f"usage: python -m subtune {name} "), p.stdout[:200]
            assert not warm_dir.exists(), f"{name} {flag} touched the warm server's directory"
    print("\n".join(f"{k}: {v:.2f} s" for k, v in times.items()))
    assert max(times.values()) < 5.0, times  # a warm server's start-up takes 10 s and more
