"""Backbones, blocks and checkpoints (real timm models, no network)."""

import socket
import time

import pytest
import timm
import torch

from subtune import SubtuneError
from subtune.models.blocks import enumerate_blocks, head_names, other_names
from subtune.models.checkpoint import Checkpoint, build_model, fetch, load_checkpoint, save_checkpoint


def n_params(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("resnet18", [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]),
        ("resnet50", [f"layer{i}.{j}" for i, n in zip(range(1, 5), (3, 4, 6, 3)) for j in range(n)]),
        ("vit_tiny_patch16_224", [f"blocks.{i}" for i in range(12)]),
    ],
)
def test_block_enumeration(arch, expected):
    model = timm.create_model(arch, pretrained=False, num_classes=7)
    blocks = enumerate_blocks(model)
    assert [b.name for b in blocks] == expected
    assert [b.index for b in blocks] == list(range(len(expected)))
    # parameter counts are those of the modules, and blocks + head + rest = everything
    for b in blocks:
        assert b.num_params == n_params(model.get_submodule(b.name))
    head = sum(n_params(model.get_submodule(h)) for h in head_names(model))
    rest = sum(p.numel() for n, p in model.named_parameters() if n.split(".")[0] in other_names(model))
    assert sum(b.num_params for b in blocks) + head + rest == n_params(model)


def test_block_param_counts_resnet18_exact():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    counts = {b.name: b.num_params for b in enumerate_blocks(model)}
    # BasicBlock: two 3x3 convs + two BNs (+ 1x1 downsample conv + BN at stage starts)
    def basic(cin, cout, down):
        n = 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout
        return n + (cin * cout + 2 * cout if down else 0)
    assert counts["layer1.0"] == basic(64, 64, False)
    assert counts["layer2.0"] == basic(64, 128, True)
    assert counts["layer4.1"] == basic(512, 512, False)
    assert head_names(model) == ["fc"] and n_params(model.fc) == 512 * 10 + 10


def test_checkpoint_roundtrip_and_seeded_head(tmp_path):
    model = timm.create_model("resnet18", num_classes=5, channels=(8, 16, 32, 64))
    ck = Checkpoint(arch="resnet18", num_classes=5, image_size=32, model_kwargs={"channels": [8, 16, 32, 64]})
    save_checkpoint(tmp_path / "c.safetensors", model, ck)
    assert (tmp_path / "c.json").is_file()
    loaded, _ = load_checkpoint(tmp_path / "c.safetensors")
    assert loaded.arch == "resnet18" and loaded.image_size == 32
    a, _ = build_model(tmp_path / "c.safetensors", num_classes=3, seed=1)
    b, _ = build_model(tmp_path / "c.safetensors", num_classes=3, seed=1)
    c, _ = build_model(tmp_path / "c.safetensors", num_classes=3, seed=2)
    assert a.fc.out_features == 3
    assert torch.equal(a.layer3[0].conv1.weight, model.layer3[0].conv1.weight)
    assert torch.equal(a.fc.weight, b.fc.weight) and not torch.equal(a.fc.weight, c.fc.weight)


def test_fetch_from_local_file(tmp_path):
    src = timm.create_model("resnet18", num_classes=1000)
    torch.save(src.state_dict(), tmp_path / "weights.pth")
    ck = fetch("resnet18", tmp_path / "ck.safetensors", file=tmp_path / "weights.pth")
    assert ck.origin["kind"] == "file" and ck.image_size == 224
    model, _ = build_model(tmp_path / "ck.safetensors", num_classes=4)
    assert torch.equal(model.layer4[1].conv2.weight, src.layer4[1].conv2.weight)


def test_missing_local_file_is_named(tmp_path):
    with pytest.raises(SubtuneError, match="missing weights file for resnet18"):
        fetch("resnet18", tmp_path / "ck.safetensors", file=tmp_path / "nope.pth")


def _closed_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_offline_hub_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.time()
    with pytest.raises(SubtuneError) as err:
        fetch("resnet18.a1_in1k", tmp_path / "ck.safetensors")
    msg = str(err.value)
    assert "resnet18.a1_in1k" in msg and "--file" in msg and "HF_ENDPOINT" in msg
    assert "\n" not in msg
    assert time.time() - t0 < 30
    assert not (tmp_path / "ck.safetensors").exists()


def test_unknown_model_is_named(tmp_path):
    with pytest.raises(SubtuneError, match="unknown timm model 'resnet_nope'"):
        fetch("resnet_nope", tmp_path / "x.safetensors")
