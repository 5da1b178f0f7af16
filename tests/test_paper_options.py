"""Options the paper configs take from the authors' code: per-dataset standardisation, the head's initialisation,
per-seed splits and a pinned VTAB-1k digest (each off by default, so a config without them runs as before).

- ``data.standardize: dataset``: the training split's per-channel mean/std in the prepared manifest, the
  inputs standardised with them (SubTuning's src/datamodules.py);
- ``train.head_init: trunc_normal``: a new head of trunc-normal(0.02) weights and zero biases (timm 0.6.5's ViT
  initialisation, which SSF's and SAN's heads get);
- ``data.split_per_seed``: a prepared split per training seed (Surgical fine-tuning's dataset.py / main.py);
- ``subtune.data.vtab.SHA256``: a pinned digest of vtab-1k.zip refuses any other file; every member read is
  recorded with its SHA-256.
"""

from __future__ import annotations

import copy
import hashlib
import zipfile
from pathlib import Path

import pytest
import torch
import yaml

from subtune import SubtuneError
from subtune.config import validate
from subtune.data import prepared, targets, vtab
from subtune.data.download import DownloadError, download_dataset
from subtune.models.checkpoint import build_model, create
from subtune.plan import Plan, dataset_params
from subtune.train_config import TrainConfig

from helpers.archives import http_mirror, make_vtab, sha256
from helpers.workflow import smk, workdir

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "schemas/config.schema.yaml"


def load(name: str, without: tuple[str, ...] = (), **data) -> dict:
    """``name`` (config.yaml or configs/<name>.yaml) without the top-level sections ``without``, with ``data``
    keys set, validated."""
    path = ROOT / (name if name.endswith(".yaml") else f"configs/{name}.yaml")
    cfg = yaml.safe_load(path.read_text())
    for section in without:
        cfg.pop(section)
    cfg["data"].update(data)
    return validate(copy.deepcopy(cfg), SCHEMA)


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.delenv("SUBTUNE_MIRRORS", raising=False)
    monkeypatch.setattr(vtab, "MIRRORS", [])


@pytest.fixture(scope="module")
def vtab_zip(tmp_path_factory) -> Path:
    """NOAH's layout, one task (eurosat), 8x8 flat-colour JPEGs (green and blue nearly constant)."""
    return make_vtab(tmp_path_factory.mktemp("vtab"), {"eurosat": 10}, test=30, size=(8, 8))


@pytest.fixture
def vtab_raw(vtab_zip, tmp_path, monkeypatch) -> Path:
    """The tiny zip downloaded from a loopback mirror with its own digest pinned: the raw directory."""
    monkeypatch.setitem(vtab.FILES, vtab.ARCHIVE, (sha256(vtab_zip), None))
    with http_mirror(vtab_zip.parent) as url:
        download_dataset("vtab-1k", tmp_path / "raw", mirrors=[url])
    return tmp_path / "raw"


