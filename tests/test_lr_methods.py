"""The reviewer-asked methods that change *how* parameters train, not only which: LLRD (a learning-rate factor
per layer), gradual unfreezing (a trainable set per epoch within one run) and Auto-RGN (a learning-rate factor
per tensor, recomputed every step).

Each against its reference: LLRD's factors are timm's ``param_groups_layer_decay``'s and every optimizer group
trains at factor x the schedule; gradual unfreezing trains exactly its stage's parameters in each epoch (the
rest bit-identical through that epoch); Auto-RGN's factors are ||g|| / ||theta|| / max on each step's gradients
(surgical-finetuning ``main.py``). Exact trainable counts on timm resnet18 / vit_tiny_patch16_224. The contract
tests (only named parameters change, merge into a plain timm model, head keep) are tests/test_methods.py's,
parametrised over the registry; the tiny models and the counts' layouts are tests/helpers/methods.py's.
"""

import pytest
import timm
import torch

from subtune import SubtuneError
from subtune.methods import get_method
from subtune.models.blocks import block_names, head_names
from subtune.train import Preprocess, TrainConfig, _optimizer, _param_groups, fit, lr_scheduler

from helpers.methods import NC, changed, expected_resnet, expected_vit, resnet18_layout, small, snapshot, toy

PRE = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)


def names_of(model):
    return {id(p): n for n, p in model.named_parameters()}


# ------------------------------------------------------------------ LLRD
@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_llrd_factors_are_timms_layer_decay_and_decay_to_the_depth(family):
    from timm.optim import param_groups_layer_decay

    d = 0.6
    model = small(family)
    t = get_method("llrd", decay=d).trainable(model)
    assert t.names == [n for n, _ in model.named_parameters()]
    # timm's own layer map (the architecture's group_matcher) gives the same factor to every parameter
    ids = names_of(model)
    theirs = {ids[id(p)]: g["lr_scale"] for g in param_groups_layer_decay(model, layer_decay=d) for p in g["params"]}
    assert t.lr_scale == pytest.approx(theirs, rel=0, abs=0)
    # decay ** (depth from the top): the head 1, block i decay ** (n - i), the stem decay ** (n + 1)
    blocks = block_names(model)
    n = len(blocks)
    for name, s in t.lr_scale.items():
        if any(name.startswith(h + ".") for h in head_names(model)):
            want = 1.0
        elif any(name.startswith(b + ".") for b in blocks):
            want = d ** (n - next(i for i, b in enumerate(blocks) if name.startswith(b + ".")))
        elif name.startswith("norm."):  # ViT's final norm: with the last block (timm's MATCH_PREV_GROUP)
            want = d
        else:  # the stem
            want = d ** (n + 1)
        assert s == pytest.approx(want, rel=1e-12), name


@pytest.mark.parametrize("unit", ["step", "epoch"])
@pytest.mark.parametrize("no_wd_1d", [False, True])
def test_llrd_every_group_trains_at_its_factor_times_the_schedule(unit, no_wd_1d):
    cfg = TrainConfig(epochs=3, lr=0.01, weight_decay=0.05, warmup_epochs=1, warmup_lr=0.001, min_lr=0.0005,
                      schedule_unit=unit, no_weight_decay_1d=no_wd_1d)
    model = small("vit")
    t = get_method("llrd", decay=0.5).trainable(model)
    params = [p for _, p in t.params]
    for p in model.parameters():
        p.requires_grad_(True)
    groups = _param_groups(model, params, cfg, t)
    plain_groups = _param_groups(model, params, cfg)
    opt, ref = _optimizer(groups, cfg), _optimizer(plain_groups, cfg)
    spe = 4
    sched, ref_sched = lr_scheduler(opt, cfg, spe), lr_scheduler(ref, cfg, spe)
    ids = names_of(model)
    # one group per (weight decay, factor); each parameter once, with its own weight decay and factor
    assert sorted(ids[id(p)] for g in opt.param_groups for p in g["params"]) == sorted(t.names)
    wd_of = ({id(p): g["weight_decay"] for g in plain_groups for p in g["params"]} if no_wd_1d
             else {id(p): cfg.weight_decay for p in params})
    for g in opt.param_groups:
        assert len({t.lr_scale[ids[id(p)]] for p in g["params"]}) == 1
        assert all(wd_of[id(p)] == g["weight_decay"] for p in g["params"])
        assert g["lr_scale"] == t.lr_scale[g["names"][0]] and g["names"] == [ids[id(p)] for p in g["params"]]
    assert len(opt.param_groups) == len(set(t.lr_scale.values())) * (2 if no_wd_1d else 1)
    for _ in range(cfg.epochs * spe + 1):  # warm-up, cosine, min_lr: every step
        base = ref.param_groups[0]["lr"]
        for g in opt.param_groups:
            assert g["lr"] == pytest.approx(g["lr_scale"] * base, rel=1e-12)
        opt.step(), ref.step(), sched.step(), ref_sched.step()


