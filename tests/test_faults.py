"""Faults of the machine and of the files between jobs: a full disk, and corrupted intermediate files.

A job whose output directory fills up fails with one line naming the file, leaves nothing under a final name,
and its rerun, once there is room again, gives the tables an undisturbed run gives. The disk is really full: a
small tmpfs mounted over the job's output directory and filled (root with CAP_SYS_ADMIN), or else a file-size
limit on the job (``RLIMIT_FSIZE``, SIGXFSZ ignored, so that its writes fail with EFBIG).

A prepared dataset or a backbone checkpoint that is truncated or altered after it was written is refused by the
SHA-256 recorded beside it when a job loads it, before any training, with one line naming the file and the
``snakemake --forcerun`` that makes it again.

The module prints its figures at the end (``pytest -s``): faults injected, detected, runs lost.
"""

import contextlib
import errno
import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers.workflow import edit_config, smk, workdir
from subtune import SubtuneError
from subtune import io as sio
from subtune.cli import main
from subtune.data import prepared, targets
from subtune.models.checkpoint import Checkpoint, create, load_checkpoint, save_checkpoint, sidecar

# faults injected, faults detected (one line naming the file), runs lost (a finished run's result destroyed, or a run
# trained on a corrupted file)
FIGURES = {"injected": 0, "detected": 0, "runs lost": 0}


@pytest.fixture(scope="module", autouse=True)
def _figures():
    yield
    print(f"\nfaults injected: {FIGURES['injected']}, detected: {FIGURES['detected']}, "
          f"runs lost: {FIGURES['runs lost']}")


def _injected(detected: bool) -> None:
    FIGURES["injected"] += 1
    FIGURES["detected"] += bool(detected)


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error" in line.lower() or "Traceback" in line]


# ------------------------------------------------------------------------------------------------ a full disk
@functools.cache
def can_mount() -> bool:
    """Whether this process may mount a tmpfs (root with CAP_SYS_ADMIN: not in most unprivileged containers)."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    probe = Path(f"/tmp/subtune-mount-probe-{os.getpid()}")
    probe.mkdir(exist_ok=True)
    try:
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)],
                          capture_output=True).returncode != 0:
            return False
        subprocess.run(["umount", str(probe)], check=True)
        return True
    finally:
        probe.rmdir()


FSIZE_LIMIT = 1024  # bytes: below a training job's metrics file, above its log


@contextlib.contextmanager
def tmpfs(directory: Path, size: str = "256k"):
    """``directory`` on a tmpfs of ``size`` while the context lasts."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True)
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=True)


def fill(directory: Path) -> Path:
    """A file in ``directory`` that takes every free block of its file system: the disk is full until it is
    deleted."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as fh, pytest.raises(OSError) as exc:
        while True:
            fh.write(b"\0" * 4096)
    assert exc.value.errno == errno.ENOSPC
    return filler


def fsize_limit(limit: int = FSIZE_LIMIT):
    """A ``preexec_fn``: files of the child and its children may not grow beyond ``limit`` bytes, and a write past
    it fails with EFBIG (SIGXFSZ ignored) instead of killing the process."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


WRITERS = r"""
import os, sys
import pandas as pd, torch
from safetensors.torch import save_file
from subtune import SubtuneError
from subtune.io import atomic_path, write_json
out = sys.argv[1]
writers = {  # the writers the stages use: write_json (atomic itself), safetensors' (Rust), pandas'
    "m.json": lambda p: write_json(p, {"x": "y" * 100000}),
    "w.safetensors": lambda p: save_file({"a": torch.zeros(100000)}, str(p)),
    "t.csv": lambda p: pd.DataFrame({"a": range(100000)}).to_csv(p),
}
for name, write in writers.items():
    dest = os.path.join(out, name)
    try:
        if name == "m.json":
            write(dest)
        else:
            with atomic_path(dest) as tmp:
                write(tmp)
    except SubtuneError as exc:
        print(exc)
    else:
        print("written", name)
"""