# ------------------------------------------------------------------ data.standardize
def test_standardize_dataset_records_the_training_splits_statistics():
    plain, m0 = targets.build("digits", seed=0, image_size=16, train_size=120, val_size=40, test_size=40)
    std, m1 = targets.build("digits", seed=0, image_size=16, train_size=120, val_size=40, test_size=40,
                            standardize="dataset")
    assert all(torch.equal(plain[k], std[k]) for k in plain)  # the pixels are the same: only the manifest differs
    assert "normalize" not in m0 and "standardize" not in m0["params"]
    x = std["train_x"].double() / 255  # [N,1,H,W]: the torch statistics SubTuning's script computes over train800
    assert m1["normalize"]["from"] == "train" and m1["params"]["standardize"] == "dataset"
    assert m1["normalize"]["mean"] == pytest.approx(x.mean((0, 2, 3)).tolist(), abs=1e-6)
    assert m1["normalize"]["std"] == pytest.approx(x.std((0, 2, 3)).tolist(), abs=1e-6)
    # the inputs a model then sees: zero mean and unit std over the training split, per channel
    mean, sd = prepared.normalization(m1, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    z = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(sd).view(1, -1, 1, 1)
    assert z.mean().item() == pytest.approx(0, abs=1e-5) and z.std().item() == pytest.approx(1, abs=1e-5)
    # without it, the backbone's own statistics
    assert prepared.normalization(m0, (0.5,), (0.25,)) == ((0.5,), (0.25,))


def test_standardize_takes_two_values_and_a_manifest_must_be_well_formed():
    with pytest.raises(SubtuneError, match="digits.standardize must be one of backbone, dataset, not 'imagenet'"):
        targets.validate("digits", {"standardize": "imagenet"})
    with pytest.raises(SubtuneError, match="digits: normalize must hold mean and std of one length"):
        prepared.normalization({"name": "digits", "normalize": {"mean": [0.5], "std": []}}, (0,), (1,))
    with pytest.raises(SubtuneError, match="bad config value data.standardize"):
        load("test", standardize="imagenet")


def test_a_nearly_constant_channel_is_standardised_by_one_grey_level(vtab_raw):
    _, m = targets.build("vtab-eurosat", vtab_raw, seed=0, image_size=8, standardize="dataset")
    floor = round(1 / 255, 6)
    red, green, blue = m["normalize"]["std"]
    assert red > 0.1 and green == floor and blue == floor  # flat JPEGs: red follows the label, green/blue barely move
    assert sum("of the training split has std" in n and "standardised with std 0.003922" in n for n in m["notes"]) == 2


def test_standardize_reaches_the_targets_build_parameters_only_when_set():
    default = load("config.yaml")
    for t in default["targets"]:
        assert "standardize" not in dataset_params(default, t)
    cfg = load("test", without=("multilora",), standardize="dataset")
    assert dataset_params(cfg, "digits")["standardize"] == "dataset"
    assert "standardize" not in dataset_params(cfg, cfg["source"]["dataset"])  # pretraining: the source as it is
    for name in ("subtuning-vtab", "subtuning-vtab-vit"):
        c = load(name)
        assert all(dataset_params(c, t)["standardize"] == "dataset" for t in c["targets"]), name


def test_multilora_refuses_dataset_standardisation_and_a_head_init():
    with pytest.raises(SubtuneError, match="data.standardize is dataset but the multilora comparison normalises"):
        load("test", standardize="dataset")  # configs/test.yaml has a multilora section
    cfg = yaml.safe_load((ROOT / "configs/test.yaml").read_text())
    cfg["train"]["head_init"] = "trunc_normal"
    with pytest.raises(SubtuneError, match="head_init trunc_normal .train or multilora.train.: Multi-LoRA builds"):
        validate(cfg, SCHEMA)


# ------------------------------------------------------------------ train.head_init
def test_head_init_is_a_typed_training_option():
    assert TrainConfig().model_kwargs() == {}  # the default builds the model as before
    assert TrainConfig(head_init="trunc_normal").model_kwargs() == {"head_init": "trunc_normal"}
    with pytest.raises(SubtuneError, match="train.head_init must be one of default, trunc_normal, not 'xavier'"):
        TrainConfig.from_dict({"head_init": "xavier"})
    for name in ("peft-vtab", "peft-vtab-dinov2"):  # every row of SSF's and SAN's configs
        c = load(name)
        assert c["train"]["head_init"] == "trunc_normal", name


def test_trunc_normal_head_init(ckpt):
    plain, _ = build_model(ckpt, 7, seed=3)
    head, _ = build_model(ckpt, 7, seed=3, **TrainConfig(head_init="trunc_normal").model_kwargs())
    again, _ = build_model(ckpt, 7, seed=3, head_init="trunc_normal")
    other, _ = build_model(ckpt, 7, seed=4, head_init="trunc_normal")
    w, b = head.fc.weight.detach(), head.fc.bias.detach()
    assert w.shape == (7, 64) and torch.count_nonzero(b) == 0
    assert 0.015 < w.std().item() < 0.025 and w.abs().max().item() < 0.1  # N(0, 0.02): no value near +-2
    assert plain.fc.bias.abs().max().item() > 0 and plain.fc.weight.std().item() > 0.05  # torch's default: U(+-1/8)
    assert torch.equal(w, again.fc.weight) and not torch.equal(w, other.fc.weight)  # seeded per run
    body = {k: v for k, v in head.state_dict().items() if not k.startswith("fc.")}
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in body.items())  # the backbone as loaded
    with pytest.raises(SubtuneError, match="head_init must be one of default, trunc_normal, not 'zeros'"):
        build_model(ckpt, 7, head_init="zeros")
    fresh = create("resnet18", 5, 3, head_init="trunc_normal", channels=(8, 16, 32, 64))  # pretraining's model
    assert torch.count_nonzero(fresh.fc.bias) == 0 and fresh.fc.weight.std().item() < 0.025


