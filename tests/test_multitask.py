"""Multi-task inference: one backbone serving several SubTuning results equals each task's separate model.

Float32 on CPU, eval mode. Stacking branches along the batch dimension may
change a kernel's summation order, so logits are compared to within
``ATOL``/``RTOL`` (observed differences are 0 or ~1e-7).
"""

import copy

import pytest
import timm
import torch

from subtune import SubtuneError
from subtune.models.blocks import block_names
from subtune.models.checkpoint import Checkpoint, save_checkpoint
from subtune.multitask import TRUNK, MultiTaskModel, TaskResult, load_task

ATOL, RTOL = 1e-5, 1e-5


def make_base(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = {"img_size": 32} if arch.startswith("vit") else {}
    return timm.create_model(arch, pretrained=False, num_classes=10, **kw).eval()


def tune(base: torch.nn.Module, blocks: list[str], num_classes: int, seed: int) -> torch.nn.Module:
    """A stand-in for a SubTuning result: ``blocks`` (and their BatchNorm statistics) perturbed, a new head."""
    g = torch.Generator().manual_seed(seed)
    m = copy.deepcopy(base)
    with torch.no_grad():
        for b in blocks:
            for name, t in m.get_submodule(b).state_dict().items():
                if t.is_floating_point():
                    noise = torch.randn(t.shape, generator=g) * 0.1 * (t.std() if t.numel() > 1 else 1)
                    t.add_(noise.abs() if "running_var" in name else noise)
    m.reset_classifier(num_classes)
    with torch.no_grad():
        for p in m.get_classifier().parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return m.eval()


def images(arch: str, n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32 if arch.startswith("vit") else 64, 32 if arch.startswith("vit") else 64,
                       generator=torch.Generator().manual_seed(1))


CASES = {
    "resnet18": [
        [["layer2.1"]],
        [["layer1.1", "layer3.0", "layer4.1"], ["layer3.0", "layer4.0"]],  # shared index 3.0, different weights
        [["layer1.0", "layer4.1"], ["layer2.0", "layer2.1"], []],  # a linear probe reads the trunk
    ],
    "vit_tiny_patch16_224": [
        [["blocks.5", "blocks.9"]],
        [["blocks.2", "blocks.7"], ["blocks.7"], ["blocks.0", "blocks.11"]],
    ],
}


@pytest.mark.parametrize("arch, sets", [(a, s) for a, ss in CASES.items() for s in ss])
def test_equals_separate_models(arch, sets):
    base = make_base(arch)
    tasks = [tune(base, bs, num_classes=5 + i, seed=10 + i) for i, bs in enumerate(sets)]
    x = images(arch)
    with torch.inference_mode():
        want = [m(x) for m in tasks]
        mt = MultiTaskModel.from_results(base, tasks)
        got = mt(x)
    assert list(got) == [f"task{i}" for i in range(len(sets))]
    assert mt.task_blocks == sets  # tuned blocks found by difference from the base
    for (name, g), w in zip(got.items(), want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, atol=ATOL, rtol=RTOL, msg=f"{arch} {name}")
    # the base stays shared (not copied) and frozen
    assert mt.base is base and not any(p.requires_grad for p in mt.parameters())


def test_shared_tuned_index_and_batching_schedule():
    base = make_base("resnet18")
    a = tune(base, ["layer3.0", "layer4.0"], 4, seed=1)
    b = tune(base, ["layer3.0"], 6, seed=2)
    c = tune(base, [], 3, seed=3)
    mt = MultiTaskModel.from_results(base, {"a": a, "b": b, "c": c})
    names = block_names(base)
    step = dict(zip(names, mt.plan))
    assert step["layer2.1"].frozen == (TRUNK,) and step["layer2.1"].tuned == ()
    # both tasks leave the trunk at layer3.0 through their own copies; the trunk goes on for c
    assert step["layer3.0"].frozen == (TRUNK,) and step["layer3.0"].tuned == ((0, TRUNK), (1, TRUNK))
    # after that, b and the trunk share the frozen block (stacked); a tunes layer4.0
    assert step["layer3.1"].frozen == (TRUNK, 0, 1)
    assert step["layer4.0"].frozen == (TRUNK, 1) and step["layer4.0"].tuned == ((0, 0),)
    assert not torch.equal(mt.tuned[0]["4"].conv1.weight, mt.tuned[1]["4"].conv1.weight)
    x = images("resnet18", 2)
    with torch.inference_mode():
        got = mt(x)
        for name, m in zip("abc", (a, b, c)):
            torch.testing.assert_close(got[name], m(x), atol=ATOL, rtol=RTOL)
    assert "layer3.1: frozen x3 [trunk+a+b]" in mt.describe()


def test_partial_state_dicts_and_explicit_blocks():
    """(blocks, state of the tuned blocks + head) is enough; a separate model rebuilt from it matches."""
    base = make_base("resnet18")
    full = tune(base, ["layer1.0", "layer3.1"], 7, seed=4)
    sd = full.state_dict()
    part = {k: v for k, v in sd.items() if k.startswith(("layer1.0.", "layer3.1.", "fc."))}
    r = TaskResult(part, ["layer3.1", "layer1.0"], name="t")
    x = images("resnet18", 2)
    with torch.inference_mode():
        mt = MultiTaskModel.from_results(base, [r, (["layer1.0", "layer3.1"], full)])
        got = mt(x)
        want = full(x)
        torch.testing.assert_close(got["t"], want, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(got["task1"], want, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(r.model(base)(x), want, atol=0, rtol=0)
    assert mt.task_blocks[0] == ["layer1.0", "layer3.1"]  # network order


def test_rejects_foreign_or_incomplete_results():
    base = make_base("resnet18")
    t = tune(base, ["layer2.0"], 3, seed=5)
    with pytest.raises(SubtuneError, match="layer2.0.*not among its tuned blocks"):
        MultiTaskModel.from_results(base, [(["layer3.0"], t)])
    with pytest.raises(SubtuneError, match="not a block"):
        MultiTaskModel.from_results(base, [(["layer9.0"], t)])
    with pytest.raises(SubtuneError, match="lacks"):
        MultiTaskModel.from_results(base, [(["layer2.0"], {"fc.weight": t.fc.weight, "fc.bias": t.fc.bias})])
    with pytest.raises(SubtuneError, match="no head"):
        MultiTaskModel.from_results(base, [{k: v for k, v in t.state_dict().items() if not k.startswith("fc.")}])
    mt = MultiTaskModel.from_results(base, [t])
    with pytest.raises(SubtuneError, match="inference-only"):
        mt.train()
    assert mt.eval() is mt


def test_from_saved_training_outputs(tmp_path):
    """What ``subtune train --save-model`` writes (the whole merged model + metrics JSON) loads back."""
    import json

    base = make_base("resnet18")
    save_checkpoint(tmp_path / "backbone.safetensors", base, Checkpoint("resnet18", 10, image_size=64))
    tasks = []
    for i, bs in enumerate((["layer2.1", "layer4.0"], ["layer4.0"])):
        m = tune(base, bs, 4 + i, seed=20 + i)
        save_checkpoint(tmp_path / f"m{i}.safetensors", m, Checkpoint("resnet18", 4 + i, image_size=64))
        (tmp_path / f"run{i}.json").write_text(json.dumps(
            {"method": "subtuning", "method_params": {"blocks": bs}, "target": f"target{i}"}))
        tasks.append(m)
    mt = MultiTaskModel.from_checkpoints(
        tmp_path / "backbone.safetensors",
        [(tmp_path / "m0.safetensors", tmp_path / "run0.json"), tmp_path / "m1.safetensors"],
    )
    assert mt.task_names == ["target0", "m1"] and mt.task_blocks == [["layer2.1", "layer4.0"], ["layer4.0"]]
    x = images("resnet18", 2)
    with torch.inference_mode():
        got = mt(x)
        for name, m in zip(mt.task_names, tasks):
            torch.testing.assert_close(got[name], m(x), atol=ATOL, rtol=RTOL)
    assert load_task(tmp_path / "m1.safetensors").blocks is None


# ------------------------------------------------------------------ every registered family
from subtune.models.blocks import families  # noqa: E402
from subtune.models.checkpoint import create  # noqa: E402


@pytest.mark.parametrize("family", [f.name for f in families()])
def test_every_family_equals_separate_models(family):
    """The family's tiny instance (a new family is covered without being listed): two tasks with
    different tuned sets, one sharing a block index, and a linear probe."""
    arch, kw, size = next(f for f in families() if f.name == family).tiny
    torch.manual_seed(0)
    base = create(arch, 10, **kw).eval()
    names = block_names(base)
    sets = [[names[1], names[-1]], [names[-1]], []]
    tasks = [tune(base, bs, num_classes=4 + i, seed=30 + i) for i, bs in enumerate(sets)]
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        mt = MultiTaskModel.from_results(base, tasks)
        got = mt(x)
        for (name, g), m in zip(got.items(), tasks):
            torch.testing.assert_close(g, m(x), atol=ATOL, rtol=RTOL, msg=f"{family} {name}")
    assert mt.task_blocks == sets