def test_llrd_updates_are_the_factor_times_fts_and_decay_one_is_ft():
    sgd = TrainConfig(epochs=1, lr=0.05, batch_size=32, optimizer="sgd", weight_decay=0.0, schedule="constant")
    data = toy("resnet")
    ft = small("resnet")
    before = snapshot(ft)
    fit(ft, get_method("ft").trainable(ft), PRE, data, {}, sgd, progress=False)
    ll = small("resnet")
    t = get_method("llrd", decay=0.5).trainable(ll)
    fit(ll, t, PRE, data, {}, sgd, progress=False)
    # one SGD step from the same weights on the same batch: each tensor moved by its factor x FT's move
    ft_sd, ll_sd = snapshot(ft), snapshot(ll)
    for n, _ in ll.named_parameters():
        torch.testing.assert_close(ll_sd[n] - before[n], t.lr_scale[n] * (ft_sd[n] - before[n]), rtol=1e-4, atol=1e-7)
    assert min(t.lr_scale.values()) == 0.5 ** 9 and t.notes["min_lr_scale"] == 0.5 ** 9
    # decay 1: FT exactly (AdamW, weight-decay groups, cosine per epoch), bit for bit
    for unit in ("step", "epoch"):
        cfg = TrainConfig(epochs=2, lr=1e-2, batch_size=16, schedule_unit=unit, no_weight_decay_1d=True)
        a, b = small("resnet"), small("resnet")
        fit(a, get_method("ft").trainable(a), PRE, data, {}, cfg, progress=False)
        fit(b, get_method("llrd", decay=1).trainable(b), PRE, data, {}, cfg, progress=False)
        assert not changed(snapshot(a), snapshot(b))


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny_patch16_224"])
def test_llrd_exact_trainable_counts(arch):
    model = timm.create_model(arch, num_classes=NC)
    t = get_method("llrd").trainable(model)
    expected = expected_resnet if arch == "resnet18" else expected_vit
    assert t.num_params == expected("lpft", {})  # everything
    assert set(t.lr_scale) == set(t.names) and max(t.lr_scale.values()) == 1.0
    n = len(block_names(model))
    assert min(t.lr_scale.values()) == pytest.approx(0.75 ** (n + 1))
    with pytest.raises(SubtuneError, match=r"llrd: decay must be a number in \(0, 1\], not 1.5"):
        get_method("llrd", decay=1.5)