@pytest.mark.parametrize("how", ["tmpfs", "fsize"])
def test_atomic_writers_turn_a_full_disk_into_one_line_and_leave_nothing(tmp_path, how):
    """A full file system (tmpfs) and a file-size limit: one SubtuneError naming the final file, whatever wrote
    it, and neither a temporary file nor a final one left behind."""
    if how == "tmpfs" and not can_mount():
        pytest.skip("mounting a tmpfs needs root with CAP_SYS_ADMIN (the file-size limit stands in)")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    with tmpfs(out) if how == "tmpfs" else contextlib.nullcontext():
        out.mkdir(exist_ok=True)
        if how == "tmpfs":
            fill(out)
        p = subprocess.run([sys.executable, "-c", WRITERS, str(out)], capture_output=True, text=True, env=env,
                           preexec_fn=fsize_limit() if how == "fsize" else None)
        what, remedy = (("no space left on device", "free some space") if how == "tmpfs" else
                        ("file too large (over the file-size limit)", "raise the limit (ulimit -f)"))
        want = [f"{what} writing {out / name}: {remedy} and rerun" for name in ("m.json", "w.safetensors", "t.csv")]
        for line, w in zip(p.stdout.splitlines(), want):
            _injected(line == w)
        assert p.stdout.splitlines() == want, p.stdout + p.stderr
        assert sorted(f.name for f in out.iterdir()) == (["filler"] if how == "tmpfs" else [])


def test_the_cli_reports_a_full_disk_anywhere_in_one_line(monkeypatch, capsys):
    """A write outside the atomic writers (here to /dev/full, which is always full) still ends the job in one
    line, not a traceback."""
    from subtune import cli
    from subtune.stages import Stage, discover

    def run(a):
        with open("/dev/full", "w") as fh:
            fh.write("x")

    stages = {**discover(), "fill": Stage("fill", "writes to a full device", lambda sp: None, run, 999, heavy=False)}
    monkeypatch.setattr(cli, "discover", lambda: stages)
    assert cli.main(["fill"]) == 2
    err = capsys.readouterr().err.splitlines()
    _injected(len(err) == 1)
    assert err == ["subtune fill: error: no space left on device while writing (the system named no file): "
                   "free some space and rerun"]


