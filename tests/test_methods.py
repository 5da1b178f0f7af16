"""The fine-tuning methods beyond LP/FT/Surgical/SubTuning: BitFit, LP-FT, LoRA (DoRA, PiSSA), SSF, SAN,
SubTuning+LoRA, Multi-LoRA.

Properties, for every method: only the parameters it names change in a short
``fit`` (every other parameter and every BatchNorm buffer of frozen modules is
bit-identical); exact trainable-parameter counts for timm resnet18 and
vit_tiny_patch16_224 (10 classes), computed from the architectures
(tests/helpers/methods.py);
merging into a plain timm model (strict load) gives the adapted model's
outputs (float32, eval mode, atol = rtol = 1e-5); bad names and parameters
raise SubtuneError naming them.
"""

import json

import pytest
import timm
import torch

from subtune import SubtuneError
from subtune.cli import main
from subtune.config import _check_registries
from subtune.methods import REGISTRY, fit_phases, get_method
from subtune.methods.multilora import MultiLoRAModel, Task, pack, packed_forward
from subtune.methods.multilora_compare import compare
from subtune.train import Preprocess, TrainConfig, fit

from helpers.methods import D, DEPTH, NC, changed, expected_resnet, expected_vit, resnet18_layout, small, snapshot, toy

CFG = TrainConfig(epochs=1, lr=1e-2, batch_size=16)
PRE = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)
ATOL = RTOL = 1e-5

KINDS = ("lora_A", "lora_B", "lora_E", "lora_magnitude_vector", "modules_to_save", "ssf_scale", "ssf_shift",
         "san_scale")


def kind(name):
    """What a parameter is, for 'every kind the method names moved'."""
    for k in KINDS:
        if k in name:
            return k
    if name.split(".")[0] in ("fc", "head"):
        return "head"
    return name.rsplit(".", 1)[-1]  # weight / bias (BitFit biases, SAN's norm affine)


def block_of(family):
    return {"resnet": ["layer2.1", "layer4.0"], "vit": ["blocks.1"]}[family]


CASES = [
    (f, name, params)
    for f in ("resnet", "vit")
    for name, params in [
        ("bitfit", {}), ("lora", {"rank": 2}), ("lora", {"rank": 2, "variant": "dora"}),
        *([("lora", {"rank": 2, "variant": "pissa"})] if f == "vit" else []),
        ("ssf", {}), ("san", {}), ("subtuning_lora", {"rank": 2, "blocks": block_of(f)}),
        ("adalora", {"init_r": 4, "target_r": 2}),
    ]
]


def case_id(c):
    return f"{c[0]}-{c[1]}-{c[2].get('variant', '')}".rstrip("-")


# ------------------------------------------------------------------ what trains
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_only_the_named_parameters_change(case):
    family, name, params = case
    method = get_method(name, **params)
    model = method.wrap(small(family))
    t = method.trainable(model)
    before = snapshot(model)  # after wrap: PiSSA rewrites the frozen weights as residuals there, by design
    fit(model, t, PRE, toy(family), {"val": toy(family, 8, 1)}, CFG, progress=False)
    after = snapshot(model)
    diff = changed(before, after)
    assert diff and diff <= set(t.names)
    # every kind of parameter the method names moved (the head, LoRA A/B, scales, shifts, biases, norms)
    assert {kind(n) for n in diff} == {kind(n) for n in t.names}
    # frozen modules stayed in eval mode: no BatchNorm statistic moved
    buffers = [n for n, _ in model.named_buffers() if n in before]
    assert all(torch.equal(before[b], after[b]) for b in buffers)
    if family == "resnet":
        assert any("running_mean" in b for b in buffers)


def test_lpft_trains_the_head_then_everything():
    method = get_method("lpft", lp_epochs=1, lp_lr=0.05)
    model = method.wrap(small("resnet"))
    (lp, lp_over), (ft, ft_over) = method.phases(model)
    assert lp_over == {"lr": 0.05, "epochs": 1} and ft_over == {}
    before = snapshot(model)
    fit(model, lp, PRE, toy("resnet"), {}, TrainConfig.from_dict({**CFG.to_dict(), **lp_over}), progress=False)
    mid = snapshot(model)
    assert changed(before, mid) == {"fc.weight", "fc.bias"}  # phase 1: the head only, no BN statistic
    fit(model, ft, PRE, toy("resnet"), {}, CFG, progress=False)
    diff = changed(mid, snapshot(model))
    assert "conv1.weight" in diff and "layer1.0.bn1.running_mean" in diff and "fc.weight" in diff

    # the phases through fit_phases: metrics of the last phase, history concatenated, both settings recorded
    method = get_method("lpft", lp_epochs=1, lp_lr=0.05)
    model = method.wrap(small("resnet"))
    cfg = TrainConfig(epochs=2, lr=1e-3, batch_size=16)
    m = fit_phases(model, method.phases(model), PRE, toy("resnet"), {"val": toy("resnet", 8, 1)}, cfg,
                   final_evals={"test": toy("resnet", 8, 2)}, progress=False)
    assert [r["phase"] for r in m["history"]] == [1, 2, 2] and [r["epoch"] for r in m["history"]] == [1, 2, 3]
    assert [p["train"]["lr"] for p in m["phases"]] == [0.05, 1e-3]
    assert [p["train"]["epochs"] for p in m["phases"]] == [1, 2] and m["epochs"] == 3
    assert m["trainable_params"] == sum(p.numel() for p in model.parameters())
    assert m["phases"][0]["trainable_params"] == 64 * 3 + 3
    assert "test_acc" in m and "test_acc" in m["phases"][1] and "test_acc" not in m["phases"][0]
    assert m["val_acc"] == m["phases"][1]["val_acc"]
    # lp_epochs null: the LP phase takes the training config's epochs
    assert get_method("lpft").phases(small("resnet"))[0][1] == {"lr": 0.01}


