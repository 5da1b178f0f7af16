"""Every paper config runs end to end, at tiny scale, through the real workflow (`snakemake --cores 2`).

Each paper config (every file in configs/ but those tests/helpers/configs.py names as not a paper's) is read and
shrunk **in size only** (:func:`tiny_config`); every other key, protocol options included (optimiser, schedule,
augmentation, scoring, stop rule, strategy, per-seed selection, grids, per-target overrides, keys added later),
flows through unchanged:

- backbone: the same timm architecture with size-reducing ``model_kwargs`` (ViT: depth 2, width 32, 2 heads,
  32 px input in 8 px patches; ResNet: one block per stage, channels 8..64; WideResNet: depth 10, width 1). A ``hub`` checkpoint becomes
  ``checkpoint: file`` with random weights of that model made here by timm (the hub is unreachable);
  ``pretrain`` stays: the real pretrain rule on the real (tiny) source data.
- data: images of at most 32 px; the first target only (Multi-LoRA: two, its minimum) with its overrides;
  40 train / 20 val / 20 test images (``params``: the sizes every dataset builder takes). The raw data are
  tiny archives in the published formats (tests/helpers/archives.py: NOAH's VTAB-1k zip, CIFAR-10's python
  tarball, CIFAR-10-C's tar), downloaded by the workflow's ``download`` rule from a loopback HTTP mirror
  (``data.mirrors``) and verified as usual: the archives' own digests are pinned in the subprocesses
  (a ``sitecustomize`` module, the counterpart of tests/test_datasets_remote.py's ``monkeypatch``), and
  the built-in internet mirrors are emptied there.
- one seed, one epoch (``warmup_epochs``/``cooldown_epochs`` at most 1, batches of at most 20) wherever
  they appear (also pretraining and grids);
  at most 2 folds, one shard per round and pair; the sweep on two sizes (20 and 40); pairs on the kept target.

Each run must exit 0 and write every table the config implies, with every configured method in
tables/main.md. A config that cannot run at tiny scale fails here.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from subtune.data.targets import raw_dataset
from subtune.methods import method_needs
from subtune.report import method_label

from helpers.archives import http_mirror, make_cifar10, make_cifar10c, make_vtab, sha256
from helpers.configs import PAPER
from helpers.workflow import ROOT, SNAKEMAKE, workdir

# every test here is a workflow run (minutes each on 2 cores)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

TRAIN, VAL, TEST = 40, 20, 20  # images per split of every kept dataset
IMAGE = 32  # pixels, at most
SWEEP = [TRAIN // 2, TRAIN]


def load_raw(name: str) -> dict:
    return yaml.safe_load((ROOT / f"configs/{name}.yaml").read_text())


def tiny_kwargs(arch: str) -> dict:
    """Size-reducing timm kwargs for ``arch``: its family record's ``shrink`` (subtune.models.families; the
    architecture stays: timm.create_model(arch, **kwargs)); a new family brings its own."""
    from subtune.models.families import family_for_arch

    kw = copy.deepcopy(family_for_arch(arch).shrink)
    assert kw.get("img_size", IMAGE) <= IMAGE, (arch, kw)
    return kw


def _shrink_epochs(node):
    """Every ``epochs`` (value or grid list) -> 1, every ``warmup_epochs`` and ``cooldown_epochs`` -> at most 1,
    every ``batch_size`` -> at most half the tiny training split (so ``drop_last`` keeps a batch), anywhere."""
    caps = {"warmup_epochs": 1, "cooldown_epochs": 1, "batch_size": TRAIN // 2}
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "epochs":
                node[k] = [1] if isinstance(v, list) else 1
            elif k in caps:
                node[k] = sorted({min(int(e), caps[k]) for e in v}) if isinstance(v, list) else min(int(v), caps[k])
            else:
                _shrink_epochs(v)
    elif isinstance(node, list):
        for v in node:
            _shrink_epochs(v)


def kept_targets(cfg: dict) -> list[str]:
    """The first target; with Multi-LoRA, also the next of its targets (it needs two)."""
    first = next(iter(cfg["targets"]))
    keep = [first]
    if "multilora" in cfg:
        ml = cfg["multilora"]["targets"]
        keep += [t for t in ml if t != first][: 2 - (first in ml)]
    return keep


def tiny_config(cfg: dict, mirror: str, weights: Path | None) -> dict:
    """``cfg`` shrunk in size only (see the module docstring); ``weights``: the random-weights file (hub)."""
    c = copy.deepcopy(cfg)
    keep = kept_targets(c)
    first = keep[0]
    sizes = {"train_size": TRAIN, "val_size": VAL, "test_size": TEST}
    c["targets"] = {t: dict(c["targets"][t] or {}) for t in keep}
    for spec in c["targets"].values():
        spec["params"] = {**(spec.get("params") or {}), **sizes}
    if "source" in c:
        c["source"]["params"] = {**(c["source"].get("params") or {}), **sizes}
    c["seeds"] = c["seeds"][:1]
    c["data"] = {**c["data"], "image_size": min(c["data"]["image_size"], IMAGE), "mirrors": [mirror]}
    bb = c["backbone"]
    bb["model_kwargs"] = {**(bb.get("model_kwargs") or {}), **tiny_kwargs(bb["arch"])}
    if bb["checkpoint"] != "pretrain":
        bb["checkpoint"], bb["file"] = "file", str(weights)
    _shrink_epochs(c)
    sel = c["selection"]
    sel["folds"] = min(sel.get("folds", 5), 2)
    sel["shards"] = 1
    if "pairs" in c:
        c["pairs"].update(target=first, shards=1)
    if "sweep" in c:
        c["sweep"].update(target=first, sizes=SWEEP)
    if "multilora" in c:
        c["multilora"]["targets"] = [t for t in c["multilora"]["targets"] if t in keep]
    return c


def make_weights(arch: str, model_kwargs: dict, path: Path) -> None:
    """Random (seeded) weights of ``arch`` with ``model_kwargs``, in the safetensors format timm loads."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, **model_kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def expected_tables(cfg: dict) -> list[str]:
    """The tables and plots the config implies (subtune.plan.Plan.all_outputs, written out again)."""
    out = ["tables/main.csv", "tables/main.md", "tables/claims.csv", "tables/claims.md"]
    selecting = [*cfg["methods"], *cfg.get("sweep", {}).get("methods", [])]
    if any(method_needs(m) == "selection" for m in selecting):
        out += ["tables/rounds.csv", "tables/selection.csv", "tables/selection.md"]
    if any(m.get("grid") for m in cfg["methods"].values()):
        out += ["tables/grid.csv", "tables/grid.md", "plots/grid.png"]
    if cfg["selection"].get("profile", True):
        out += [f for t in cfg["targets"] for f in (f"tables/profile_{t}.csv", f"plots/profile_{t}.png")]
    if "pairs" in cfg:
        t = cfg["pairs"]["target"]
        out += [f"tables/pairs_{t}.csv", f"plots/pairs_{t}.png"]
    if "sweep" in cfg:
        out += ["tables/sweep.csv", "plots/sweep.png"]
    if "multilora" in cfg:
        out += ["tables/multilora.csv", "tables/multilora.md"]
    return out


