"""Training-protocol options of the one loop: weight-decay groups, drop-path, augmentations and mixing,
BatchNorm mode, best-validation epoch, SubTuning's FT with a frozen stem, the per-epoch log line."""

import logging
import random
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import yaml

from subtune import SubtuneError
from subtune.augment import Augmenter
from subtune.config import validate
from subtune.methods import get_method
from subtune.methods.base import Trainable
from subtune.models.checkpoint import Checkpoint, build_model, save_checkpoint
from subtune.scoring import CandidateScorer
from subtune.select import SelectionConfig
from subtune.train import Preprocess, Run, TrainConfig, evaluate, fit, fit_group, has_randomness, set_modes

ROOT = Path(__file__).resolve().parents[1]
PRE = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)


def small_resnet(seed=0, **kw):
    torch.manual_seed(seed)
    return timm.create_model("resnet18", num_classes=3, channels=(8, 16, 32, 64), **kw)


def small_vit(seed=0, **kw):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", num_classes=3, img_size=32, patch_size=8, depth=4, **kw)


def toy_data(n=48, seed=0, size=16, channels=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ------------------------------------------------------------------ config keys
def test_new_keys_are_validated_in_train_config_and_schema():
    assert TrainConfig() == TrainConfig.from_dict({"no_weight_decay_1d": False, "drop_path": 0.0, "mixup": 0.0,
                                                    "cutmix": 0.0, "bn_mode": "tuned", "epoch_select": "last"})
    for bad, key in [({"bn_mode": "eval"}, "bn_mode"), ({"epoch_select": "best"}, "epoch_select"),
                     ({"drop_path": 1.0}, "drop_path"), ({"mixup": -1}, "mixup"), ({"augment": "randaug"}, "augment"),
                     ({"no_weight_decay_1d": "yes"}, "no_weight_decay_1d")]:
        with pytest.raises(SubtuneError, match=f"train.{key}"):
            TrainConfig.from_dict(bad)
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["train"].update(augment="timm", mixup=0.8, cutmix=1.0, drop_path=0.1, no_weight_decay_1d=True,
                           bn_mode="frozen", epoch_select="best_val")
    validate(config, ROOT / "schemas/config.schema.yaml")
    config["train"]["bn_mode"] = "eval"
    with pytest.raises(SubtuneError, match="bn_mode"):
        validate(config, ROOT / "schemas/config.schema.yaml")


# ------------------------------------------------------------------ 1. no weight decay on 1-D tensors
@pytest.mark.parametrize("no_wd_1d", [False, True])
def test_no_weight_decay_1d(no_wd_1d):
    model = small_resnet()
    model.extra_w = nn.Parameter(torch.ones(3, 3))  # 2-D, zero gradient
    model.extra_s = nn.Parameter(torch.ones(3))  # 1-D (like an SSF scale), zero gradient
    names = ["fc.weight", "fc.bias", "extra_w", "extra_s"]
    t = Trainable([(n, p) for n, p in model.named_parameters() if n in names], ["fc"])

    def forward(xb):  # the extra parameters enter with weight 0: their gradient is exactly zero
        return model(PRE(xb)) + 0.0 * (model.extra_w.sum() + model.extra_s.sum())

    cfg = TrainConfig(epochs=1, lr=1e-2, weight_decay=0.5, batch_size=16, no_weight_decay_1d=no_wd_1d)
    fit(model, t, PRE, toy_data(), {}, cfg, progress=False, forward=forward)
    assert torch.all(model.extra_w < 1)  # decayed: AdamW's decoupled decay with a zero gradient
    if no_wd_1d:
        assert torch.equal(model.extra_s, torch.ones(3))
    else:
        assert torch.all(model.extra_s < 1)


def test_no_weight_decay_groups_follow_timm():
    from subtune.train import _param_groups

    vit = small_vit()
    params = [p for p in vit.parameters()]
    for p in params:
        p.requires_grad_(True)
    groups = _param_groups(vit, params, TrainConfig(weight_decay=0.05, no_weight_decay_1d=True))
    by_id = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(vit.named_parameters())
    assert by_id[id(named["pos_embed"])] == 0 and by_id[id(named["cls_token"])] == 0  # no_weight_decay() names
    assert by_id[id(named["blocks.0.norm1.weight"])] == 0 and by_id[id(named["blocks.0.attn.qkv.bias"])] == 0
    assert by_id[id(named["blocks.0.attn.qkv.weight"])] == 0.05 and by_id[id(named["patch_embed.proj.weight"])] == 0.05
    # only trainable parameters are in the groups
    named["pos_embed"].requires_grad_(False)
    with pytest.raises(SubtuneError, match="no_weight_decay_1d"):
        _param_groups(vit, params, TrainConfig(no_weight_decay_1d=True))
    assert _param_groups(vit, params, TrainConfig()) is params


# ------------------------------------------------------------------ 2. drop-path
def test_drop_path_active_in_frozen_blocks_and_off_in_evaluation(tmp_path):
    model = small_vit(drop_path_rate=0.3)
    assert has_randomness(model)
    x, y = toy_data(32, size=32)
    t = get_method("lp").trainable(model)
    # a frozen block (eval mode) still drops paths in training; BatchNorm/Dropout modes are not touched
    set_modes(model, t.train_modules, drop_path=True)
    assert not model.blocks[1].training and model.blocks[1].drop_path1.training  # block 0: rate 0
    with torch.no_grad():
        a, b = model(PRE(x[:4])), model(PRE(x[:4]))
    assert not torch.equal(a, b)
    set_modes(model, t.train_modules)
    assert not model.blocks[1].drop_path1.training  # the plain convention silences it

    seen = []
    model.blocks[1].drop_path1.register_forward_pre_hook(lambda m, _: seen.append(m.training))
    cfg = TrainConfig(epochs=1, lr=1e-2, batch_size=16, drop_path=0.3)
    fit(model, t, PRE, (x, y), {"val": (x, y)}, cfg, progress=False)
    assert seen[:2] == [True, True] and seen[-1] is False  # training batches, then evaluation
    e1 = evaluate(model, PRE, x, y)
    assert e1 == evaluate(model, PRE, x, y)  # evaluation is deterministic

    # train.drop_path must match the model's rate (wired through build_model)
    with pytest.raises(SubtuneError, match="drop_path"):
        plain = small_vit()
        fit(plain, get_method("lp").trainable(plain), PRE, (x, y), {}, cfg, progress=False)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, small_vit(), Checkpoint("vit_tiny_patch16_224", 3, image_size=32,
                                                  model_kwargs={"img_size": 32, "patch_size": 8, "depth": 4}))
    built, _ = build_model(path, 3, **cfg.model_kwargs())
    rates = [m.drop_prob for m in built.modules() if type(m).__name__ == "DropPath"]
    assert max(rates) == pytest.approx(0.3) and rates[0] < rates[-1]  # timm's linear per-block schedule


