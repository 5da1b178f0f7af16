"""Backbone family records (subtune.models.families): every registered record is complete and consistent on
its tiny instance (no family is listed here: a new record is checked by adding it), with the methods' per-family
entries for it; its blocks and stem are timm's layer map where the class has one; and ConvNeXt gives exact
trainable-parameter counts computed from the architecture's layout, in both of timm's ConvNeXt block layouts
(Linear MLP on channels-last tensors; 1x1-conv MLP) and with the final norm before the pooling.

The method contract tests over every family (only named parameters change, frozen weights bit-identical,
merging into a plain timm model) are tests/test_methods.py's; the prefix/suffix split is tests/test_models.py's;
the multi-task model tests/test_multitask.py's: all parametrised over the registry.
"""

import pytest
import torch

from subtune.methods import fit_phases, get_method, surgical_groups
from subtune.methods._channels import out_channels
from subtune.methods.san import san_wiring
from subtune.methods.ssf import ssf_positions
from subtune.models.blocks import block_names, families, family, head_names, module_params, stem_names
from subtune.models.checkpoint import create
from subtune.models.families import family_for_arch, matcher_blocks
from subtune.models.split import Staged
from subtune.train import Preprocess, TrainConfig

FAMILIES = families()
PRE = Preprocess((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), 3)
NC = 3


def tiny(fam, seed=0):
    arch, kw, size = fam.tiny
    torch.manual_seed(seed)
    return create(arch, NC, **kw).eval(), size


def is_module(model, name):
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_every_record_is_complete_on_its_tiny_instance(fam):
    model, size = tiny(fam)
    assert family(model) is fam and family_for_arch(fam.tiny[0], **fam.tiny[1]) is fam
    blocks = block_names(model)
    assert len(blocks) >= 3 and len(set(blocks)) == len(blocks) and all(is_module(model, b) for b in blocks)
    assert all(any(n.startswith(b + ".") for n, _ in model.named_parameters()) for b in blocks)
    stem = fam.stem_of(model)
    assert stem and all(isinstance(getattr(model, s, None), torch.nn.Parameter) or is_module(model, s) for s in stem)
    trans = fam.transitions(model)
    assert set(trans) <= set(blocks) and all(is_module(model, t) for t in trans.values())
    assert all(not t.startswith(b + ".") for t in trans.values() for b in blocks)  # a transition is in no block
    # every parameter is in exactly one place: stem, a block, a transition, the tail or the head
    places = [*stem, *blocks, *trans.values(), *fam.tail, *head_names(model)]
    for n, _ in model.named_parameters():
        assert sum(n == p or n.startswith(p + ".") for p in places) == 1, n
    # Surgical: every block in exactly one group, in order; every group trains something
    groups = surgical_groups(model)
    assert [b for g in groups for b in g if b in blocks] == blocks
    assert all(module_params(model, g) for g in groups)
    # LoRA's default targets: Linear/Conv2d layers inside the blocks
    lora = get_method("lora", rank=2).targets(model)
    assert lora and all(isinstance(model.get_submodule(t), (torch.nn.Linear, torch.nn.Conv2d)) for t in lora)
    assert all(any(t.startswith(b + ".") for b in blocks) for t in lora)
    # SSF / SAN: the named channel dim of each position's output has the module's channels
    ssf = ssf_positions(model)
    san = san_wiring(model)
    assert ssf and san and {a for _, _, a, _ in san if a} <= {n for n, _, _, _ in san}
    seen = {}

    def record(name):
        def hook(module, inputs, output):
            seen[name] = output.shape

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(record(n)) for n in {p[0] for p in ssf + san}]
    with torch.no_grad():
        model(torch.randn(2, 3, size, size))
    for h in hooks:
        h.remove()
    # (the channels of the module each scale merges into: the scaled module may hold none, e.g. an Identity
    # between a norm and its activation)
    for name, dim, *rest in ssf + san:
        assert seen[name][dim] == out_channels(model.get_submodule(rest[-1])), (name, seen[name], dim)


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
def test_blocks_and_stem_are_timms_layer_map_where_it_has_one(fam):
    """timm's own grouping (``group_parameters`` with the model's ``group_matcher``, what its layer decay reads)
    puts each block's parameters in one layer of their own, in network order, and the stem's in layer 0; a
    record whose class has no matcher names its blocks and stem."""
    from timm.models import group_parameters

    model, _ = tiny(fam)
    if not callable(getattr(model, "group_matcher", None)):
        assert fam.blocks is not matcher_blocks and fam.stem
        return
    layer = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    ids = [{layer[n] for n, _ in module_params(model, [b])} for b in block_names(model)]
    assert all(len(i) == 1 for i in ids)
    assert [min(i) for i in ids] == sorted({min(i) for i in ids})  # distinct, increasing
    assert {layer[n] for n, _ in module_params(model, stem_names(model))} == {0}