# ------------------------------------------------------------------ the tiny raw data, served over HTTP
def _raw_needs() -> dict[str, set[str]]:
    """{raw dataset: the datasets of the tiny configs that read it}."""
    need: dict[str, set[str]] = {}
    for name in PAPER:
        cfg = load_raw(name)
        for t in [*kept_targets(cfg), *([cfg["source"]["dataset"]] if "source" in cfg else [])]:
            raw = raw_dataset(t)
            if raw is not None:
                need.setdefault(raw, set()).add(t)
    return need


def _build(raw: str, datasets: set[str], d: Path) -> Path:
    if raw == "vtab-1k":
        from subtune.data.vtab import TASKS

        tasks = {TASKS[t.removeprefix("vtab-")][0]: TASKS[t.removeprefix("vtab-")][1] for t in sorted(datasets)}
        return make_vtab(d, tasks, test=TEST, size=(8, 8))
    if raw == "cifar-10":
        return make_cifar10(d, per_batch=TRAIN // 2, test=TEST)  # 100 training images
    if raw == "cifar-10-c":
        return make_cifar10c(d, per_severity=100, corruptions=sorted(t.removeprefix("cifar10c-") for t in datasets))
    raise AssertionError(f"no tiny archive for raw dataset {raw!r} (add a builder to tests/helpers/archives.py)")


# the registries the subprocesses pin the tiny archives' digests in (None: checked structurally only)
PIN = {"cifar-10": "subtune.data.cifar:CIFAR10.files", "cifar-10-c": "subtune.data.cifar10c:FILES",
       "vtab-1k": None}  # fmt: skip
UNMIRROR = ["subtune.data.cifar:CIFAR10.mirrors", "subtune.data.cifar:CIFAR100.mirrors",
            "subtune.data.cifar10c:MIRRORS", "subtune.data.vtab:MIRRORS", "subtune.data.flowers102:MIRRORS",
            "subtune.data.caltech101:MIRRORS"]  # fmt: skip


def _sitecustomize(archives: dict[str, Path]) -> str:
    lines = ['"""Written by tests/test_paper_configs.py: pin the tiny archives, no internet mirror."""',
             "import importlib", "", "def _get(spec):", "    mod, _, attr = spec.partition(':')",
             "    obj = importlib.import_module(mod)", "    for a in attr.split('.'):",
             "        obj = getattr(obj, a)", "    return obj", ""]  # fmt: skip
    for raw, path in archives.items():
        if PIN[raw]:
            lines.append(f"_get({PIN[raw]!r})[{path.name!r}] = ({sha256(path)!r}, None)")
    lines += [f"_get({spec!r}).clear()" for spec in UNMIRROR]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """(base URL of the loopback mirror, environment for the workflow's processes)."""
    d = tmp_path_factory.mktemp("mirror")
    archives = {raw: _build(raw, ds, d) for raw, ds in sorted(_raw_needs().items())}
    site = tmp_path_factory.mktemp("site")
    (site / "sitecustomize.py").write_text(_sitecustomize(archives))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SUBTUNE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env["HF_HUB_OFFLINE"] = "1"
    with http_mirror(d) as url:
        yield url, env


# ------------------------------------------------------------------ the runs
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(f"paper-{n}")) for n in PAPER])
def test_paper_config_runs_at_tiny_scale(name, mirror, tmp_path):
    url, env = mirror
    (tmp_path / "wd").mkdir()
    wd = workdir(tmp_path / "wd")
    cfg0 = load_raw(name)
    weights = tmp_path / "weights.safetensors"
    cfg = tiny_config(cfg0, url, weights)
    if cfg["backbone"]["checkpoint"] == "file":
        make_weights(cfg["backbone"]["arch"], cfg["backbone"]["model_kwargs"], weights)
    (wd / "configs/tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    start = time.monotonic()
    # --keep-going: every job that can run does, so that one run names every failing rule
    p = subprocess.run([SNAKEMAKE, "--cores", "2", "--keep-going", "--configfile", "configs/tiny.yaml"], cwd=wd,
                       capture_output=True, text=True, env=env)  # fmt: skip
    took = time.monotonic() - start
    out = p.stdout + p.stderr
    if p.returncode != 0:
        failed = re.findall(r"Error in rule (\S+):.*?\n\s+log: (\S+)", out, flags=re.S)
        why = [f"{rule}: " + " / ".join((wd / log).read_text().strip().splitlines()[-2:]) for rule, log in failed
               if (wd / log).is_file()]  # fmt: skip
        pytest.fail(f"{name} at tiny scale: snakemake exit {p.returncode} after {took:.0f} s; failed jobs:\n"
                    + "\n".join(why or [out[-3000:]]))  # fmt: skip
    jobs = sum(1 for _ in (wd / "benchmarks").rglob("*.tsv"))
    print(f"{name}: {took:.0f} s, {jobs} jobs")

    res = wd / "results" / cfg["experiment"]
    missing = [f for f in expected_tables(cfg) if not (res / f).is_file() or (res / f).stat().st_size == 0]
    assert not missing, f"{name}: missing tables {missing}"
    with open(res / "tables/main.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["method"] for r in rows} == set(cfg["methods"]), name
    assert {r["target"] for r in rows if not r["target"].startswith("VTAB-1k ")} == set(cfg["targets"]), name
    md = (res / "tables/main.md").read_text()
    for m in cfg["methods"]:
        assert f"| {method_label(m)} |" in md, (name, m)
    # the backbone came the configured way: pretrained by the pretrain rule, else loaded from a weights file
    origin = json.loads((wd / f"checkpoints/{cfg['experiment']}/backbone.json").read_text())["origin"]
    assert origin["kind"] == ("pretrained" if cfg0["backbone"]["checkpoint"] == "pretrain" else "file"), origin
    # the protocol is the config's: the tiny config differs from it in size keys only
    assert cfg["train"].keys() == cfg0["train"].keys() and cfg["methods"].keys() == cfg0["methods"].keys()