# ------------------------------------------------------------------ 3. augmentations and mixing
@pytest.mark.parametrize("kind", ["rrc_flip", "timm"])
def test_library_augmentations_are_seeded_and_leave_global_rngs_alone(kind):
    x, y = toy_data(8, size=32)
    aug = Augmenter(TrainConfig(augment=kind), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    a, ya = aug(x, y, torch.Generator().manual_seed(0))
    after = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(5), np.random.seed(5), torch.manual_seed(5)
    b, _ = aug(x, y, torch.Generator().manual_seed(0))
    assert (random.random(), np.random.rand(), torch.rand(1)) == after  # global RNGs as if untouched
    c, _ = aug(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(ya, y)
    if kind == "rrc_flip":
        assert a.dtype == torch.uint8 and a.shape == x.shape  # grayscale stays one channel
    else:
        assert a.dtype == torch.float32 and a.shape == (8, 3, 32, 32)  # RGB, 0-255 scale, erasing noise outside
    differs = [not torch.equal(a[i].float().expand(3, -1, -1), x[i].float().expand(3, -1, -1)) for i in range(8)]
    assert sum(differs) >= 6  # crops resize: (almost) every image changes


def test_rrc_flip_is_torchvision_random_resized_crop():
    from torchvision.transforms import v2

    x, y = toy_data(4, size=32, channels=3)
    a, _ = Augmenter(TrainConfig(augment="rrc_flip"))(x, y, torch.Generator().manual_seed(3))
    # a crop of scale >= 0.08 resized back: the per-image output lies in the input's range
    assert all(a[i].min() >= x[i].min() and a[i].max() <= x[i].max() for i in range(4))
    assert isinstance(Augmenter(TrainConfig(augment="rrc_flip"))._transform((32, 32)).transforms[0],
                      v2.RandomResizedCrop)


@pytest.mark.parametrize("mixup, cutmix", [(0.8, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixup_cutmix_soft_targets(mixup, cutmix):
    x, y = toy_data(16, size=32)
    cfg = TrainConfig(mixup=mixup, cutmix=cutmix, label_smoothing=0.0)
    aug = Augmenter(cfg, num_classes=3)
    xm, t = aug(x, y, torch.Generator().manual_seed(0))
    assert t.shape == (16, 3) and torch.allclose(t.sum(1), torch.ones(16))
    lam = t[0, y[0]].item() if y[0] != y[-1] else None
    for i in range(16):  # each target mixes the image's label and its partner's (the batch reversed)
        j = 15 - i
        expect = torch.zeros(3)
        expect[y[i]] += t[i].max() if y[i] == y[j] else t[i, y[i]]
        expect[y[j]] += 0 if y[i] == y[j] else t[i, y[j]]
        assert torch.allclose(t[i], expect)
    assert lam is None or 0 < lam < 1
    if cutmix == 0 and lam is not None:  # mixup: the image is the same convex combination
        assert torch.allclose(xm, lam * x.float() + (1 - lam) * x.float().flip(0), atol=1e-3)
    xm2, t2 = aug(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(xm, xm2) and torch.equal(t, t2)
    # label smoothing goes into the targets
    ts = Augmenter(TrainConfig(mixup=mixup, cutmix=cutmix, label_smoothing=0.3), num_classes=3)(
        x, y, torch.Generator().manual_seed(0))[1]
    assert ts.min() > 0


def test_fit_with_timm_recipe_and_mixing_is_seeded_and_drops_the_last_batch():
    cfg = TrainConfig(epochs=1, lr=1e-2, batch_size=16, augment="timm", mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    out = []
    for _ in range(2):
        model = small_resnet()
        m = fit(model, get_method("lp").trainable(model), PRE, toy_data(40, size=32), {"val": toy_data(8, 1, 32)},
                cfg, seed=2, progress=False)
        out.append((snapshot(model), m))
    assert all(torch.equal(out[0][0][k], out[1][0][k]) for k in out[0][0])
    assert out[0][1]["history"] == out[1][1]["history"]
    steps = []
    model = small_resnet()
    model.fc.register_forward_hook(lambda m, i, o: steps.append(len(o)) if m.training else None)
    fit(model, get_method("lp").trainable(model), PRE, toy_data(40, size=32), {}, cfg, progress=False)
    assert steps == [16, 16]  # 40 images: the incomplete batch of 8 is dropped (timm's loader)


def test_scorer_prefix_cache_off_under_random_inputs(tmp_path, caplog):
    torch.manual_seed(0)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, small_resnet(), Checkpoint("resnet18", 3, image_size=16,
                                                     model_kwargs={"channels": [8, 16, 32, 64]}))
    x, y = toy_data(16)
    data = {"train_x": x, "train_y": y, "val_x": x, "val_y": y}
    sc = CandidateScorer(str(path), data, 3, TrainConfig(), SelectionConfig(), fast=True)
    assert sc.use_cache and sc.together
    for kw in [{"augment": "rrc_flip"}, {"augment": "timm"}, {"mixup": 0.8}, {"cutmix": 1.0}, {"drop_path": 0.1}]:
        with caplog.at_level(logging.WARNING):
            sc = CandidateScorer(str(path), data, 3, TrainConfig(**kw), SelectionConfig(), fast=True)
        assert not sc.use_cache, kw
    assert not sc.together  # drop-path: candidates are not trained in lockstep


# ------------------------------------------------------------------ 4. BatchNorm mode
@pytest.mark.parametrize("bn_mode", ["tuned", "frozen"])
def test_bn_mode(bn_mode):
    model = small_resnet()
    before = snapshot(model)
    t = get_method("subtuning", blocks=["layer2.1"]).trainable(model)
    fit(model, t, PRE, toy_data(), {}, TrainConfig(epochs=1, lr=1e-2, batch_size=16, bn_mode=bn_mode),
        progress=False)
    after = snapshot(model)
    stats = [k for k in before if "running" in k or "num_batches" in k]
    moved = {k for k in stats if not torch.equal(before[k], after[k])}
    assert not torch.equal(before["layer2.1.conv1.weight"], after["layer2.1.conv1.weight"])
    if bn_mode == "frozen":
        assert moved == set()
    else:
        assert "layer2.1.bn1.running_mean" in moved and all(k.startswith("layer2.1.") for k in moved)


# ------------------------------------------------------------------ 5. best validation epoch
def test_best_val_restores_the_best_epoch_before_the_test():
    x, y = toy_data(48)
    xv, yv = x[:24], (y[:24] + 1) % 3  # wrong labels on training images: the more it fits, the worse
    xt, yt = toy_data(24, seed=8)
    saved = {}
    model = small_resnet()
    t = get_method("ft").trainable(model)
    cfg = TrainConfig(epochs=4, lr=3e-2, batch_size=16, epoch_select="best_val")
    m = fit(model, t, PRE, (x, y), {"val": (xv, yv)}, cfg, seed=1, progress=False, final_evals={"test": (xt, yt)},
            on_epoch=lambda row: saved.__setitem__(row["epoch"], snapshot(model)))
    accs = [r["val_acc"] for r in m["history"]]
    best = accs.index(max(accs)) + 1
    assert m["best_epoch"] == best < cfg.epochs  # the run peaks early (else the test shows nothing)
    assert m["val_acc"] == max(accs) and m["val_loss"] == m["history"][best - 1]["val_loss"]
    now = snapshot(model)
    assert all(torch.equal(now[k], saved[best][k]) for k in now)  # parameters and BatchNorm statistics
    assert not all(torch.equal(now[k], saved[cfg.epochs][k]) for k in now)
    assert m["test_acc"] == evaluate(model, PRE, xt, yt)["acc"]

    model = small_resnet()
    last = fit(model, get_method("lp").trainable(model), PRE, (x, y), {"val": (xv, yv)},
               TrainConfig(epochs=2, batch_size=16), progress=False)
    assert last["best_epoch"] == 2
    with pytest.raises(SubtuneError, match="best_val needs a validation split"):
        fit(model, get_method("lp").trainable(model), PRE, (x, y), {}, cfg, progress=False)


# ------------------------------------------------------------------ 6. FT with a frozen stem
@pytest.mark.parametrize("arch, trainable, frozen", [
    ("resnet18", 11_172_106, ["bn1", "conv1"]),  # 11,181,642 less conv1 (9,408) and bn1 (128)
    ("vit_tiny_patch16_224", 5_340_298, ["cls_token", "norm", "patch_embed", "pos_embed"]),  # less 186,048
])
def test_ft_freeze_stem_counts(arch, trainable, frozen):
    model = timm.create_model(arch, pretrained=False, num_classes=10)
    t = get_method("ft", freeze_stem=True).trainable(model)
    assert t.num_params == trainable and t.notes["frozen"] == frozen
    assert get_method("ft").trainable(model).num_params == sum(p.numel() for p in model.parameters())
    with pytest.raises(SubtuneError, match="freeze_stem"):
        get_method("ft", freeze_stem="yes")


@pytest.mark.parametrize("make, stem", [(small_resnet, ("conv1.", "bn1.")),
                                        (small_vit, ("patch_embed.", "cls_token", "pos_embed", "norm."))])
def test_ft_freeze_stem_keeps_the_stem_bit_identical(make, stem):
    model = make()
    before = snapshot(model)
    x, y = toy_data(32, size=32)
    fit(model, get_method("ft", freeze_stem=True).trainable(model), PRE, (x, y), {},
        TrainConfig(epochs=1, lr=1e-2, batch_size=16), progress=False)
    after = snapshot(model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and not any(k.startswith(stem) for k in changed)  # BatchNorm statistics included
    assert any(k.startswith(("layer1.", "blocks.0.")) for k in changed)


# ------------------------------------------------------------------ 7. per-epoch log line
def test_one_log_line_per_epoch(capsys):
    model = small_resnet()
    fit(model, get_method("lp").trainable(model), PRE, toy_data(), {"val": toy_data(16, 1)},
        TrainConfig(epochs=3, batch_size=16), progress=False, desc="lp")
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and lines[0].startswith("lp epoch 1/3: train_loss ")
    assert all(" val_acc " in ln and " lr " in ln and ln.endswith("s") for ln in lines)
    runs = []
    for blocks in (["layer4.1"], ["layer3.0"]):
        m = small_resnet()
        runs.append(Run(m, get_method("subtuning", blocks=blocks).trainable(m)))
    fit_group(runs, PRE, toy_data(), {"val": toy_data(16, 1)}, TrainConfig(epochs=2, batch_size=16), progress=False)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("2 runs epoch 2/2: train_loss ")


def test_log_line_shows_only_the_runs_still_training(capsys):
    """A run stopped early (successive halving) keeps a stale last row: the epoch's line leaves it out."""
    runs = []
    for blocks in (["layer4.1"], ["layer3.0"], ["layer2.0"]):
        m = small_resnet()
        runs.append(Run(m, get_method("subtuning", blocks=blocks).trainable(m)))
    out = fit_group(runs, PRE, toy_data(), {"val": toy_data(16, 1)}, TrainConfig(epochs=3, batch_size=16),
                    progress=False, stop=lambda epoch, rows: [0] if epoch == 1 else [])
    lines = capsys.readouterr().out.strip().splitlines()
    assert [len(o["history"]) for o in out] == [1, 3, 3]
    assert lines[0].startswith("3 runs epoch 1/3: ")
    for epoch in (2, 3):
        line = lines[epoch - 1]
        assert line.startswith(f"2 of 3 runs epoch {epoch}/3: "), line
        for key, spec in (("train_loss", ".4f"), ("val_acc", ".4f"), ("lr", ".3g")):
            vals = sorted(o["history"][epoch - 1][key] for o in out[1:])
            want = f"{key} {vals[0]:{spec}}" if f"{vals[0]:{spec}}" == f"{vals[1]:{spec}}" else \
                f"{key} {vals[0]:{spec}}-{vals[1]:{spec}}"
            assert f" {want} " in f" {line} ", (key, line)


def test_per_target_drop_path_reaches_the_model_through_the_train_command(tmp_path, monkeypatch):
    """peft-vtab.yaml's per-target SSF drop-path (targets.<task>.methods.ssf.train), as the workflow passes it
    (method_train -> the rule's --train JSON -> ``subtune train`` -> TrainConfig -> build_model's drop_path_rate),
    is active in the frozen blocks while training; a task with drop-path 0 builds no DropPath at all."""
    import json

    import subtune.train as train_mod
    from subtune.cli import main
    from subtune.config import dumps, method_train
    from subtune.data.prepared import save_prepared

    cfg = validate(yaml.safe_load((ROOT / "configs/peft-vtab.yaml").read_text()), ROOT / "schemas/config.schema.yaml")
    save_checkpoint(tmp_path / "vit.safetensors", small_vit(),
                    Checkpoint("vit_tiny_patch16_224", 3, image_size=32,
                               model_kwargs={"img_size": 32, "patch_size": 8, "depth": 4}))
    splits = {}
    for i, (s, n) in enumerate((("train", 32), ("val", 8), ("test", 8))):
        splits[f"{s}_x"], splits[f"{s}_y"] = toy_data(n, seed=i, size=32)
    save_prepared(tmp_path / "d.safetensors", tmp_path / "d.json", splits, {
        "name": "vtab-caltech101", "classes": ["0", "1", "2"], "num_classes": 3, "channels": 1, "image_size": 32,
        "splits": {"train": 32, "val": 8, "test": 8}, "seed": 0, "params": {}, "inputs": {}})
    seen = []

    def spy(model, train_modules, bn_mode="tuned", drop_path=False):
        set_modes(model, train_modules, bn_mode, drop_path)
        dps = [m for m in model.modules() if type(m).__name__ == "DropPath"]
        frozen = [m for name, m in model.named_modules() if name.startswith("blocks.") and name.count(".") == 1
                  and not m.training]
        seen.append((max((m.drop_prob for m in dps), default=0.0), any(m.training for m in dps), len(frozen)))

    monkeypatch.setattr(train_mod, "set_modes", spy)
    for target, rate in (("vtab-caltech101", 0.1), ("vtab-cifar100", 0.0)):
        train = method_train(cfg, "ssf", target)
        assert train["drop_path"] == rate  # the target's value over methods.ssf over the top-level train
        train = {k: v for k, v in train.items() if k != "warmup_lr"}  # shrunk in length only
        train.update(epochs=1, warmup_epochs=0, cooldown_epochs=0, batch_size=8)
        seen.clear()
        assert main(["train", "--method", "ssf", "--train", dumps(train), "--data", str(tmp_path / "d.safetensors"),
                     "--manifest", str(tmp_path / "d.json"), "--checkpoint", str(tmp_path / "vit.safetensors"),
                     "--out", str(tmp_path / f"{target}.json")]) == 0
        m = json.loads((tmp_path / f"{target}.json").read_text())
        assert m["train"]["drop_path"] == rate
        (built, active, n_frozen), = seen  # one epoch
        assert built == pytest.approx(rate) and active == (rate > 0) and n_frozen == 4  # SSF: every block frozen