# ------------------------------------------------------------------ ConvNeXt: exact counts from the layout
def convnext_layout(dims, depths):
    """Per-part parameter counts of a timm ConvNeXt (stem 4x4 conv + LayerNorm2d, per-stage downsample
    LayerNorm2d + 2x2 conv, blocks: 7x7 depthwise conv, norm, MLP 4x, layer scale; head.norm, head.fc)."""
    parts = {"stem.0": (3 * 16 * dims[0], dims[0]), "stem.1": (dims[0], dims[0])}  # (weights, biases)
    for s, (d, n) in enumerate(zip(dims, depths)):
        if s:
            c = dims[s - 1]
            parts[f"stages.{s}.downsample.0"] = (c, c)
            parts[f"stages.{s}.downsample.1"] = (c * d * 4, d)
        for i in range(n):
            b = f"stages.{s}.blocks.{i}"
            parts.update({f"{b}.conv_dw": (49 * d, d), f"{b}.norm": (d, d), f"{b}.mlp.fc1": (4 * d * d, 4 * d),
                          f"{b}.mlp.fc2": (4 * d * d, d), f"{b}.gamma": (d, 0)})
    parts["head.norm"] = (dims[-1], dims[-1])
    return parts


def is_norm(n):
    return n == "stem.1" or n == "norm_pre" or n.endswith((".norm", ".downsample.0"))


DIMS, DEPTHS = (8, 16, 32, 64), (1, 1, 2, 1)
# convnext_tiny: Linear MLP on channels-last tensors; convnext_atto: conv_mlp (1x1 convolutions, LayerNorm2d);
# convnext_tiny_hnf: head_norm_first (norm_pre is the final norm, before the pooling)
VARIANTS = ["convnext_tiny", "convnext_atto", "convnext_tiny_hnf"]


def convnext(arch, seed=0):
    torch.manual_seed(seed)
    return create(arch, NC, dims=DIMS, depths=DEPTHS, ls_init_value=1.0)


def expected(name, parts, final_norm):
    head = DIMS[-1] * NC + NC
    size = lambda n: sum(parts[n])  # noqa: E731
    under = lambda pre: sum(size(n) for n in parts if n.startswith(pre + "."))  # noqa: E731
    blocks = [n.rsplit(".", 1)[0] for n in parts if n.endswith(".conv_dw")]
    out = lambda n: parts[n][0] if is_norm(n) else parts[n][1]  # noqa: E731  (output channels)
    ssf_pos = ["stem.0", "stem.1", *[n for n in parts if ".downsample." in n],
               *[f"{b}.{r}" for b in blocks for r in ("conv_dw", "norm", "mlp.fc1", "mlp.fc2")], final_norm]
    san_pos = ["stem.0", *[n for n in parts if n.endswith("downsample.1")],
               *[f"{b}.{r}" for b in blocks for r in ("conv_dw", "mlp.fc1", "mlp.fc2")]]
    norms = [n for n in parts if is_norm(n)]
    return {
        # rank 2: A (r x d_in) and B (d_out x r) on fc1 (d -> 4d) and fc2 (4d -> d)
        "lora": sum(2 * 2 * (d + 4 * d) for b in blocks for d in [parts[f"{b}.norm"][0]]) + head,
        "ssf": 2 * sum(out(n) for n in ssf_pos) + head,
        "san": sum(out(n) for n in san_pos) + sum(size(n) for n in norms) + head,
        "bitfit": sum(b for _, b in parts.values()) + head,
        "surgical": under("stages.1") + head,
        "subtuning": under("stages.2.blocks.1") + head,
    }[name]


PARAMS = {"lora": {"rank": 2}, "ssf": {}, "san": {}, "bitfit": {}, "surgical": {"group": 1},
          "subtuning": {"blocks": ["stages.2.blocks.1"]}}


