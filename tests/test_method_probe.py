"""Per-backbone knowledge is the method's: a method that adapts family-specific positions keeps them in one
table keyed by family name (``per_family``), so a new such method is one file.

The probe: a throwaway SSF-like method, written to a module of its own with its own per-family table for two
families, dropped into the methods package and found there; it builds, trains a step and merges on a tiny model
of each of the two families, nothing else edited. A family its table has no entry for is refused in one line
naming the method and the family, for it and for every built-in method with a table; each built-in table has an
entry for every registered family and no other.
"""

import sys

import pytest
import torch

import subtune.methods as methods_pkg
from subtune import SubtuneError
from subtune.methods import REGISTRY, fit_phases, get_method
from subtune.models.blocks import block_names, families, head_names
from subtune.models.checkpoint import create
from subtune.train import Preprocess, TrainConfig

PRE = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)
NC = 3

PROBE_METHOD = '''
"""A test method: SSF's scale and shift at its own positions, two families only."""

from subtune.methods.base import register
from subtune.methods.ssf import SSF
from subtune.models.blocks import block_names


def resnet(model):
    """After every block's second BatchNorm."""
    return [(f"{b}.bn2", 1, f"{b}.bn2") for b in block_names(model)]


def vit(model):
    """After every block's MLP output."""
    return [(f"{b}.mlp.fc2", -1, f"{b}.mlp.fc2") for b in block_names(model)]


@register
class SSFLike(SSF):
    name = "zz_ssf_like"
    label = "SSF-like"
    order = 95
    per_family = {"resnet": resnet, "vit": vit}
'''

PROBE = "zz_ssf_like"
#: the probe's positions: family -> the module, relative to each block, whose output it scales
POSITIONS = {"resnet": "bn2", "vit": "mlp.fc2"}


def tiny(name, seed=0):
    arch, kw, size = next(f for f in families() if f.name == name).tiny
    torch.manual_seed(seed)
    return create(arch, NC, **kw), size


def tiny_data(size, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, NC, (n,), generator=g))


@pytest.fixture
def probe(tmp_path, monkeypatch):
    (tmp_path / "zz_ssf_like_method.py").write_text(PROBE_METHOD)
    monkeypatch.setattr(methods_pkg, "__path__", [*methods_pkg.__path__, str(tmp_path)])
    try:
        methods_pkg.discover()
        yield REGISTRY[PROBE]
    finally:
        REGISTRY.pop(PROBE, None)
        sys.modules.pop("subtune.methods.zz_ssf_like_method", None)


@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_an_ssf_like_method_is_one_file(probe, family):
    """Built from its own table: exactly its positions' scales and shifts and the head train, one step moves
    them and nothing else, and the merged plain timm model gives the adapted model's outputs."""
    model, size = tiny(family)
    rel = POSITIONS[family]
    method = get_method(PROBE)
    model = method.wrap(model)
    t = method.trainable(model)
    heads = head_names(model)
    want = {f"{b}.{rel}.ssf_{k}" for b in block_names(model) for k in ("scale", "shift")}
    assert {n for n in t.names if not any(n.startswith(h + ".") for h in heads)} == want
    channels = sum(model.get_submodule(f"{b}.{rel}").ssf_scale.numel() for b in block_names(model))
    head = sum(p.numel() for h in heads for p in model.get_submodule(h).parameters())
    assert t.num_params == 2 * channels + head and t.notes["positions"] == len(block_names(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit_phases(model, method.phases(model), PRE, tiny_data(size), {}, TrainConfig(epochs=1, lr=1e-2, batch_size=16),
               progress=False)
    diff = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert want <= diff <= set(t.names)
    plain, _ = tiny(family, seed=5)
    plain.load_state_dict(method.merge(model), strict=True)
    x = PRE(tiny_data(size, 4, 5)[0])
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), model.eval()(x), atol=1e-5, rtol=1e-5)


def test_the_probe_refuses_a_family_it_has_no_entry_for(probe):
    model, _ = tiny("convnext")
    with pytest.raises(SubtuneError, match=f"^{PROBE}: no entry for backbone family 'convnext' "
                                           r"\(it has entries for: resnet, vit\)$"):
        get_method(PROBE).wrap(model)


TABLED = sorted(n for n, cls in REGISTRY.items() if cls.per_family)


def test_the_methods_with_per_family_knowledge_keep_it_in_a_table():
    assert {"adalora", "lora", "san", "ssf", "subtuning_lora", "surgical"} <= set(TABLED)


@pytest.mark.parametrize("name", TABLED)
def test_every_table_has_an_entry_for_every_family_and_no_other(name):
    assert set(REGISTRY[name].per_family) == {f.name for f in families()}


PARAMS = {"adalora": {"init_r": 4, "target_r": 2}, "lora": {"rank": 2}, "subtuning_lora": {"rank": 2},
          "surgical": {"group": 1}}


@pytest.mark.parametrize("name", TABLED)
def test_a_family_without_an_entry_is_refused_naming_method_and_family(name, monkeypatch):
    cls = REGISTRY[name]
    monkeypatch.delitem(cls.per_family, "resnet")
    model, _ = tiny("resnet")
    params = PARAMS.get(name, {})
    if cls.needs == "selection":
        params = {**params, "blocks": [block_names(model)[-1]]}
    method = get_method(name, **params)
    with pytest.raises(SubtuneError, match=f"^{name}: no entry for backbone family 'resnet' "):
        method.trainable(method.wrap(model))