# ------------------------------------------------------------------ exact counts
COUNT_CASES = [
    ("resnet18", "bitfit", {}), ("resnet18", "lora", {}), ("resnet18", "lora", {"rank": 4, "variant": "dora"}),
    ("resnet18", "ssf", {}), ("resnet18", "san", {}), ("resnet18", "lpft", {}),
    ("resnet18", "subtuning_lora", {"rank": 4, "blocks": ["layer1.1", "layer3.0"]}),
    ("vit_tiny_patch16_224", "bitfit", {}), ("vit_tiny_patch16_224", "lora", {}),
    ("vit_tiny_patch16_224", "lora", {"rank": 4, "variant": "dora"}),
    ("vit_tiny_patch16_224", "lora", {"rank": 4, "variant": "pissa"}),
    ("vit_tiny_patch16_224", "ssf", {}), ("vit_tiny_patch16_224", "san", {}), ("vit_tiny_patch16_224", "lpft", {}),
    ("vit_tiny_patch16_224", "subtuning_lora", {"rank": 4, "blocks": ["blocks.0", "blocks.11"]}),
    ("resnet18", "adalora", {}), ("vit_tiny_patch16_224", "adalora", {"init_r": 6, "target_r": 3}),
    ("resnet18", "siamese", {"blocks": ["layer1.1", "layer3.0"]}),
    ("vit_tiny_patch16_224", "siamese", {"blocks": ["blocks.3", "blocks.11"]}),
]


@pytest.mark.parametrize("arch,name,params", COUNT_CASES,
                         ids=[f"{a.split('_')[0]}-{n}-{p.get('variant', '')}" for a, n, p in COUNT_CASES])
def test_exact_trainable_counts(arch, name, params):
    method = get_method(name, **params)
    model = method.wrap(timm.create_model(arch, num_classes=NC))
    got = max(t.num_params for t, _ in method.phases(model))
    expected = expected_resnet(name, params) if arch == "resnet18" else expected_vit(name, params)
    assert got == expected


# ------------------------------------------------------------------ re-parameterisation
MERGE_CASES = [c for c in CASES] + [("resnet", "lpft", {})]


@pytest.mark.parametrize("case", MERGE_CASES, ids=case_id)
def test_merged_plain_model_gives_the_same_outputs(case):
    family, name, params = case
    method = get_method(name, **params)
    model = method.wrap(small(family))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move every trained parameter away from its initialisation (LoRA B from zero)
        for _, p in method.trainable(model).params:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.eval()
    x = PRE(toy(family, 6, 3)[0])
    plain = small(family, seed=5)  # an unmodified timm model (other weights)
    plain.load_state_dict(method.merge(model), strict=True)
    plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=ATOL, rtol=RTOL)
    # merging is not a no-op: the merged model differs from the original backbone
    with torch.no_grad():
        assert not torch.allclose(plain(x), small(family).eval()(x), atol=1e-3)


def test_merge_formulas_ssf_on_batchnorm_and_san():
    ssf = get_method("ssf", seed=3)
    m = ssf.wrap(small("resnet"))
    bn = m.layer1[0].bn1
    merged = ssf.merge(m)
    torch.testing.assert_close(merged["layer1.0.bn1.weight"], bn.ssf_scale * bn.weight)
    torch.testing.assert_close(merged["layer1.0.bn1.bias"], bn.ssf_scale * bn.bias + bn.ssf_shift)
    assert torch.equal(merged["layer1.0.bn1.running_var"], bn.running_var)
    # SSF init: gamma ~ N(1, 0.02), beta ~ N(0, 0.02); a given seed repeats
    scales = torch.cat([p for n, p in m.named_parameters() if n.endswith("ssf_scale")]).detach()
    assert abs(scales.mean().item() - 1) < 0.01 and 0.01 < scales.std().item() < 0.03
    assert torch.equal(get_method("ssf", seed=3).wrap(small("resnet")).layer1[0].bn1.ssf_scale, bn.ssf_scale)

    san = get_method("san")
    v = san.wrap(small("vit"))
    assert all(torch.equal(p, torch.ones_like(p)) for n, p in v.named_parameters() if n.endswith("san_scale"))
    with torch.no_grad():
        for n, p in v.named_parameters():
            if n.endswith("san_scale"):
                p.uniform_(0.5, 1.5)
    qkv, pe, fc1, fc2 = v.blocks[1].attn.qkv, v.patch_embed, v.blocks[1].mlp.fc1, v.blocks[1].mlp.fc2
    merged = san.merge(v)
    # W' = diag(s_l) W diag(s_p), b' = s_l * b; the patch-embedding scale feeds every block's qkv
    torch.testing.assert_close(merged["blocks.1.attn.qkv.weight"],
                               qkv.san_scale[:, None] * qkv.weight * pe.san_scale[None, :])
    torch.testing.assert_close(merged["blocks.1.attn.qkv.bias"], qkv.san_scale * qkv.bias)
    torch.testing.assert_close(merged["blocks.1.mlp.fc2.weight"],
                               fc2.san_scale[:, None] * fc2.weight * fc1.san_scale[None, :])
    r = get_method("san")
    rm = r.wrap(small("resnet"))
    c1, c2 = rm.layer2[0].conv1, rm.layer2[0].conv2  # ResNet: conv1's scale feeds conv2's input channels
    with torch.no_grad():
        c1.san_scale.uniform_(0.5, 1.5)
        c2.san_scale.uniform_(0.5, 1.5)
    torch.testing.assert_close(r.merge(rm)["layer2.0.conv2.weight"],
                               c2.san_scale.view(-1, 1, 1, 1) * c2.weight * c1.san_scale.view(1, -1, 1, 1))


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_unknown_parameter_is_named(name):
    with pytest.raises(SubtuneError, match=f"method '{name}' takes no parameter 'bogus'"):
        get_method(name, bogus=1)
    with pytest.raises(SubtuneError, match=f"method '{name}' takes no parameter 'rnk'"):  # config validation
        _check_registries({"methods": {name: {"params": {"rnk": 4}}}, "train": {}})


