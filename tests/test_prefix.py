"""Frozen-prefix caching and candidates trained together: exact against the slow path."""

import copy
import logging

import pytest
import timm
import torch

from subtune.methods.base import Method
from subtune.models.split import Staged
from subtune.prefix import PrefixCache
from subtune.scoring import CandidateScorer
from subtune.select import SelectionConfig, profile_sets
from subtune.train import Preprocess, Run, TrainConfig, fit, fit_group

from helpers.scoring import quadrant_data

CFG = TrainConfig(epochs=2, lr=3e-3, batch_size=16)


@pytest.mark.parametrize("arch, kw", [("resnet18", {"channels": (8, 16, 32, 64)}),
                                      ("vit_tiny_patch16_224", {"img_size": 32, "patch_size": 8, "depth": 4})])
def test_suffix_of_prefix_is_the_model(arch, kw):
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=3, **kw).eval()
    x = torch.randn(5, 3, 32, 32)
    st = Staged(model)
    with torch.no_grad():
        full = model(x)
        for b in range(len(st) + 1):
            assert torch.equal(st.suffix(st.prefix(x, b), b), full), b


def test_first_trainable_block():
    model = timm.create_model("resnet18", num_classes=3, channels=(8, 16, 32, 64))
    st = Staged(model)
    start = lambda names: st.first_trainable(Method.modules(model, names).names)  # noqa: E731
    assert start([]) == 8  # LP: only the head
    assert start(["layer3.1"]) == 5
    assert start(["layer4.0", "layer2.0"]) == 2
    assert start(["conv1", "layer1.0"]) is None  # the stem trains: no cache


def test_group_training_is_bitwise_the_same_as_one_by_one():
    torch.manual_seed(0)
    base = timm.create_model("resnet18", num_classes=4, channels=(8, 16, 32, 64))
    d = quadrant_data()
    pre = Preprocess((0.5,) * 3, (0.25,) * 3)
    sets = [["layer2.0"], ["layer2.0", "layer4.1"], ["layer3.1"]]
    alone = []
    for s in sets:
        m = copy.deepcopy(base)
        r = fit(m, Method.modules(m, s), pre, (d["train_x"], d["train_y"]), {"val": (d["val_x"], d["val_y"])}, CFG, 3)
        alone.append((m, r))
    runs = [Run(m, Method.modules(m, s)) for m, s in ((copy.deepcopy(base), s) for s in sets)]
    together = fit_group(runs, pre, (d["train_x"], d["train_y"]), {"val": (d["val_x"], d["val_y"])}, CFG, 3)
    for (m, r), run, r2 in zip(alone, runs, together):
        assert r["history"] == r2["history"]
        sa, sb = m.state_dict(), run.model.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("scoring", ["val", "cv"])
def test_fast_scores_equal_slow_scores(ckpt, scoring):
    """Tolerance: identical validation accuracies; losses within 1e-4 (prefix batch size may move last bits)."""
    d = quadrant_data()
    sel = SelectionConfig(scoring=scoring, folds=2)
    sets = profile_sets(Staged(timm.create_model("resnet18", channels=(8, 16, 32, 64))).block_names)[:6]
    sets += [("layer2.0", "layer4.1")]
    slow = CandidateScorer(ckpt, d, 4, CFG, sel, seed=1, fast=False).score_many(sets)
    fast_scorer = CandidateScorer(ckpt, d, 4, CFG, sel, seed=1, fast=True)
    fast = fast_scorer.score_many(sets)
    assert fast_scorer.cache.misses > 0 and fast_scorer.use_cache and fast_scorer.together
    for a, b in zip(slow, fast):
        assert a["key"] == b["key"] and a["score"] == b["score"], (a["key"], a["score"], b["score"])
        for ha, hb in zip(a["history"], b["history"]):
            assert ha["train_loss"] == pytest.approx(hb["train_loss"], abs=1e-4)


def test_augmentation_turns_the_cache_off(ckpt, caplog):
    cfg = TrainConfig(epochs=1, batch_size=16, augment="crop_flip")
    with caplog.at_level(logging.WARNING):
        sc = CandidateScorer(ckpt, quadrant_data(), 4, cfg, SelectionConfig(), fast=True)
    assert not sc.use_cache and "prefix cache off" in caplog.text
    r = sc.score_many([("layer3.0",), ("layer4.0",)])
    assert sc.cache.misses == 0 and len(r) == 2


def test_cache_budget_eviction_disk_and_keys(tmp_path):
    t = lambda n: torch.zeros(n, 2**18)  # noqa: E731  (n MiB of float32)
    c = PrefixCache(memory_mb=3)
    calls = []
    get = lambda k, n: c.get({"k": k}, lambda: calls.append(k) or t(n))  # noqa: E731
    get("a", 1), get("b", 1), get("a", 1)
    assert calls == ["a", "b"] and c.hits == 1
    get("c", 2)  # evicts the least recently used ("b")
    get("a", 1), get("b", 1)
    assert calls == ["a", "b", "c", "b"]
    # an entry over the budget goes to disk when a directory is given, and is found there again
    d = PrefixCache(memory_mb=1, disk_dir=tmp_path)
    big = d.get({"k": "big"}, lambda: torch.arange(2**19, dtype=torch.float32))
    again = PrefixCache(memory_mb=1, disk_dir=tmp_path).get({"k": "big"}, lambda: pytest.fail("recomputed"))
    assert torch.equal(big, again) and len(list(tmp_path.glob("*.npy"))) == 1
    # any change of the key (e.g. the checkpoint digest) misses
    assert PrefixCache.digest({"checkpoint": "x", "stop": 2}) != PrefixCache.digest({"checkpoint": "y", "stop": 2})


def test_a_prefix_continued_from_an_earlier_one_is_the_prefix(ckpt, monkeypatch):
    """The scorer continues a start block's prefix from the deepest one it holds: same features, and each
    frozen block runs once per image (the cache's entries are filled in network order)."""
    from subtune.prefix import compute_prefix, continue_prefix

    d = quadrant_data()
    sc = CandidateScorer(ckpt, d, 4, CFG, SelectionConfig(), seed=1)
    st = Staged(sc.base.eval())
    dev = torch.device("cpu")
    direct = compute_prefix(st, sc.pre, d["train_x"], 5, 7, dev)
    cont = continue_prefix(st, compute_prefix(st, sc.pre, d["train_x"], 2, 7, dev), 2, 5, 7, dev)
    torch.testing.assert_close(cont, direct, atol=1e-5, rtol=0)
    import subtune.scoring as scoring

    calls = []
    monkeypatch.setattr(scoring, "compute_prefix", lambda *a: calls.append(a[3]) or compute_prefix(*a))
    for b in (2, 5):
        sc._inputs("train", b)
    assert calls == [2]  # 5 continued from 2
    assert sc.cache.peek({**sc._key, "split": "train", "stop": 5}) is not None
    torch.testing.assert_close(sc._inputs("train", 5), direct, atol=1e-5, rtol=0)
    assert sc.cache.peek({**sc._key, "split": "val", "stop": 5}) is None
