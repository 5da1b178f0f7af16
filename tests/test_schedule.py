"""Learning-rate schedule and loader keys: schedule_unit, warmup_lr, min_lr, cooldown_epochs, drop_last.

References are the libraries the authors' code calls: timm's CosineLRScheduler stepped per epoch with
``step(epoch + 1)`` (SSF's train.py; built as timm's create_scheduler builds it) and torch's
CosineAnnealingLR stepped per epoch (SubTuning's Lightning module).
"""

import math
from pathlib import Path

import pytest
import timm
import torch
import yaml
from timm.scheduler import CosineLRScheduler
from torch.optim.optimizer import register_optimizer_step_pre_hook

from subtune import SubtuneError
from subtune.config import validate
from subtune.methods import get_method
from subtune.methods.base import fit_phases
from subtune.methods.multilora import Task, train_multilora
from subtune.methods.multilora_compare import train_separate_lora
from subtune.train import Preprocess, TrainConfig, _lr_factor, fit, lr_factor, lr_scheduler

ROOT = Path(__file__).resolve().parents[1]
PRE = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)
SSF = dict(epochs=100, lr=1e-3, warmup_epochs=10, warmup_lr=1e-7, min_lr=1e-8, cooldown_epochs=10,
           schedule_unit="epoch")


def small_model(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("resnet18", num_classes=3, channels=(8, 16, 32, 64), zero_init_last=False)


def toy_data(n=48, seed=0, classes=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g),
            torch.randint(0, classes, (n,), generator=g))