def fault_config(wd: Path) -> str:
    """configs/test.yaml cut to one target, one seed, LP and FT on a backbone from a local weights file (no
    download, no pretraining, no selection): the smallest workflow that trains."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    kwargs = {"channels": [8, 16, 32, 64]}
    model = timm.create_model("resnet18", pretrained=False, **kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(wd / "weights.safetensors"))

    def tiny(c):
        c["seeds"] = [0]
        c["backbone"] = {"arch": "resnet18", "model_kwargs": kwargs, "checkpoint": "file",
                         "file": "weights.safetensors"}
        c.pop("source")
        c["targets"] = {"digits": {"params": {"train_size": 120, "val_size": 60, "test_size": 300}}}
        c["methods"] = {"lp": {"train": {"lr": 0.01}}, "ft": {"train": {"lr": 0.001}}}
        for key in ("sweep", "multilora", "pairs"):
            c.pop(key)
        c["selection"].pop("epsilons")
        c["selection"]["profile"] = False

    return edit_config(wd, "faults.yaml", tiny)


UNSTABLE = ("wall_time", "time_s", "mlflow_run_ids", "config_hash", "code_version", "data_digest")


def tables(wd: Path) -> dict[str, pd.DataFrame]:
    """Every CSV table of the run without its wall-time and provenance columns."""
    out = {}
    for path in sorted((wd / "results/test/tables").glob("*.csv")):
        df = pd.read_csv(path)
        out[path.name] = df[[c for c in df.columns if not any(u in c for u in UNSTABLE)]]
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_training_job_on_a_full_disk_fails_in_one_line_and_its_rerun_completes(tmp_path):
    """LP's training job finds its output directory full (a tmpfs, filled after the undisturbed run wrote there):
    the job fails in one line naming its metrics file, nothing is left under the directory but the filler, and
    the same command, once the filler is gone, trains the run again to the same losses and the same tables."""
    wd = workdir(tmp_path)
    cfg = fault_config(wd)
    out_dir = wd / "results/test/runs/digits/lp"
    out = out_dir / "seed0.json"
    rel = str(out.relative_to(wd))
    log = wd / "logs/test/train/digits_lp_seed0.log"
    mount = can_mount()
    with tmpfs(out_dir) if mount else contextlib.nullcontext():
        smk(wd, config=cfg)  # the undisturbed run
        reference, ref_run = tables(wd), json.loads(out.read_text())
        assert reference["main.csv"]["method"].tolist() == ["lp", "ft"]
        finished = {f: f.read_bytes() for f in (wd / "results/test/runs").rglob("*.json") if f != out}
        out.unlink()  # as before the job first ran (else Snakemake's deleting it before the job makes room)
        if mount:
            filler = fill(out_dir)
            p = smk(wd, "--show-failed-logs", "--forcerun", rel, config=cfg, check=False)
            want = f"subtune train: error: no space left on device writing {rel}: free some space and rerun"
            left = ["filler"]
        else:  # the job (as Snakemake runs it) under a file-size limit
            shown = smk(wd, "--dry-run", "--printshellcmds", "--forcerun", rel, config=cfg).stdout.splitlines()
            cmd = [line.removeprefix("Shell command: ") for line in shown if f"--out {rel} " in line]
            assert len(cmd) == 1, shown
            env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SUBTUNE_"))}
            p = subprocess.run(["bash", "-c", cmd[0]], cwd=wd, env={**env, "SUBTUNE_WARM": "0"},
                               preexec_fn=fsize_limit(), capture_output=True, text=True)
            want = (f"subtune train: error: file too large (over the file-size limit) writing {rel}: "
                    f"raise the limit (ulimit -f) and rerun")
            left = []
        lines = _error_lines(log.read_text())
        _injected(p.returncode != 0 and lines == [want])
        assert p.returncode != 0 and lines == [want], log.read_text()
        if mount:
            assert want in p.stdout + p.stderr  # Snakemake shows the failed job's log
        assert sorted(f.name for f in out_dir.iterdir()) == left  # nothing partial, no temporary file
        lost = [str(f) for f, data in finished.items() if not f.is_file() or f.read_bytes() != data]
        FIGURES["runs lost"] += len(lost)
        assert not lost  # the other runs' results are untouched
        if mount:
            filler.unlink()  # room again
        smk(wd, "--forcerun", rel, config=cfg)
        rerun = json.loads(out.read_text())
    # the rerun trained the same run again: the same losses, the same tables
    assert [h["train_loss"] for h in rerun["history"]] == [h["train_loss"] for h in ref_run["history"]]
    again = tables(wd)
    assert again.keys() == reference.keys()
    for name in reference:
        pd.testing.assert_frame_equal(again[name], reference[name], obj=name)


# ------------------------------------------------------------------------------------------------ corrupted files
def corrupt(path: Path, how: str) -> None:
    """Truncate ``path`` to half, or flip one byte in the middle of its tensors (a file that still loads)."""
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) * 3 // 4] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.fixture
def job(tmp_path):
    """A prepared dataset and a pretrained backbone as the workflow lays them out, and the arguments of a
    training job on them."""
    tensors, manifest = targets.build("digits", None, seed=0, train_size=40, val_size=20, test_size=20,
                                      image_size=16)
    data = tmp_path / "data/prepared/test/digits/1k.safetensors"
    prepared.save_prepared(data, data.with_suffix(".json"), tensors, manifest)
    ck = tmp_path / "checkpoints/test/backbone.safetensors"
    kwargs = {"channels": [8, 16, 32, 64]}
    model = create("resnet18", 4, **kwargs)
    save_checkpoint(ck, model, Checkpoint("resnet18", 4, image_size=16, model_kwargs=kwargs,
                                          origin={"kind": "pretrained", "source": "fmnist-source"}))
    args = ["train", "--method", "lp", "--data", str(data), "--manifest", str(data.with_suffix(".json")),
            "--checkpoint", str(ck), "--train", json.dumps({"epochs": 1, "batch_size": 20}),
            "--out", str(tmp_path / "run.json")]
    return {"prepared": data, "checkpoint": ck, "args": args, "out": tmp_path / "run.json"}


def test_intact_files_pass_their_check_and_train(job):
    assert main(job["args"]) == 0 and job["out"].is_file()


@pytest.mark.parametrize("how", ["truncate", "flip"])
@pytest.mark.parametrize("kind, rule", [("prepared", "prepare"), ("checkpoint", "pretrain")])
def test_a_corrupted_file_stops_the_job_before_training(job, kind, rule, how, capsys, monkeypatch):
    path = job[kind]
    recorded_in = path.with_suffix(".json")  # the manifest, or the checkpoint's sidecar
    corrupt(path, how)
    import subtune.methods

    trained = []
    real_fit = subtune.methods.fit_phases
    monkeypatch.setattr(subtune.methods, "fit_phases", lambda *a, **k: trained.append(1) or real_fit(*a, **k))
    code = main(job["args"])
    err = capsys.readouterr().err.strip().splitlines()
    ok = code == 2 and len(err) == 1 and err[0].startswith(f"subtune train: error: {path} is corrupted")
    _injected(ok)
    FIGURES["runs lost"] += bool(trained)  # a run trained on a corrupted file
    assert code == 2 and not trained and not job["out"].exists()
    assert len(err) == 1, err
    assert err[0].startswith(f"subtune train: error: {path} is corrupted (truncated or altered): its SHA-256 is ")
    assert f"{recorded_in} records " in err[0] and err[0].endswith(f"make it again: snakemake --forcerun {rule}")


def test_the_hint_names_the_rule_that_made_the_file(job, tmp_path):
    """prepare_seed for a per-seed split, fetch for a fetched backbone."""
    seeded = tmp_path / "data/prepared/test/digits/seed3/1k.safetensors"
    seeded.parent.mkdir(parents=True)
    shutil.copy(job["prepared"], seeded)
    shutil.copy(job["prepared"].with_suffix(".json"), seeded.with_suffix(".json"))
    corrupt(seeded, "flip")
    with pytest.raises(SubtuneError, match=r"seed3/1k.safetensors is corrupted .*snakemake --forcerun prepare_seed$"):
        prepared.load_prepared(seeded)
    meta = json.loads(sidecar(job["checkpoint"]).read_text())
    sidecar(job["checkpoint"]).write_text(json.dumps({**meta, "origin": {"kind": "hub", "name": "resnet18"}}))
    corrupt(job["checkpoint"], "flip")
    with pytest.raises(SubtuneError, match=r"backbone.safetensors is corrupted .*snakemake --forcerun fetch$"):
        load_checkpoint(job["checkpoint"])
    FIGURES["injected"] += 2
    FIGURES["detected"] += 2


def test_a_file_is_hashed_once_per_process_until_it_changes(job, monkeypatch):
    """Verifying on load and keying a run by the file (subtune.reuse) read it once; a rewritten file again."""
    import hashlib

    calls = []
    real = hashlib.file_digest
    monkeypatch.setattr(hashlib, "file_digest", lambda fh, name: calls.append(fh.name) or real(fh, name))
    ck = job["checkpoint"]
    load_checkpoint(ck)
    load_checkpoint(ck)
    sio.sha256_file(ck)
    assert calls == [str(ck)]
    st = ck.stat()
    os.utime(ck, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # rewritten (here: only its time changes)
    load_checkpoint(ck)
    assert calls == [str(ck)] * 2


def test_a_file_without_a_recorded_digest_loads_unchecked(job):
    """Tensor files with no manifest or sidecar beside them (a hand-made subset), or one written before sidecars
    had a digest, load as before."""
    alone = job["prepared"].with_name("subset.safetensors")
    shutil.copy(job["prepared"], alone)
    assert set(prepared.load_prepared(alone)) == {"train_x", "train_y", "val_x", "val_y"}
    meta = json.loads(sidecar(job["checkpoint"]).read_text())
    meta.pop("sha256")
    sidecar(job["checkpoint"]).write_text(json.dumps(meta))
    assert load_checkpoint(job["checkpoint"])[0].arch == "resnet18"