def test_bad_names_and_values():
    with pytest.raises(SubtuneError, match="unknown method 'dora'"):
        get_method("dora")
    with pytest.raises(SubtuneError, match="unknown method methods.loraa"):
        _check_registries({"methods": {"loraa": {}}, "train": {}})
    for kw, key in [({"variant": "qlora"}, "variant"), ({"rank": 0}, "rank"), ({"alpha": -1}, "alpha"),
                    ({"dropout": 1.5}, "dropout"), ({"target": "qkv"}, "target")]:
        with pytest.raises(SubtuneError, match=f"lora: {key}"):
            get_method("lora", **kw)
    with pytest.raises(SubtuneError, match="lpft: lp_lr"):
        get_method("lpft", lp_lr=0)
    with pytest.raises(SubtuneError, match="lpft: lp_epochs"):
        get_method("lpft", lp_epochs=1.5)
    with pytest.raises(SubtuneError, match="ssf: seed"):
        get_method("ssf", seed="a")
    # peft has no PiSSA for convolutions: refused before any work, naming the variant
    with pytest.raises(SubtuneError, match="variant 'pissa' is not supported by peft for Conv2d"):
        get_method("lora", variant="pissa").wrap(small("resnet"))
    with pytest.raises(SubtuneError, match="target 'qkvv'"):
        get_method("lora", target=["qkvv"]).wrap(small("vit"))
    with pytest.raises(SubtuneError, match="not a block"):
        get_method("subtuning_lora", blocks=["layer9.0"]).wrap(small("resnet"))
    for name in ("lora", "ssf", "san"):
        with pytest.raises(SubtuneError, match="call wrap"):
            get_method(name).trainable(small("vit"))


def test_the_workflow_config_accepts_the_methods_and_names_bad_parameters():
    from pathlib import Path

    import yaml

    from subtune.config import validate

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["methods"].update({"bitfit": {}, "lpft": {"params": {"lp_epochs": 2}, "train": {"lr": 1e-4}}, "ssf": {},
                           "lora": {"params": {"rank": 4, "variant": "dora"}}, "san": {},
                           "subtuning_lora": {"params": {"rank": 4}}})
    validate(json.loads(json.dumps(cfg)), root / "schemas/config.schema.yaml")
    cfg["methods"]["san"]["params"] = {"scale_init": 1}
    with pytest.raises(SubtuneError, match="method 'san' takes no parameter 'scale_init'"):
        validate(cfg, root / "schemas/config.schema.yaml")
    cfg["methods"]["san"]["params"] = {}
    cfg["methods"]["siamese"] = {}
    cfg["targets"]["fmnist10-c"]["head"] = "keep"  # Siamese SubTuning needs a new head: refused at the config check
    with pytest.raises(SubtuneError, match="targets.fmnist10-c.head is keep but method 'siamese' supports head new"):
        validate(json.loads(json.dumps(cfg)), root / "schemas/config.schema.yaml")


def test_dora_on_convolutions_survives_channels_last():
    """fit makes the model channels_last on CUDA; peft's conv DoRA would fail on its non-contiguous weights."""
    method = get_method("lora", rank=2, variant="dora")
    model = method.wrap(small("resnet"))
    x = PRE(toy("resnet", 4)[0])
    model.eval()
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)), ref, atol=ATOL, rtol=RTOL)


# ------------------------------------------------------------------ SubTuning + LoRA
def test_subtuning_lora_adapts_only_the_selected_blocks():
    from peft.tuners.lora import LoraLayer

    assert REGISTRY["subtuning_lora"].needs == "selection"
    method = get_method("subtuning_lora", blocks=["layer2.1", "layer4.0"], rank=2)
    model = method.wrap(small("resnet"))
    t = method.trainable(model)
    assert t.notes["targets"] == ["layer2.1.conv1", "layer2.1.conv2", "layer4.0.conv1", "layer4.0.conv2"]
    lora_layers = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    assert [n.removeprefix("base_model.model.") for n in lora_layers] == t.notes["targets"]
    before = snapshot(model)
    fit(model, t, PRE, toy("resnet"), {}, CFG, progress=False)
    diff = changed(before, snapshot(model))
    inside = ("base_model.model.layer2.1.", "base_model.model.layer4.0.", "base_model.model.fc.modules_to_save.")
    assert diff and all(k.startswith(inside) and (".lora_" in k or "modules_to_save" in k) for k in diff)

    vit = get_method("subtuning_lora", blocks=["blocks.1"], rank=2)
    assert vit.trainable(vit.wrap(small("vit"))).notes["targets"] == [
        "blocks.1.attn.qkv", "blocks.1.attn.proj", "blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]
    # nothing selected: the linear probe (no peft wrapping)
    lp = get_method("subtuning_lora", blocks=[])
    plain = small("resnet")
    assert lp.wrap(plain) is plain and lp.trainable(plain).names == ["fc.weight", "fc.bias"]


# ------------------------------------------------------------------ AdaLoRA
def test_adalora_penalty_is_pefts_and_ranks_end_at_the_target_budget():
    from types import SimpleNamespace

    from peft.tuners.adalora import AdaLoraLayer

    from subtune.methods.adalora import orth_regularizer

    method = get_method("adalora", init_r=4, target_r=2, tinit=0.1, tfinal=0.3, deltaT=2, orth_reg_weight=0.5)
    model = method.wrap(small("vit"))
    t = method.trainable(model)
    layers = [m for m in model.modules() if isinstance(m, AdaLoraLayer)]
    assert len(layers) == 8 and t.notes["targets"][:4] == [
        "blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    assert all(m.scaling["default"] == 8 and m.ranknum["default"].item() == 4 for m in layers)  # alpha, r0
    assert not any("ranknum" in n for n in t.names)  # peft's ranknum is a frozen parameter
    # the penalty is the one peft's AdaLoraModel.forward adds to a transformers model's loss
    inner = model.base_model.model
    fwd = inner.forward
    inner.forward = lambda *a, **k: SimpleNamespace(loss=torch.zeros(()))
    try:
        peft_term = model.base_model.forward().loss
    finally:
        inner.forward = fwd
    torch.testing.assert_close(peft_term, 0.5 * orth_regularizer(inner), atol=0, rtol=0)
    torch.testing.assert_close(t.hooks.extra_loss(), peft_term, atol=0, rtol=0)
    # 32 images, batch 4, 2 epochs: T = 16 steps, t_i = 1, t_f = 4; the final pattern is fixed at step 12
    cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=4)
    before = snapshot(model)
    fit(model, t, PRE, toy("vit"), {}, cfg, progress=False)
    c = model.peft_config["default"]
    assert (c.total_step, c.tinit, c.tfinal) == (16, 1, 4)
    live = sum(int((m.lora_E["default"] != 0).sum()) for m in layers)
    assert live == 2 * len(layers)  # the target budget: target_r per layer on average
    assert sum(sum(v) for v in c.rank_pattern.values()) == live
    diff = changed(before, snapshot(model))
    assert diff <= set(t.names) and not any(".base_layer." in k for k in diff)
    # merged into a plain timm model with the pruned ranks
    plain = small("vit", seed=5)
    plain.load_state_dict(method.merge(model), strict=True)
    x = PRE(toy("vit", 4, 3)[0])
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), model.eval()(x), atol=ATOL, rtol=RTOL)