def step_lrs(cfg, steps_per_epoch, groups=1):
    """The lr of every optimizer step of a run, from the schedule the training loop builds."""
    ps = [torch.nn.Parameter(torch.zeros(1)) for _ in range(groups)]
    opt = torch.optim.AdamW([{"params": [p]} for p in ps], lr=cfg.lr)
    sched = lr_scheduler(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(steps_per_epoch * cfg.total_epochs):
        out.append([g["lr"] for g in opt.param_groups] if groups > 1 else opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


class LrLog:
    """The lr of every optimizer step taken inside the block, per optimizer (keyed by the optimizer itself: an id
    could be reused by the next phase's optimizer once the first is freed)."""

    def __enter__(self):
        self.lrs = {}

        def pre(opt, args, kwargs):
            self.lrs.setdefault(opt, []).append(opt.param_groups[0]["lr"])

        self._h = register_optimizer_step_pre_hook(pre)
        return self

    def __exit__(self, *exc):
        self._h.remove()


def ssf_reference(lr=1e-3):
    """SSF's schedule: timm's CosineLRScheduler, lr read during each epoch, then step(epoch + 1)."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = CosineLRScheduler(opt, t_initial=100, lr_min=1e-8, warmup_t=10, warmup_lr_init=1e-7, cycle_limit=1,
                              t_in_epochs=True)
    num_epochs = sched.get_cycle_length() + 10  # timm's create_scheduler: cycle length + cooldown_epochs
    out = []
    for epoch in range(num_epochs):
        out.append(opt.param_groups[0]["lr"])
        sched.step(epoch + 1)
    return out


# ------------------------------------------------------------------ epoch unit = the authors' schedulers
def test_epoch_unit_is_ssfs_timm_schedule_110_epochs():
    ref = ssf_reference()
    assert len(ref) == 110
    lrs = step_lrs(TrainConfig.from_dict(SSF), steps_per_epoch=3)
    assert len(lrs) == 3 * 110
    per_epoch = lrs[::3]
    assert all(lrs[3 * e] == lrs[3 * e + 1] == lrs[3 * e + 2] for e in range(110))  # changes once per epoch
    assert per_epoch == ref  # exactly timm's values
    # the form: warm-up from 1e-7, cosine of the whole 100-epoch run from epoch 10, then 10 epochs at 1e-8
    assert per_epoch[0] == 1e-7
    assert per_epoch[5] == pytest.approx(1e-7 + 5 * (1e-3 - 1e-7) / 10, rel=1e-12)
    assert per_epoch[10] == pytest.approx(1e-8 + 0.5 * (1e-3 - 1e-8) * (1 + math.cos(math.pi * 10 / 100)), rel=1e-12)
    assert per_epoch[100:] == [1e-8] * 10


def test_epoch_unit_parameter_groups_each_follow_timm():
    cfg = TrainConfig.from_dict({**SSF, "epochs": 6, "warmup_epochs": 2, "cooldown_epochs": 2})
    lrs = step_lrs(cfg, steps_per_epoch=2, groups=2)
    assert all(a == b for a, b in lrs)  # both groups (decay / no-decay) share the lr


def test_epoch_unit_without_warmup_is_torch_cosine_annealing_per_epoch():
    cfg = TrainConfig.from_dict({"epochs": 7, "lr": 0.1, "schedule_unit": "epoch"})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ann = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=7)
    ref = []
    for _ in range(7):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        ann.step()
    lrs = step_lrs(cfg, steps_per_epoch=4)
    assert lrs[::4] == pytest.approx(ref, rel=1e-12, abs=1e-18)
    assert all(lrs[4 * e: 4 * e + 4] == [lrs[4 * e]] * 4 for e in range(7))


def test_epoch_unit_constant_warms_up_like_timm_then_holds():
    cfg = TrainConfig.from_dict({"epochs": 5, "lr": 1e-3, "schedule": "constant", "schedule_unit": "epoch",
                                 "warmup_epochs": 2, "warmup_lr": 1e-5})
    assert step_lrs(cfg, 1) == pytest.approx([1e-5, 1e-5 + (1e-3 - 1e-5) / 2, 1e-3, 1e-3, 1e-3], rel=1e-12)


# ------------------------------------------------------------------ step unit
def test_step_unit_defaults_are_the_plain_schedule_exactly():
    for kw in [{}, {"warmup_epochs": 2}, {"schedule": "constant", "warmup_epochs": 1}]:
        cfg = TrainConfig.from_dict({"epochs": 5, **kw})
        total, warmup = 3 * cfg.epochs, 3 * cfg.warmup_epochs
        assert [lr_factor(s, cfg, 3) for s in range(total + 2)] == [
            _lr_factor(s, total, warmup, cfg.schedule) for s in range(total + 2)]


def test_step_unit_warmup_lr_min_lr_and_cooldown():
    cfg = TrainConfig.from_dict({"epochs": 4, "lr": 1e-3, "warmup_epochs": 1, "warmup_lr": 1e-4, "min_lr": 1e-5,
                                 "cooldown_epochs": 1})
    lrs = step_lrs(cfg, steps_per_epoch=2)
    assert len(lrs) == 2 * 5
    exp = [1e-4 + (1e-3 - 1e-4) * (s + 1) / 2 for s in range(2)]  # warm-up: (s + 1) / W of the way
    exp += [1e-5 + (1e-3 - 1e-5) * 0.5 * (1 + math.cos(math.pi * (s - 2) / 6)) for s in range(2, 8)]
    exp += [1e-5, 1e-5]  # cooldown epoch at the floor
    assert lrs == pytest.approx(exp, rel=1e-12)


# ------------------------------------------------------------------ the training loop
def test_fit_epoch_unit_drop_last_and_cooldown():
    cfg = TrainConfig.from_dict({**SSF, "epochs": 3, "warmup_epochs": 1, "cooldown_epochs": 1, "batch_size": 20,
                                 "drop_last": True})
    model = small_model()
    with LrLog() as log:
        m = fit(model, get_method("lp").trainable(model), PRE, toy_data(), {"val": toy_data(8, 1)}, cfg,
                progress=False)
    (lrs,) = log.lrs.values()
    assert len(lrs) == 2 * 4  # floor(48 / 20) steps per epoch, 3 + 1 epochs
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    ref = CosineLRScheduler(opt, t_initial=3, lr_min=1e-8, warmup_t=1, warmup_lr_init=1e-7)
    exp = []
    for e in range(4):
        exp += [opt.param_groups[0]["lr"]] * 2
        ref.step(e + 1)
    assert lrs == exp
    assert m["epochs"] == 4 and len(m["history"]) == 4 and m["best_epoch"] == 4


@pytest.mark.parametrize("drop_last, steps", [(False, 3), (True, 2)])
def test_drop_last_gives_floor_n_over_b_steps(drop_last, steps):
    cfg = TrainConfig.from_dict({"epochs": 2, "lr": 1e-2, "batch_size": 20, "drop_last": drop_last})
    model = small_model()
    with LrLog() as log:
        m = fit(model, get_method("lp").trainable(model), PRE, toy_data(), {}, cfg, progress=False)
    (lrs,) = log.lrs.values()
    assert len(lrs) == steps * 2
    assert m["epochs"] == 2


def test_drop_last_with_fewer_images_than_a_batch_is_named():
    cfg = TrainConfig.from_dict({"epochs": 1, "batch_size": 64, "drop_last": True})
    model = small_model()
    with pytest.raises(SubtuneError, match="train.drop_last"):
        fit(model, get_method("lp").trainable(model), PRE, toy_data(), {}, cfg, progress=False)


def test_fit_phases_count_cooldown_epochs():
    model = small_model()
    cfg = TrainConfig.from_dict({"epochs": 2, "lr": 1e-2, "batch_size": 16})
    phases = [(get_method("lp").trainable(model), {"cooldown_epochs": 1, "min_lr": 1e-4}),
              (get_method("ft").trainable(model), {"schedule_unit": "epoch"})]
    with LrLog() as log:
        m = fit_phases(model, phases, PRE, toy_data(), {"val": toy_data(8, 1)}, cfg, progress=False)
    assert [len(v) for v in log.lrs.values()] == [3 * 3, 3 * 2]
    assert list(log.lrs.values())[0][-3:] == pytest.approx([1e-4] * 3, rel=1e-12)  # the cooldown epoch: min_lr
    assert m["epochs"] == 5 and [r["epoch"] for r in m["history"]] == [1, 2, 3, 4, 5]


# ------------------------------------------------------------------ Multi-LoRA: same helper, refusals
def ml_tasks():
    return [Task("a", 3, toy_data(20, 0, 3), toy_data(8, 1, 3)), Task("b", 2, toy_data(12, 3, 2), toy_data(8, 4, 2))]


def test_multilora_follows_the_schedule_keys_like_separate_runs():
    cfg = TrainConfig.from_dict({"epochs": 2, "lr": 1e-2, "batch_size": 8, "schedule_unit": "epoch",
                                 "warmup_epochs": 1, "warmup_lr": 1e-4, "min_lr": 1e-5, "cooldown_epochs": 1,
                                 "drop_last": True})
    with LrLog() as sep_log:
        sep = train_separate_lora(small_model(), ml_tasks(), PRE, cfg, rank=2, alpha=4)
    with LrLog() as ml_log:
        ml = train_multilora(small_model(), ml_tasks(), PRE, cfg, rank=2, alpha=4)
    expected = {"a": 2 * 3, "b": 1 * 3}  # floor(n / 8) per epoch, 2 + 1 epochs
    assert ml["optimizer_steps"] == expected == sep["optimizer_steps"]
    assert sorted(map(tuple, ml_log.lrs.values())) == sorted(map(tuple, sep_log.lrs.values()))
    assert len(ml["history"]) == 3


@pytest.mark.parametrize("key, value", [("augment", "timm"), ("augment", "rrc_flip"), ("mixup", 0.8),
                                        ("cutmix", 1.0), ("epoch_select", "best_val"), ("drop_path", 0.1),
                                        ("no_weight_decay_1d", True)])
def test_multilora_refuses_options_it_cannot_honour(key, value, monkeypatch):
    import subtune.methods.multilora as ml

    def no_training(*a, **k):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(ml, "fit_together", no_training)
    cfg = TrainConfig.from_dict({"epochs": 1, "batch_size": 8, key: value})
    for train in (train_multilora, train_separate_lora):
        with pytest.raises(SubtuneError, match=f"multilora.train.{key}"):
            train(small_model(), ml_tasks(), PRE, cfg, rank=2, alpha=4)
    with pytest.raises(SubtuneError, match=f"multilora.grid.{key}"):
        train_multilora(small_model(), ml_tasks(), PRE, TrainConfig(epochs=1, batch_size=8), rank=2, alpha=4,
                        grid={key: [value]})


# ------------------------------------------------------------------ validation
def test_schedule_keys_are_validated_in_train_config_and_schema():
    assert TrainConfig() == TrainConfig.from_dict({"schedule_unit": "step", "warmup_lr": 0.0, "min_lr": 0.0,
                                                    "cooldown_epochs": 0, "drop_last": False})
    assert TrainConfig.from_dict(SSF).total_epochs == 110
    for bad, key in [({"schedule_unit": "iter"}, "schedule_unit"), ({"warmup_lr": -1}, "warmup_lr"),
                     ({"min_lr": 1.0}, "min_lr"), ({"cooldown_epochs": -1}, "cooldown_epochs"),
                     ({"cooldown_epochs": 1.5}, "cooldown_epochs"), ({"drop_last": "yes"}, "drop_last"),
                     ({"warmup_lr": 1e-5}, "warmup_lr"), ({"schedule": "constant", "min_lr": 1e-8}, "min_lr"),
                     ({"schedule": "constant", "cooldown_epochs": 2}, "cooldown_epochs")]:
        with pytest.raises(SubtuneError, match=f"train.{key}"):
            TrainConfig.from_dict(bad)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["train"].update(SSF, drop_last=True)
    validate(config, ROOT / "schemas/config.schema.yaml")
    config["train"]["schedule_unit"] = "iteration"
    with pytest.raises(SubtuneError, match="schedule_unit"):
        validate(config, ROOT / "schemas/config.schema.yaml")