# ------------------------------------------------------------------ gradual unfreezing
def under(name, prefixes):
    return any(prefix == "" or name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize("family,unit", [("resnet", "group"), ("vit", "block")])
def test_gradual_trains_exactly_its_stage_in_each_epoch(family, unit):
    model = small(family)
    t = get_method("gradual", unit=unit).trainable(model)
    params = [n for n, _ in model.named_parameters()]
    head = [n for n in params if under(n, head_names(model))]
    blocks = block_names(model)
    if family == "resnet":  # Surgical's groups: conv1 + bn1 + layer1, layer2, layer3, layer4
        tops = [["layer4"], ["layer3", "layer4"], ["layer2", "layer3", "layer4"]]
    else:  # one block at a time, the final norm with the top block, the stem with the lowest block
        tops = [[blocks[-1], "norm"]]
    want = [head, *[[n for n in params if under(n, [*ps, *head_names(model)])] for ps in tops], params]
    assert [s.names for s in t.stages] == want and [s.first_epoch for s in t.stages] == list(range(len(want)))
    assert t.stages[-1].train_modules == [""] and t.names == params
    # one run: after each epoch exactly the stage's parameters moved, and BatchNorm statistics only in its modules
    snaps = [snapshot(model)]
    cfg = TrainConfig(epochs=len(want) + 1, lr=1e-2, batch_size=16)
    m = fit(model, t, PRE, toy(family), {}, cfg, progress=False, on_epoch=lambda row: snaps.append(snapshot(model)))
    assert m["trainable_params"] == sum(p.numel() for p in model.parameters()) and len(snaps) == cfg.epochs + 1
    for e in range(cfg.epochs):
        stage = t.stages[min(e, len(t.stages) - 1)]
        diff = changed(snaps[e], snaps[e + 1])
        assert {k for k in diff if k in params} == set(stage.names), e
        moved_stats = {k for k in diff if k not in params}
        assert all(under(k, stage.train_modules) for k in moved_stats), e
        if family == "resnet":
            assert bool(moved_stats) == (e >= 1)  # the head has no BatchNorm; every later stage has
    # the schedule is one run's: the lr decays smoothly over all epochs (no restart per stage)
    lrs = [r["lr"] for r in m["history"]]
    assert lrs == sorted(lrs, reverse=True) and len(set(lrs)) == len(lrs)


def test_gradual_epochs_per_stage_and_head_keep():
    model = small("resnet")
    t = get_method("gradual", epochs_per_stage=3).trainable(model)
    assert [s.first_epoch for s in t.stages] == [0, 3, 6, 9, 12]
    # head keep: it ends as FT, so the head still trains (own_head), from the first stage
    k = get_method("gradual", head="keep").trainable(model)
    assert k.stages[0].names == ["fc.weight", "fc.bias"]
    with pytest.raises(SubtuneError, match="gradual: unit must be group or block, not 'layer'"):
        get_method("gradual", unit="layer")
    with pytest.raises(SubtuneError, match="gradual: epochs_per_stage must be a positive integer, not 0"):
        get_method("gradual", epochs_per_stage=0)


def test_gradual_exact_trainable_counts_resnet18():
    convs, _ = resnet18_layout()
    # every resnet18 convolution is followed by a BatchNorm of its output width
    size = lambda pre: sum(ci * co * k * k + 2 * co for n, ci, co, k in convs if under(n, pre))  # noqa: E731
    head = 512 * NC + NC
    model = timm.create_model("resnet18", num_classes=NC)
    t = get_method("gradual").trainable(model)
    assert [sum(p.numel() for n, p in model.named_parameters() if n in set(s.names)) for s in t.stages] == [
        head, head + size(["layer4"]), head + size(["layer3", "layer4"]), head + size(["layer2", "layer3", "layer4"]),
        expected_resnet("lpft", {})]
    assert t.num_params == expected_resnet("lpft", {})
    vt = get_method("gradual", unit="block").trainable(timm.create_model("vit_tiny_patch16_224", num_classes=NC))
    assert len(vt.stages) == 12 + 1 and vt.num_params == expected_vit("lpft", {})


# ------------------------------------------------------------------ Auto-RGN
def rgn_spy(t):
    """Wrap the method's step hook: record, at every step, each group's name, its RGN from the gradient about
    to be applied, the factors and the scheduled lr."""
    hook, steps = t.hooks.lr_factors, []

    def spy(groups):
        f = hook(groups)
        steps.append({"names": [g["names"][0] for g in groups], "lr": [g["lr"] for g in groups], "factors": f,
                      "rgn": [(g["params"][0].grad.norm() / g["params"][0].norm()).item() for g in groups],
                      "grad": [g["params"][0].grad.clone() for g in groups]})
        return f

    t.hooks.lr_factors = spy
    return steps


def test_autorgn_factors_are_relative_gradient_norms_over_the_max_each_step():
    model = small("resnet")
    t = get_method("autorgn").trainable(model)
    bn = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert t.names == [n for n, _ in model.named_parameters() if not under(n, bn)]
    steps = rgn_spy(t)
    before = snapshot(model)
    # timm's per-epoch cosine: the groups' lrs change only at epoch ends, so a factor left in place would compound
    cfg = TrainConfig(epochs=2, lr=0.01, batch_size=8, optimizer="adamw", schedule="cosine", schedule_unit="epoch")
    m = fit(model, t, PRE, toy("resnet"), {}, cfg, progress=False)
    assert len(steps) == 8  # 32 images, batch 8, 2 epochs: recomputed at every step
    for s in steps:
        assert s["names"] == t.names  # one group per tensor
        top = max(s["rgn"])
        assert s["factors"] == pytest.approx([r / top for r in s["rgn"]], rel=1e-5)
        assert max(s["factors"]) == 1.0 and min(s["factors"]) > 0
        assert len(set(s["lr"])) == 1  # the schedule's lr, the same for every group before the factors
    assert [s["lr"][0] for s in steps] == [0.01] * 4 + [0.005] * 4
    assert steps[0]["factors"] != steps[1]["factors"] != steps[-1]["factors"]
    # the schedule never sees the factors: the groups' lrs after the run are the plain cosine's
    assert [r["lr"] for r in m["history"]] == pytest.approx([0.005, 0.0])
    # BatchNorm: affine frozen, statistics frozen (eval mode); everything else moved
    diff = changed(before, snapshot(model))
    assert diff == set(t.names) and not any(under(k, bn) for k in diff)


def test_autorgn_update_is_lr_times_factor_times_gradient():
    """One SGD step (momentum buffer = the gradient): each tensor moves by -lr * RGN_j / max RGN * g_j."""
    model = small("vit")
    t = get_method("autorgn").trainable(model)
    assert t.names == [n for n, _ in model.named_parameters()] and t.train_modules == [""]  # no BatchNorm
    with torch.no_grad():
        model.head.bias.zero_()  # zero norm: factor 1, left out of the max
    steps = rgn_spy(t)
    before = snapshot(model)
    cfg = TrainConfig(epochs=1, lr=0.05, batch_size=32, optimizer="sgd", weight_decay=0.0, schedule="constant")
    fit(model, t, PRE, toy("vit"), {}, cfg, progress=False)
    (s,) = steps
    f = dict(zip(s["names"], s["factors"]))
    zero = {n for n in s["names"] if not before[n].any()}  # the head bias and timm's zero-initialised biases
    assert "head.bias" in zero and all(f[n] == 1.0 for n in zero)
    rest = {n: r for n, r in zip(s["names"], s["rgn"]) if n not in zero}
    assert max(f[n] for n in rest) == 1.0
    after = snapshot(model)
    for n, g in zip(s["names"], s["grad"]):
        torch.testing.assert_close(after[n] - before[n], -0.05 * f[n] * g, rtol=1e-4, atol=1e-8)
        if n not in zero:
            assert f[n] == pytest.approx(rest[n] / max(rest.values()), rel=1e-5)


def test_autorgn_train_bn_and_exact_counts():
    convs, bns = resnet18_layout()
    model = timm.create_model("resnet18", num_classes=NC)
    t = get_method("autorgn").trainable(model)
    assert t.num_params == expected_resnet("lpft", {}) - 2 * sum(bns)  # every tensor but the BatchNorm affine
    tb = get_method("autorgn", train_bn=True).trainable(model)
    assert tb.num_params == expected_resnet("lpft", {}) and tb.train_modules == [""]
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=NC)
    assert get_method("autorgn").trainable(vit).num_params == expected_vit("lpft", {})
    # with train_bn the BatchNorms train (affine and statistics), at their own RGN
    m = small("resnet")
    t = get_method("autorgn", train_bn=True).trainable(m)
    before = snapshot(m)
    fit(m, t, PRE, toy("resnet"), {}, TrainConfig(epochs=1, lr=1e-2, batch_size=16), progress=False)
    diff = changed(before, snapshot(m))
    assert "layer1.0.bn1.weight" in diff and "layer1.0.bn1.running_mean" in diff