def test_step_hooks_that_do_nothing_change_nothing():
    """The loop with a no-op StepHooks is the plain loop, bit for bit (every method without hooks is unchanged)."""
    from subtune.trainable import StepHooks, Trainable

    runs = []
    for hooks in (None, StepHooks()):
        method = get_method("lora", rank=2)
        model = method.wrap(small("resnet"))
        t = method.trainable(model)
        m = fit(model, Trainable(t.params, t.train_modules, t.notes, hooks), PRE, toy("resnet"),
                {"val": toy("resnet", 8, 1)}, CFG, progress=False)
        runs.append((m["history"], snapshot(model)))
    assert runs[0][0] == runs[1][0]
    assert not changed(runs[0][1], runs[1][1])


def test_adalora_errors():
    with pytest.raises(SubtuneError, match="adalora: target_r must be below init_r"):
        get_method("adalora", init_r=4, target_r=4)
    with pytest.raises(SubtuneError, match="adalora: tinit \\+ tfinal must be below 1"):
        get_method("adalora", tinit=0.5, tfinal=0.5)
    with pytest.raises(SubtuneError, match="adalora: deltaT"):
        get_method("adalora", deltaT=0)
    with pytest.raises(SubtuneError, match="call wrap"):
        get_method("adalora").trainable(small("vit"))
    model = small("resnet")
    model.layer1[0].conv2 = torch.nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False)
    with pytest.raises(SubtuneError, match="adalora: peft's AdaLoRA does not adapt grouped convolutions "
                                           "\\(layer1.0.conv2 has groups=2\\)"):
        get_method("adalora").wrap(model)
    # a peft without AdaLoRA for convolutions (before SVDConv2d) refuses ResNet's targets in one line
    from peft.tuners.adalora import layer

    svd_conv = layer.SVDConv2d
    del layer.SVDConv2d
    try:
        with pytest.raises(SubtuneError, match="adalora: peft .* has no AdaLoRA for Conv2d layers \\(layer1.0.conv1"):
            get_method("adalora").wrap(small("resnet"))
    finally:
        layer.SVDConv2d = svd_conv