# ------------------------------------------------------------------ data.split_per_seed
def test_split_per_seed_gives_each_seed_its_own_prepared_file():
    default = Plan(load("config.yaml"))
    for t in default.targets:  # the default's files do not change, whatever seed asks
        for regime in ("1k", "n100"):
            assert {default.prepared(t, regime, s)["data"] for s in (None, *default.seeds)} == {
                f"data/prepared/default/{t}/{regime}.safetensors"}
    plan = Plan(load("cifar10c"))
    t = plan.targets[0]
    files = [plan.prepared(t, seed=s) for s in plan.seeds]
    assert files[1] == {"data": f"data/prepared/cifar10c/{t}/seed1/1k.safetensors",
                        "manifest": f"data/prepared/cifar10c/{t}/seed1/1k.json"}
    assert len({f["data"] for f in files}) == len(plan.seeds)
    assert plan.prepared("cifar10", "source", 1)["data"] == "data/prepared/cifar10c/cifar10/source.safetensors"
    assert plan.prepared(t) == {"data": f"data/prepared/cifar10c/{t}/1k.safetensors",
                                "manifest": f"data/prepared/cifar10c/{t}/1k.json"}


def test_per_seed_files_are_prepared_with_their_seed_and_the_default_plans_none(tmp_path):
    wd = workdir(tmp_path)
    cfg = yaml.safe_load((wd / "configs/test.yaml").read_text())
    cfg["data"]["split_per_seed"] = True
    (wd / "configs/per-seed.yaml").write_text(yaml.safe_dump(cfg))
    out = smk(wd, "-n", "-p", "data/prepared/test/digits/seed1/1k.safetensors", "data/prepared/test/digits/1k.json",
              config="configs/per-seed.yaml", cores=1).stdout
    assert "rule prepare_seed:" in out and "rule prepare:" in out
    assert "--target digits  --params" in out
    assert " --seed 1 --out data/prepared/test/digits/seed1/1k.safetensors" in out
    assert " --seed 0 --out data/prepared/test/digits/1k.safetensors" in out  # the shared split: data.seed
    default = smk(wd, "-n", "-p", config="configs/test.yaml", cores=1).stdout
    assert "prepare_seed" not in default and "/seed0/1k" not in default


def test_each_seed_draws_another_split_of_the_same_sizes():
    a, _ = targets.build("digits", seed=0, image_size=8, train_size=100, val_size=50, test_size=50)
    b, _ = targets.build("digits", seed=1, image_size=8, train_size=100, val_size=50, test_size=50)
    for s in ("train", "val", "test"):
        assert len(a[f"{s}_idx"]) == len(b[f"{s}_idx"]) and not torch.equal(a[f"{s}_idx"], b[f"{s}_idx"])


# ------------------------------------------------------------------ vtab-1k.zip: a pinned digest, member digests
def test_a_pinned_vtab_digest_refuses_another_archive(vtab_zip, tmp_path, monkeypatch):
    pinned = hashlib.sha256(b"a trusted copy of vtab-1k.zip").hexdigest()
    monkeypatch.setitem(vtab.FILES, vtab.ARCHIVE, (pinned, None))
    with http_mirror(vtab_zip.parent) as url, pytest.raises(DownloadError) as err:
        download_dataset("vtab-1k", tmp_path / "raw", mirrors=[url])
    msg = str(err.value)
    assert "\n" not in msg and f"{url}vtab-1k.zip" in msg
    assert f"sha256 mismatch (expected {pinned[:12]}, got {sha256(vtab_zip)[:12]})" in msg
    assert not (tmp_path / "raw" / "vtab-1k.zip").exists()


def test_a_pinned_digest_refuses_a_different_file_already_on_disk(vtab_raw, monkeypatch):
    pinned = hashlib.sha256(b"a trusted copy of vtab-1k.zip").hexdigest()
    monkeypatch.setitem(vtab.FILES, vtab.ARCHIVE, (pinned, None))
    with pytest.raises(SubtuneError) as err:
        targets.build("vtab-eurosat", vtab_raw, seed=0, image_size=8)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{vtab_raw / 'vtab-1k.zip'}: does not match the pinned digest")
    assert f"(expected {pinned}, got {sha256(vtab_raw / 'vtab-1k.zip')})" in msg  # both in full


def test_every_vtab_member_read_is_recorded_with_its_digest(vtab_raw):
    tensors, m = targets.build("vtab-eurosat", vtab_raw, seed=0, image_size=8, test_size=10)
    members = m["members"]["vtab-1k.zip"]
    lists = [f"vtab-1k/eurosat/{f}.txt" for f in ("train800", "val200", "test", "train800val200")]
    assert set(lists) <= set(members)
    assert len(members) == len(lists) + 800 + 200 + 10  # the test subset's 10 images, not all 30
    with zipfile.ZipFile(vtab_raw / "vtab-1k.zip") as zf:
        for name, digest in members.items():
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest, name
    assert m["inputs"] == {"vtab-1k.zip": sha256(vtab_raw / "vtab-1k.zip")}
