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
        ("wrn28_10_cifar", [f"block{s}.layer.{i}" for s in (1, 2, 3) for i in range(4)]),
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


# ------------------------------------------------------------------ families (every registered one)
from subtune.models.blocks import block_names, families  # noqa: E402
from subtune.models.checkpoint import check_keep_head, create  # noqa: E402
from subtune.models.split import Staged  # noqa: E402

FAMILIES = [f.name for f in families()]


def tiny(name, num_classes=3, seed=0):
    fam = next(f for f in families() if f.name == name)
    arch, kw, size = fam.tiny
    torch.manual_seed(seed)
    return create(arch, num_classes, **kw), size


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_splits_exactly(name):
    """suffix(prefix(x, b), b) == model(x) for every b, and the tiny instance is of its family."""
    model, size = tiny(name)
    model.eval()
    st = Staged(model)
    assert st.family == name and len(st) == len(block_names(model)) > 0
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        full = model(x)
        for b in range(len(st) + 1):
            assert torch.equal(st.suffix(st.prefix(x, b), b), full), b


# ------------------------------------------------------------------ CIFAR WideResNet-28-10
def wrn_count(depth=28, k=10, num_classes=10):
    """Parameters of RobustBench's WideResNet, from its layout."""
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    total, cin = 3 * 16 * 9, 16
    for w in widths[1:]:
        for i in range(n):
            c = cin if i == 0 else w
            total += 2 * c + c * w * 9 + 2 * w + w * w * 9 + (c * w if c != w else 0)
        cin = w
    return total + 2 * widths[3] + widths[3] * num_classes + num_classes


def test_wrn28_10_is_robustbench_standard():
    model = timm.create_model("wrn28_10_cifar", num_classes=10)
    assert n_params(model) == wrn_count() == 36_479_194  # RobustBench's published size of "Standard"
    assert [n for n, _ in model.named_children()] == ["conv1", "block1", "block2", "block3", "bn1", "relu",
                                                      "global_pool", "fc"]
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.out_channels == 16
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert [b.name for b in enumerate_blocks(model)] == [f"block{s}.layer.{i}" for s in (1, 2, 3) for i in range(4)]
    # the stage-opening blocks: stride on conv1, a 1x1 convShortcut where the width changes
    b20 = model.block2.layer[0]
    assert b20.conv1.stride == (2, 2) and b20.convShortcut.kernel_size == (1, 1)
    assert model.block1.layer[1].convShortcut is None
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 640, 8, 8)
    cfg = model.pretrained_cfg
    assert cfg["classifier"] == "fc" and cfg["first_conv"] == "conv1" and cfg["mean"] == (0, 0, 0)
    assert head_names(model) == ["fc"] and other_names(model) == ["conv1", "bn1"]
    model.reset_classifier(4)
    assert model.fc.out_features == 4 and model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    tiny_model = timm.create_model("wrn28_10_cifar", num_classes=3, depth=10, widen_factor=1)
    assert n_params(tiny_model) == wrn_count(10, 1, 3) and len(enumerate_blocks(tiny_model)) == 3


def test_wrn_loads_a_robustbench_file_and_registers_in_a_fresh_process(tmp_path):
    import json
    import subprocess
    import sys

    src = timm.create_model("wrn28_10_cifar", depth=10, widen_factor=2).eval()
    # RobustBench's checkpoint layout: {"state_dict": {"module.<name>": ...}}
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()}}, tmp_path / "Standard.pt")
    ck = fetch("wrn28_10_cifar", tmp_path / "wrn.safetensors", file=tmp_path / "Standard.pt",
               depth=10, widen_factor=2)
    assert ck.num_classes == 10 and ck.image_size == 32 and ck.mean == (0.0, 0.0, 0.0)
    model, _ = build_model(tmp_path / "wrn.safetensors", 10, keep_head=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), src(x))
    out = subprocess.run([sys.executable, "-m", "subtune", "blocks", "--arch", "wrn28_10_cifar",
                          "--model-kwargs", json.dumps({"depth": 16, "widen_factor": 1})],
                         capture_output=True, text=True, check=True).stdout
    assert "block3.layer.1" in out and "block3.layer.2" not in out


# ------------------------------------------------------------------ head: keep
def test_keep_head_gives_the_source_logits_and_is_refused_on_another_label_space(tmp_path):
    src, _ = tiny("resnet", num_classes=4, seed=3)
    ck = Checkpoint(arch="resnet18", num_classes=4, image_size=32, model_kwargs={"channels": [8, 16, 32, 64]},
                    classes=["a", "b", "c", "d"], origin={"kind": "pretrained", "source": "src"})
    save_checkpoint(tmp_path / "c.safetensors", src, ck)
    assert load_checkpoint(tmp_path / "c.safetensors")[0].classes == ["a", "b", "c", "d"]
    x = torch.randn(2, 3, 32, 32)
    kept, _ = build_model(tmp_path / "c.safetensors", 4, seed=9, keep_head=True, classes=["a", "b", "c", "d"])
    new, _ = build_model(tmp_path / "c.safetensors", 4, seed=9)
    with torch.no_grad():
        assert torch.equal(kept.eval()(x), src.eval()(x))
        assert not torch.equal(new.eval()(x), src(x))
    with pytest.raises(SubtuneError, match=r"targets.t2.head: keep: .* 4 classes, the target 5") as err:
        build_model(tmp_path / "c.safetensors", 5, keep_head=True, target="t2")
    assert "\n" not in str(err.value)
    with pytest.raises(SubtuneError, match=r"class 2 is 'c' \(src\), the target's 'x'"):
        build_model(tmp_path / "c.safetensors", 4, keep_head=True, classes=["a", "b", "x", "d"])
    # class names unknown on one side (a hub or file checkpoint): the count decides
    check_keep_head(dataclasses_replace(ck, classes=None), 4, ["p", "q", "r", "s"])


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)