# ------------------------------------------------------------------ Siamese SubTuning
@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_siamese_head_sees_subtuned_and_frozen_features_and_the_original_stays_bit_identical(family):
    blocks = block_of(family)
    method = get_method("siamese", blocks=list(reversed(blocks)))
    ref = small(family).eval()
    model = method.wrap(small(family))
    t = method.trainable(model)
    d = ref.num_features
    assert model.head.in_features == 2 * d and model.head.out_features == 3
    assert model.selected == blocks and t.notes["blocks"] == blocks  # network order
    assert t.num_params == sum(p.numel() for b in blocks for p in ref.get_submodule(b).parameters()) + 2 * d * 3 + 3
    # no frozen weight stored twice: the backbone (without its classifier), the copies and the head
    clf = sum(p.numel() for p in ref.get_submodule("fc" if family == "resnet" else "head").parameters())
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in ref.parameters()) - clf + t.num_params
    x = PRE(toy(family, 4, 3)[0])
    model.eval()
    with torch.no_grad():  # at the start both paths are the pretrained network's features
        f = ref.forward_head(ref.forward_features(x), pre_logits=True)
        f_sub, f_orig = model.features(x)
        torch.testing.assert_close(f_sub, f, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(f_orig, f, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(model(x), model.head(torch.cat([f_sub, f_orig], -1)), atol=0, rtol=0)
    before = snapshot(model)
    fit(model, t, PRE, toy(family), {"val": toy(family, 8, 1)}, CFG, progress=False)
    diff = changed(before, snapshot(model))
    # the original backbone (weights and BatchNorm statistics) bit-identical; the copies and the head moved
    assert diff and all(k.startswith(("tuned.", "head.")) for k in diff)
    assert {k.split(".")[0] for k in diff} == {"tuned", "head"}
    assert {k.split(".")[1] for k in diff if k.startswith("tuned.")} == {str(i) for i in range(len(blocks))}
    model.eval()
    with torch.no_grad():
        f_sub, f_orig = model.features(x)
        torch.testing.assert_close(f_orig, f, atol=ATOL, rtol=RTOL)  # the frozen path is the pretrained network
        assert not torch.allclose(f_sub, f, atol=1e-4)


def test_siamese_without_blocks_errors_and_cli(files, tmp_path):
    lp = get_method("siamese", blocks=[])
    model = lp.wrap(small("resnet"))
    assert lp.trainable(model).names == ["head.weight", "head.bias"] and len(model.tuned) == 0
    x = PRE(toy("resnet", 2, 3)[0])
    with torch.no_grad():
        f_sub, f_orig = model.eval().features(x)
    assert torch.equal(f_sub, f_orig)
    with pytest.raises(SubtuneError, match="siamese: 'layer9.0' is not a block"):
        get_method("siamese", blocks=["layer9.0"]).wrap(small("resnet"))
    with pytest.raises(SubtuneError, match="siamese: call wrap"):
        get_method("siamese").trainable(small("resnet"))
    with pytest.raises(SubtuneError, match="method 'siamese' supports head new only"):
        get_method("siamese", head="keep")
    assert REGISTRY["siamese"].needs == "selection" and not REGISTRY["siamese"].mergeable
    # the CLI: trains from a selection state; --save-model is refused before training
    state = tmp_path / "selected.json"
    state.write_text(json.dumps({"done": True, "selected": ["layer4.1"]}))
    common = ["--data", files / "t1.safetensors", "--manifest", files / "t1.json", "--checkpoint",
              files / "ckpt.safetensors", "--train", json.dumps({"epochs": 1, "batch_size": 16}),
              "--selection-state", state]
    assert main([str(a) for a in ["train", "--method", "siamese", *common, "--save-model", tmp_path / "m.st",
                                  "--out", tmp_path / "x.json"]]) == 2
    assert not (tmp_path / "x.json").exists()
    cli("train", "--method", "siamese", *common, "--out", tmp_path / "s.json")
    m = json.loads((tmp_path / "s.json").read_text())
    block = sum(p.numel() for p in small("resnet").layer4[1].parameters())
    assert m["notes"]["blocks"] == ["layer4.1"] and m["trainable_params"] == block + 2 * 64 * 3 + 3
    assert m["method_params"] == {"blocks": ["layer4.1"]} and "test_acc" in m


# ------------------------------------------------------------------ Multi-LoRA
def test_multilora_tasks_share_a_frozen_a_and_learn_only_their_own_b():
    model = MultiLoRAModel(small("resnet"), [3, 2], rank=2, seed=0)
    t = model.trainable()
    before = snapshot(model)
    x, y = toy("resnet")
    m = fit(model, t, PRE, (pack(x, 0), y), {}, CFG, progress=False, forward=packed_forward(model, PRE))
    after = snapshot(model)
    diff = changed(before, after)
    assert diff <= set(t.names)  # frozen backbone, its BN statistics and every A unchanged
    layers = model.layers()
    assert len(layers) == 16 and all(f"backbone.{n}.A" not in diff for n, _ in layers)
    assert all(torch.equal(layer.B[1], torch.zeros_like(layer.B[1])) for _, layer in layers)  # task 1: no data
    assert all(layer.B[0].abs().sum() > 0 for _, layer in layers)
    assert m["trainable_params"] == sum(2 * lay.m * 2 for _, lay in layers) + 64 * 5 + 5
    # the other task's head gets exactly zero gradient from task 0's samples
    for h in model.heads:
        h.weight.requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(packed_forward(model, PRE)(pack(x[:8], 0)), y[:8])
    loss.backward()
    assert torch.equal(model.heads[1].weight.grad, torch.zeros_like(model.heads[1].weight.grad))
    assert model.heads[0].weight.grad.abs().sum() > 0


def test_multilora_counts_trained_and_stored():
    k, r = 3, 4
    model = MultiLoRAModel(timm.create_model("vit_tiny_patch16_224", num_classes=NC), [10, 5, 7], rank=r)
    dims = [(D, 3 * D), (D, D), (D, 4 * D), (4 * D, D)] * DEPTH  # (d in, m out): qkv, proj, fc1, fc2
    heads = D * 22 + 22
    c = model.counts()
    assert c["multilora"]["adapter_trained"] == sum(k * m * r for _, m in dims)
    assert c["multilora"]["adapter_stored"] == sum(d * r + k * m * r for d, m in dims)
    assert c["separate_lora"]["adapter_trained"] == sum(k * (d * r + m * r) for d, m in dims)
    assert c["heads"] == heads and model.trainable().num_params == c["multilora"]["params_trained"]
    rn = MultiLoRAModel(timm.create_model("resnet18", num_classes=NC), [10, 10], rank=r)
    convs = [(cin * 9, cout) for n, cin, cout, ks in resnet18_layout()[0] if ks == 3 and n.startswith("layer")]
    assert rn.counts()["multilora"]["adapter_stored"] == sum(d * r + 2 * m * r for d, m in convs)


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_multilora_merges_per_task_into_plain_models(family):
    model = MultiLoRAModel(small(family), [3, 2], rank=2, seed=1)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for _, p in model.trainable().params:
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    model.eval()
    x = PRE(toy(family, 4, 3)[0])
    for t, c in enumerate([3, 2]):
        plain = small(family, num_classes=c, seed=7)
        plain.load_state_dict(model.merge_task(t), strict=True)
        with torch.no_grad():
            out = model(x, torch.full((4,), t))
            torch.testing.assert_close(plain.eval()(x), out[:, model.offsets[t]:model.offsets[t] + c],
                                       atol=ATOL, rtol=RTOL)
            assert torch.isinf(out).sum() == 4 * (5 - c)  # the other task's classes are masked


def test_multilora_against_separate_lora():
    tasks = [Task("a", 3, toy("resnet", 32, 0), toy("resnet", 8, 1), toy("resnet", 8, 2)),
             Task("b", 2, toy("resnet", 24, 3, 2), toy("resnet", 8, 4, 2), toy("resnet", 8, 5, 2))]
    out = compare(small("resnet"), tasks, PRE, CFG, rank=2, alpha=4)
    ml, sep = out["multilora"], out["separate_lora"]
    assert set(ml["per_task"]) == set(sep["per_task"]) == {"a", "b"}
    assert all(0 <= v["test_acc"] <= 1 for r in (ml, sep) for v in r["per_task"].values())
    assert ml["trainable_params"] == ml["params_trained"]  # what fit trained is what we count
    assert sep["params_trained"] == ml["separate_lora_expected"]["params_trained"]  # peft's counts match the formula
    assert ml["params_trained"] < sep["params_trained"] and ml["params_stored"] < sep["params_stored"]


# ------------------------------------------------------------------ the CLI
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from subtune.data.prepared import save_prepared
    from subtune.models.checkpoint import Checkpoint, save_checkpoint

    wd = tmp_path_factory.mktemp("methods")
    kwargs = {"channels": [8, 16, 32, 64], "zero_init_last": False}
    save_checkpoint(wd / "ckpt.safetensors", small("resnet"),
                    Checkpoint("resnet18", 3, 3, 16, kwargs, (0.5,) * 3, (0.25,) * 3, {"kind": "test"}))
    for name, k in (("t1", 3), ("t2", 2)):
        splits = {}
        for i, s in enumerate(("train", "val", "test")):
            splits[f"{s}_x"], splits[f"{s}_y"] = toy("resnet", 32 if s == "train" else 8, i, k)
        save_prepared(wd / f"{name}.safetensors", wd / f"{name}.json", splits, {
            "name": name, "classes": [str(c) for c in range(k)], "num_classes": k, "channels": 1,
            "image_size": 16, "splits": {"train": 32, "val": 8, "test": 8}, "seed": 0, "params": {}, "inputs": {}})
    return wd


def cli(*args):
    assert main([str(a) for a in args]) == 0


def test_cmd_train_runs_phases_wraps_and_saves_the_merged_model(files):
    common = ["--data", files / "t1.safetensors", "--manifest", files / "t1.json",
              "--checkpoint", files / "ckpt.safetensors", "--train", json.dumps({"epochs": 1, "batch_size": 16})]
    cli("train", "--method", "lpft", "--method-params", '{"lp_epochs": 2, "lp_lr": 0.05}', *common,
        "--out", files / "lpft.json")
    m = json.loads((files / "lpft.json").read_text())
    assert [p["train"]["lr"] for p in m["phases"]] == [0.05, 0.001] and len(m["history"]) == 3
    assert m["trainable_params"] == m["total_params"] and "test_acc" in m
    cli("train", "--method", "lora", "--method-params", '{"rank": 2, "variant": "dora"}', *common,
        "--save-model", files / "lora_model.safetensors", "--out", files / "lora.json")
    m = json.loads((files / "lora.json").read_text())
    assert m["trainable_params"] < m["total_params"] < m["adapted_params"]
    assert len(m["notes"]["targets"]) == 16
    from subtune.models.checkpoint import build_model

    build_model(files / "lora_model.safetensors", 3)  # the merged plain model loads strictly
    assert main(["train", "--method", "lora", "--method-params", '{"variant": "pissa"}', *map(str, common),
                 "--out", str(files / "x.json")]) == 2


def test_cmd_multilora(files):
    cli("multilora", "--task", "t1", files / "t1.safetensors", files / "t1.json",
        "--task", "t2", files / "t2.safetensors", files / "t2.json", "--checkpoint", files / "ckpt.safetensors",
        "--params", '{"rank": 2}', "--train", json.dumps({"epochs": 1, "batch_size": 16}), "--compare",
        "--grid", '{"lr": [0.01, 0.001]}', "--out", files / "ml.json")
    out = json.loads((files / "ml.json").read_text())
    assert out["tasks"] == ["t1", "t2"] and set(out["multilora"]["per_task"]) == {"t1", "t2"}
    assert out["multilora"]["params_stored"] < out["separate_lora"]["params_stored"]
    assert out["grid"] == {"lr": [0.01, 0.001]} and len(out["multilora"]["grid_results"]) == 2
    assert out["multilora"]["optimizer_steps"] == out["separate_lora"]["optimizer_steps"] == {"t1": 2, "t2": 2}


# ------------------------------------------------------------------ every family x every method
from subtune.methods import surgical_groups  # noqa: E402
from subtune.models.blocks import block_names, families, head_names, module_params  # noqa: E402
from subtune.models.checkpoint import create  # noqa: E402

FAMILIES = [f.name for f in families()]


def tiny(name, num_classes=3, seed=0):
    """The family's registered tiny instance (a new family is tested here without being listed)."""
    arch, kw, size = next(f for f in families() if f.name == name).tiny
    torch.manual_seed(seed)
    if arch == "resnet18":
        kw = {**kw, "zero_init_last": False}
    return create(arch, num_classes, **kw), size


def tiny_data(size, n=16, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, classes, (n,), generator=g))


ONE_STEP = TrainConfig(epochs=1, lr=1e-2, batch_size=16)


def contract_params(name, model):
    """A registered method's parameters in the contract tests: what it needs from earlier stages (two selected
    blocks; Surgical's group 1), and quicker values of a few parameters where it has them; otherwise its defaults."""
    blocks = block_names(model)
    cls = REGISTRY[name]
    needs = {"selection": {"blocks": [blocks[1], blocks[-1]]}, "surgical": {"group": 1}}.get(cls.needs, {})
    quick = {k: v for k, v in {"rank": 2, "lp_epochs": 1}.items() if k in cls.parameters}
    return {**needs, **quick}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_trains_on_every_family(family, name):
    """One step of every registered method on every registered family: only what it names changes, and
    the merged plain model gives the adapted model's outputs."""
    model, size = tiny(family)
    method = get_method(name, **contract_params(name, model))
    model = method.wrap(model)
    names = set().union(*(t.names for t, _ in method.phases(model)))
    before = snapshot(model)
    fit_phases(model, method.phases(model), PRE, tiny_data(size), {}, ONE_STEP, progress=False)
    diff = changed(before, snapshot(model))
    assert diff and {k for k in diff if "running_" not in k and "num_batches" not in k} <= names
    if not method.mergeable:  # two feature paths (Siamese SubTuning): refused, naming the method
        with pytest.raises(SubtuneError, match=f"{name}: .*cannot be merged into a plain timm model"):
            method.merge(model)
        return
    x = PRE(tiny_data(size, 4, 5)[0])
    plain, _ = tiny(family, seed=5)
    plain.load_state_dict(method.merge(model), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), model.eval()(x), atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_surgical_group_of_every_family_trains(family):
    """Each group (names may be parameters: ViT cls_token/pos_embed) trains exactly its parameters + the head,
    through the method and through the scorer (`score --sets surgical`)."""
    from subtune.scoring import CandidateScorer
    from subtune.select import SelectionConfig

    model, size = tiny(family)
    groups = surgical_groups(model)
    heads = head_names(model)
    assert len(groups) >= 3 and all(groups)
    blocks = [b for g in groups for b in g if b in block_names(model)]
    assert blocks == block_names(model)  # every block in exactly one group, in order
    for g, names in enumerate(groups):
        m, _ = tiny(family)
        t = get_method("surgical", group=g).trainable(m)
        want = module_params(m, names + heads)
        assert [n for n, _ in t.params] == [n for n, _ in want]
        assert t.num_params == sum(p.numel() for _, p in want) > sum(p.numel() for _, p in module_params(m, heads))
        before = snapshot(m)
        fit(m, t, PRE, tiny_data(size), {}, ONE_STEP, progress=False)
        diff = changed(before, snapshot(m))
        assert diff and all(any(k == n or k.startswith(n + ".") for n in names + heads) for k in diff)
    d = {k: v for k, v in zip(("train_x", "train_y", "val_x", "val_y"), (*tiny_data(size), *tiny_data(size, 8, 1)))}
    ck = _save_tiny(family)
    r = CandidateScorer(ck, d, 3, ONE_STEP, SelectionConfig(), fast=True).score_many([tuple(g) for g in groups])
    assert [x["trainable_params"] for x in r] == [
        sum(p.numel() for _, p in module_params(model, list(g) + heads)) for g in groups]


def _save_tiny(family, num_classes=3, classes=None):
    import tempfile
    from pathlib import Path

    from subtune.models.checkpoint import Checkpoint, save_checkpoint

    arch, kw, size = next(f for f in families() if f.name == family).tiny
    model, _ = tiny(family, num_classes)
    path = Path(tempfile.mkdtemp()) / f"{family}.safetensors"
    save_checkpoint(path, model, Checkpoint(arch, num_classes, 3, size, json.loads(json.dumps(kw)),
                                            (0.5,) * 3, (0.25,) * 3, {"kind": "test"}, classes))
    return str(path)


# ------------------------------------------------------------------ WideResNet-28-10: exact counts
def wrn_layout(n=4, k=10):
    """(name, in, out, kernel) of every convolution and every BatchNorm width of wrn28_10_cifar."""
    convs, bns, cin = [("conv1", 3, 16, 3)], [], 16
    for s, w in enumerate((16 * k, 32 * k, 64 * k)):
        for i in range(n):
            c, pre = (cin if i == 0 else w), f"block{s + 1}.layer.{i}"
            convs += [(f"{pre}.conv1", c, w, 3), (f"{pre}.conv2", w, w, 3)]
            bns += [c, w]
            if c != w:
                convs.append((f"{pre}.convShortcut", c, w, 1))
        cin = w
    return convs, bns + [64 * k]


@pytest.mark.parametrize("name,params", [("bitfit", {}), ("lora", {"rank": 4}), ("ssf", {}), ("san", {}),
                                         ("surgical", {"group": 0}), ("subtuning", {"blocks": ["block2.layer.3"]})])
def test_exact_trainable_counts_wrn28_10(name, params):
    convs, bns = wrn_layout()
    head = 640 * NC + NC
    lora = sum(4 * cin * 9 + cout * 4 for n, cin, cout, ks in convs if ks == 3 and n.startswith("block"))
    block = lambda pre: sum(cin * cout * ks * ks for n, cin, cout, ks in convs if n.startswith(pre + ".")) + sum(  # noqa
        2 * (cin if n.endswith("conv1") else cout) for n, cin, cout, ks in convs if n.startswith(pre + ".") and ks == 3)
    expected = {
        "bitfit": sum(bns) + head,
        "lora": lora + head,
        "ssf": 2 * sum(bns) + head,
        "san": sum(cout for _, _, cout, _ in convs) + 2 * sum(bns) + head,
        "surgical": 3 * 16 * 9 + sum(block(f"block1.layer.{i}") for i in range(4)) + head,
        "subtuning": block("block2.layer.3") + head,
    }[name]
    method = get_method(name, **params)
    model = method.wrap(timm.create_model("wrn28_10_cifar", num_classes=NC))
    assert method.trainable(model).num_params == expected


# ------------------------------------------------------------------ the authors' LoRA (SubTuning code)
AUTHORS_LORA = {"rank": 4, "alpha": 768, "target": ["qkv", "proj"], "train_modules": ["mlp", "norm1", "norm2"]}


def test_lora_with_the_authors_targets_scaling_and_fully_trained_modules():
    from peft.tuners.lora import LoraLayer

    r = 4
    method = get_method("lora", **AUTHORS_LORA)
    model = method.wrap(timm.create_model("vit_tiny_patch16_224", num_classes=NC))
    t = method.trainable(model)
    per_block = r * (D + 3 * D) + r * (D + D) + (D * 4 * D + 4 * D + 4 * D * D + D) + 4 * D
    assert t.num_params == DEPTH * per_block + D * NC + NC
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == 2 * DEPTH and all(m.scaling == {"default": 768 / r} for m in layers)  # alpha / r
    assert method.params["alpha"] / r == 192.0 and not model.peft_config["default"].use_rslora
    # SubTuning+LoRA: the same inside the selected blocks only
    sub = get_method("subtuning_lora", blocks=["blocks.1", "blocks.7"], **AUTHORS_LORA)
    sm = sub.wrap(timm.create_model("vit_tiny_patch16_224", num_classes=NC))
    assert sub.trainable(sm).num_params == 2 * per_block + D * NC + NC
    assert sub.trainable(sm).notes["train_modules"] == [
        "blocks.1.mlp", "blocks.1.norm1", "blocks.1.norm2", "blocks.7.mlp", "blocks.7.norm1", "blocks.7.norm2"]


def test_lora_train_modules_train_and_the_rest_stays_bit_identical():
    method = get_method("subtuning_lora", blocks=["blocks.1"], **{**AUTHORS_LORA, "rank": 2})
    model = method.wrap(small("vit"))
    t = method.trainable(model)
    before = snapshot(model)
    fit(model, t, PRE, toy("vit"), {}, CFG, progress=False)
    diff = changed(before, snapshot(model))
    assert diff <= set(t.names)
    p = "base_model.model.blocks.1."
    assert {p + "mlp.fc1.weight", p + "norm2.weight", p + "attn.qkv.lora_B.default.weight"} <= diff
    assert not any(k.startswith("base_model.model.blocks.0.") or ".base_layer." in k for k in diff)
    plain = small("vit", seed=5)
    plain.load_state_dict(method.merge(model), strict=True)
    x = PRE(toy("vit", 4, 3)[0])
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), model.eval()(x), atol=ATOL, rtol=RTOL)
    with pytest.raises(SubtuneError, match="train_modules entry 'attn' contains the adapted layer blocks.0.attn.qkv"):
        get_method("lora", target=["qkv"], train_modules=["attn"]).wrap(small("vit"))
    with pytest.raises(SubtuneError, match="train_modules entry 'mlpp' is not a submodule of block blocks.0"):
        get_method("lora", train_modules=["mlpp"]).wrap(small("vit"))
    with pytest.raises(SubtuneError, match="lora: train_modules must be a list"):
        get_method("lora", train_modules="mlp")