@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("name", list(PARAMS))
def test_exact_trainable_counts_convnext(arch, name):
    model = convnext(arch)
    parts = convnext_layout(DIMS, DEPTHS)
    final = "norm_pre" if arch.endswith("_hnf") else "head.norm"
    if final == "norm_pre":
        parts["norm_pre"] = parts.pop("head.norm")
    assert sum(w + b for w, b in parts.values()) + DIMS[-1] * NC + NC == sum(p.numel() for p in model.parameters())
    method = get_method(name, **PARAMS[name])
    model = method.wrap(model)
    assert method.trainable(model).num_params == expected(name, parts, final)


@pytest.mark.parametrize("arch", VARIANTS)
@pytest.mark.parametrize("name", ["lora", "ssf", "san"])
def test_convnext_layouts_train_and_merge(arch, name):
    """Both block layouts and the head-norm-first variant: one step changes only the named parameters, the
    merged plain timm model gives the adapted model's outputs, and the split is exact."""
    model = convnext(arch)
    st = Staged(model.eval())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(st.suffix(st.prefix(x, b), b), model(x)) for b in range(len(st) + 1))
    method = get_method(name, **PARAMS[name])
    model = method.wrap(model)
    phases = method.phases(model)
    names = set().union(*(t.names for t, _ in phases))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    data = (torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=g),
            torch.randint(0, NC, (16,), generator=g))
    fit_phases(model, phases, PRE, data, {}, TrainConfig(epochs=1, lr=1e-2, batch_size=16), progress=False)
    diff = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert diff and diff <= names
    plain = convnext(arch, seed=5)
    plain.load_state_dict(method.merge(model), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), model.eval()(x), atol=1e-5, rtol=1e-5)


def test_convnext_downsample_trains_with_its_stage_and_keeps_the_prefix_cache():
    """A stage's downsample is in no block; Surgical's group trains it, and the split starts that group's
    suffix at the stage's first block (the frozen prefix can still be cached)."""
    model = convnext("convnext_tiny")
    t = get_method("surgical", group=2).trainable(model)
    assert any(n.startswith("stages.2.downsample.") for n in t.names)
    assert Staged(model).first_trainable(t.names) == block_names(model).index("stages.2.blocks.0")
    assert Staged(model).first_trainable(["head.norm.weight", "head.fc.weight"]) == len(block_names(model))
    assert Staged(model).first_trainable(["stem.0.weight"]) is None


# ------------------------------------------------------------------ every kind a method names moves, on every family
KINDS = ("lora_A", "lora_B", "lora_E", "lora_magnitude_vector", "modules_to_save", "ssf_scale", "ssf_shift",
         "san_scale")
METHODS = [("bitfit", {}), ("lora", {"rank": 2}), ("lora", {"rank": 2, "variant": "dora"}), ("ssf", {}),
           ("san", {}), ("subtuning_lora", {"rank": 2}), ("adalora", {"init_r": 4, "target_r": 2})]


@pytest.mark.parametrize("fam", FAMILIES, ids=lambda f: f.name)
@pytest.mark.parametrize("name,params", METHODS, ids=[f"{n}-{p.get('variant', '')}".rstrip("-") for n, p in METHODS])
def test_every_kind_of_named_parameter_moves_and_no_frozen_statistic(fam, name, params):
    """One short fit: only named parameters change, every kind of them moved (head, adapters, scales, shifts,
    biases, norm affines), and no buffer (BatchNorm statistics) of a frozen module moved."""
    model, size = tiny(fam)
    heads = head_names(model)
    if name == "subtuning_lora":
        params = {**params, "blocks": [block_names(model)[-1]]}
    method = get_method(name, **params)
    model = method.wrap(model)
    t = method.trainable(model)

    def kind(n):
        k = next((k for k in KINDS if k in n), None)
        if k:
            return k
        plain = n.removeprefix("base_model.model.")
        return "head" if any(plain.startswith(h + ".") for h in heads) else n.rsplit(".", 1)[-1]

    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    data = (torch.randint(0, 256, (32, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, NC, (32,), generator=g))
    fit_phases(model, method.phases(model), PRE, data, {}, TrainConfig(epochs=1, lr=1e-2, batch_size=16),
               progress=False)
    after = model.state_dict()
    diff = {k for k in before if not torch.equal(before[k], after[k])}
    assert diff and diff <= set(t.names)
    assert {kind(n) for n in diff} == {kind(n) for n in t.names}
    buffers = [n for n, _ in model.named_buffers() if n in before]
    assert all(torch.equal(before[b], after[b]) for b in buffers)
