"""The training loop and the methods of the core library: frozen weights, BatchNorm, counts, determinism."""

import pytest
import timm
import torch

from subtune import SubtuneError
from subtune.methods import get_method, surgical_groups
from subtune.train import Preprocess, TrainConfig, fit

CFG = TrainConfig(epochs=2, lr=1e-2, batch_size=16)


def small_model(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("resnet18", num_classes=3, channels=(8, 16, 32, 64))


def toy_data(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


PRE = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(method, model=None, seed=0, cfg=CFG):
    model = model or small_model()
    before = snapshot(model)
    t = method.trainable(model)
    x, y = toy_data()
    m = fit(model, t, PRE, (x, y), {"val": toy_data(16, 1)}, cfg, seed=seed, progress=False)
    return model, before, snapshot(model), m, t


def changed(before, after):
    return {k for k in before if not torch.equal(before[k], after[k])}


def under(name, prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_lp_changes_only_the_head_and_no_batchnorm_statistic():
    _, before, after, m, _ = run(get_method("lp"))
    diff = changed(before, after)
    assert diff and all(k.startswith("fc.") for k in diff)
    # every BatchNorm running statistic is bit-identical (frozen modules run in eval mode)
    assert all(torch.equal(before[k], after[k]) for k in before if "running" in k or "num_batches" in k)
    assert m["trainable_params"] == 64 * 3 + 3


def test_subtuning_changes_only_selected_blocks_and_head():
    blocks = ["layer2.1", "layer4.0"]
    model, before, after, m, _ = run(get_method("subtuning", blocks=blocks))
    diff = changed(before, after)
    assert all(under(k, blocks + ["fc"]) for k in diff)
    # parameters and BN statistics inside the selected blocks did move
    assert "layer2.1.conv1.weight" in diff and "layer4.0.bn2.running_mean" in diff
    expected = sum(p.numel() for n, p in model.named_parameters() if under(n, blocks + ["fc"]))
    assert m["trainable_params"] == expected


def test_ft_trains_everything_in_train_mode():
    model, before, after, m, _ = run(get_method("ft"))
    diff = changed(before, after)
    assert "conv1.weight" in diff and "bn1.running_var" in diff
    assert m["trainable_params"] == sum(p.numel() for p in model.parameters())


def test_surgical_groups_and_training():
    model = small_model()
    groups = surgical_groups(model)
    assert groups == [["conv1", "bn1", "layer1.0", "layer1.1"], ["layer2.0", "layer2.1"],
                      ["layer3.0", "layer3.1"], ["layer4.0", "layer4.1"]]
    _, before, after, m, t = run(get_method("surgical", group=0), model)
    assert all(under(k, groups[0] + ["fc"]) for k in changed(before, after))
    assert t.notes["group"] == 0
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=2)
    vg = surgical_groups(vit)
    assert len(vg) == 4 and vg[0][:3] == ["cls_token", "pos_embed", "patch_embed"]
    assert sum(len([n for n in g if n.startswith("blocks.")]) for g in vg) == 12


def test_same_seed_is_bit_identical_and_other_seed_differs():
    _, _, a, ma, _ = run(get_method("subtuning", blocks=["layer3.0"]), seed=3)
    _, _, b, mb, _ = run(get_method("subtuning", blocks=["layer3.0"]), seed=3)
    _, _, c, _, _ = run(get_method("subtuning", blocks=["layer3.0"]), seed=4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert ma["history"] == mb["history"]
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_augmentation_is_seeded():
    cfg = TrainConfig(epochs=1, lr=1e-2, batch_size=16, augment="crop_flip")
    _, _, a, _, _ = run(get_method("lp"), seed=1, cfg=cfg)
    _, _, b, _, _ = run(get_method("lp"), seed=1, cfg=cfg)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_method_and_parameter_are_named():
    with pytest.raises(SubtuneError, match="unknown method 'bitfitt'"):
        get_method("bitfitt")
    with pytest.raises(SubtuneError, match="method 'lp' takes no parameter 'rank'"):
        get_method("lp", rank=4)
    with pytest.raises(SubtuneError, match="not a block"):
        get_method("subtuning", blocks=["layer9.0"]).trainable(small_model())


def test_train_config_errors_name_the_key():
    with pytest.raises(SubtuneError, match="unknown key train.learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(SubtuneError, match="train.augment"):
        TrainConfig.from_dict({"augment": "mixup"})


def test_train_step_is_the_documented_step_bit_for_bit():
    """The one step every loop calls (fit, fit_group, Multi-LoRA's fit_together): cross-entropy plus the method's
    extra loss, backward, the hooks around the step with this step's lr factors, the schedule's step, the count."""
    import copy

    from subtune.loop import Optimization, train_step
    from subtune.optim import _optimizer, lr_scheduler
    from subtune.trainable import StepHooks

    cfg = TrainConfig(epochs=2, lr=0.1, batch_size=4, optimizer="sgd", label_smoothing=0.1, warmup_epochs=1)
    torch.manual_seed(0)
    lin, other = torch.nn.Linear(5, 3), torch.nn.Linear(5, 3)
    ref = copy.deepcopy(lin)
    calls = []

    class Hooks(StepHooks):
        def start(self, optimizer, total_steps):
            calls.append(("start", total_steps))

        def extra_loss(self):
            return 0.01 * (lin.weight ** 2).sum()

        def before_step(self, step):
            calls.append(("before", step))

        def lr_factors(self, param_groups):
            return [0.5]

        def after_step(self, step):
            calls.append(("after", step))

    optim = Optimization.build(list(lin.parameters()), cfg, 2, Hooks())
    bystander = Optimization.build(list(other.parameters()), cfg, 2)
    other(torch.ones(1, 5)).sum().backward()
    still = [p.detach().clone() for p in other.parameters()]
    ref_opt = _optimizer(list(ref.parameters()), cfg)
    ref_sched = lr_scheduler(ref_opt, cfg, 2)
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 1])
    for step in range(3):
        loss, (part,) = train_step(lambda: lin(x), [y], [optim], cfg.label_smoothing, "cpu", zero=[optim, bystander])
        ref_part = torch.nn.functional.cross_entropy(ref(x), y, label_smoothing=0.1)
        ref_loss = ref_part + 0.01 * (ref.weight ** 2).sum()
        ref_opt.zero_grad()
        ref_loss.backward()
        lr = ref_opt.param_groups[0]["lr"]
        ref_opt.param_groups[0]["lr"] = lr * 0.5
        ref_opt.step()
        ref_opt.param_groups[0]["lr"] = lr
        ref_sched.step()
        assert torch.equal(loss, ref_loss.detach()) and torch.equal(part, ref_part.detach())
        assert all(torch.equal(a, b) for a, b in zip(lin.parameters(), ref.parameters()))
        assert optim.lr == ref_opt.param_groups[0]["lr"]
    assert calls == [("start", 4)] + [(k, s) for s in range(3) for k in ("before", "after")] and optim.steps == 3
    # an optimizer only zeroed (Multi-LoRA's inactive tasks) loses its gradients and is never stepped
    assert all(p.grad is None for p in other.parameters()) and bystander.steps == 0
    assert all(torch.equal(a, b) for a, b in zip(other.parameters(), still))