# ------------------------------------------------------------------ head: keep
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_keep_head_trains_the_head_only_in_methods_that_train_it_themselves(name):
    params, head_trains = contract_params(name, small("resnet")), REGISTRY[name].own_head
    if "keep" not in REGISTRY[name].heads:  # a method that needs its own head (Siamese SubTuning: 2d inputs)
        with pytest.raises(SubtuneError, match=f"method '{name}' supports head new only, not 'keep'"):
            get_method(name, head="keep", **params)
        return
    new, keep = get_method(name, **params), get_method(name, head="keep", **params)
    mn, mk = new.wrap(small("resnet")), keep.wrap(small("resnet"))
    tn = [n for t, _ in new.phases(mn) for n in t.names]
    tk = [n for t, _ in keep.phases(mk) for n in t.names]
    is_head = lambda n: n.removeprefix("base_model.model.").startswith("fc.")  # noqa: E731
    assert any(is_head(n) for n in tn)
    assert any(is_head(n) for n in tk) == head_trains
    assert [n for n in tn if not is_head(n)] == [n for n in tk if not is_head(n)]
    if not head_trains:  # the source head stays bit-identical through training
        before = snapshot(mk)
        fit_phases(mk, keep.phases(mk), PRE, toy("resnet"), {}, CFG, progress=False)
        assert not any(is_head(k) for k in changed(before, snapshot(mk)))
    with pytest.raises(SubtuneError, match="head must be one of new, keep"):
        get_method(name, head="old", **params)


def test_keep_head_scoring_and_cli(files, tmp_path):
    from subtune.scoring import CandidateScorer
    from subtune.select import SelectionConfig
    from subtune.train import evaluate

    ck = _save_tiny("resnet", 3, ["0", "1", "2"])
    d = {k: v for k, v in zip(("train_x", "train_y", "val_x", "val_y"), (*tiny_data(32), *tiny_data(32, 8, 1)))}
    sc = CandidateScorer(ck, d, 3, ONE_STEP, SelectionConfig(), keep_head=True, classes=["0", "1", "2"])
    r = sc.score_many([(), ("layer4.1",)])
    # the empty set trains nothing: the source model's own validation accuracy
    src, _ = tiny("resnet")
    assert r[0]["score"] == evaluate(src, sc.pre, d["val_x"], d["val_y"])["acc"] and r[0]["trainable_params"] == 0
    assert r[1]["trainable_params"] == sum(p.numel() for p in src.layer4[1].parameters())  # no head
    with pytest.raises(SubtuneError, match="the target's 'x'"):
        CandidateScorer(ck, d, 3, ONE_STEP, SelectionConfig(), keep_head=True, classes=["0", "x", "2"])
    # the CLI: --head keep on a 2-class target of a 3-class checkpoint fails in one line, before training
    common = ["--checkpoint", files / "ckpt.safetensors", "--train", json.dumps({"epochs": 1, "batch_size": 16})]
    assert main([str(a) for a in ["train", "--method", "lp", "--head", "keep", "--data", files / "t2.safetensors",
                                  "--manifest", files / "t2.json", *common, "--out", tmp_path / "x.json"]]) == 2
    assert not (tmp_path / "x.json").exists()
    cli("train", "--method", "bitfit", "--head", "keep", "--data", files / "t1.safetensors", "--manifest",
        files / "t1.json", *common, "--out", tmp_path / "k.json")
    m = json.loads((tmp_path / "k.json").read_text())
    biases = sum(p.numel() for n, p in small("resnet").named_parameters() if n.endswith("bias") and "fc" not in n)
    assert m["head"] == "keep" and m["trainable_params"] == biases  # BitFit without the head


def test_lora_rank_factors_give_subtuning_authors_rank_3r_qkv_update():
    """SubTuning's LoraAttention: one rank-3r update of the fused qkv (A: d -> 3r) and rank r on proj, both scaled by
    768/r; the blocks' MLP and LayerNorms train fully. rank_factors {qkv: 3} with alpha 768 says exactly that."""
    import timm

    torch.manual_seed(0)
    d, r, depth, k = 192, 4, 2, 3
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=k, img_size=32, depth=depth)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method = get_method("lora", rank=r, alpha=768, target=["qkv", "proj"], train_modules=["mlp", "norm1", "norm2"],
                        rank_factors={"qkv": 3})
    wrapped = method.wrap(model)
    layers = {n.removeprefix("base_model.model."): m for n, m in wrapped.named_modules()
              if n.endswith(("attn.qkv", "attn.proj"))}
    for n, m in layers.items():
        rank = 3 * r if n.endswith("qkv") else r
        assert m.r["default"] == rank and m.scaling["default"] == 768 / r
        assert m.lora_A["default"].weight.shape == (rank, d)
    per_block = (3 * r * d + 3 * d * 3 * r) + (r * d + d * r) + (d * 4 * d + 4 * d + 4 * d * d + d) + 4 * d
    assert method.trainable(wrapped).num_params == depth * per_block + d * k + k
    with pytest.raises(SubtuneError, match="rank_factors entry 'fc1'"):
        get_method("lora", rank=r, target=["qkv", "proj"], rank_factors={"fc1": 2}).wrap(
            timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=k, img_size=32, depth=depth))
    with pytest.raises(SubtuneError, match="rank_factors"):
        get_method("lora", rank_factors={"qkv": 0})
    # frozen: the original qkv/proj weights and the stem stay as they were (nothing trained here, wrap changes none)
    base = wrapped.get_base_model()
    assert torch.equal(base.blocks[0].attn.qkv.base_layer.weight, before["blocks.0.attn.qkv.weight"])
