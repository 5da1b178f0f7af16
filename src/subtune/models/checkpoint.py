"""Checkpoints: one safetensors file of weights plus a JSON sidecar of metadata.

A checkpoint comes from one of three places (``python -m subtune fetch`` /
``pretrain``):

- the timm / Hugging Face hub by name (``resnet50.tv2_in1k``);
- a local weights file for a named timm architecture (``--file PATH``);
- pretraining on a source dataset (the embedded default, see ``pretrain.py``).

Whatever the origin, it is saved the same way: ``NAME.safetensors`` holds the
full state dict (the source head included) with the metadata also embedded
under the ``subtune`` key, and ``NAME.json`` holds the metadata alone (arch,
timm kwargs, number of source classes, input size, normalisation, origin and,
for pretraining, the source-test accuracy) so that the workflow and reports can
read it without loading tensors; the sidecar also records ``sha256``, the
tensor file's digest, which :func:`load_checkpoint` checks before reading the
weights (a truncated or altered file stops the job in one line naming it and
``snakemake --forcerun pretrain`` or ``fetch``). ``classes`` records the source head's class
names in label order when known (pretraining writes the source manifest's;
hub/file checkpoints leave it null unless timm's ``pretrained_cfg`` has
``label_names``); ``targets.<name>.head: keep`` compares it with the target's
(:func:`check_keep_head`).

Importing this module registers our own timm architectures (:mod:`.wrn`).
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .. import SubtuneError
from ..io import atomic_path, sha256_file, verify_sha256
from ..train_config import HEAD_INITS
from . import wrn  # noqa: F401  (registers wrn28_10_cifar in timm's model registry)


@dataclass
class Checkpoint:
    arch: str
    num_classes: int
    in_chans: int = 3
    image_size: int = 224
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    origin: dict[str, Any] = field(default_factory=dict)
    classes: list[str] | None = None
    path: str | None = None

    def meta(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d


def sidecar(path: str | os.PathLike) -> Path:
    return Path(path).with_suffix(".json")


def init_head(model: nn.Module, how: str = "default") -> None:
    """Initialise ``model``'s classifier (``get_classifier()``) the ``how`` way (``train.head_init``).

    ``default`` leaves it as built (timm's ``reset_classifier``: torch's ``nn.Linear`` initialisation).
    ``trunc_normal``: every Linear/Conv weight of the classifier from timm's ``trunc_normal_`` (std 0.02,
    cut at +-2), every bias 0: timm 0.6.5's ``init_weights_vit_timm``, which the head that SSF's
    ``create_model(num_classes=...)`` builds gets (SSF ``models/vision_transformer.py``; SAN pins timm 0.6.5 in
    ``setup.sh`` and builds its head the same way), whereas timm >= 0.9's ``reset_classifier`` leaves torch's.
    Draws from the global torch RNG (the caller seeds it).
    """
    if how not in HEAD_INITS:
        raise SubtuneError(f"head_init must be one of {', '.join(HEAD_INITS)}, not {how!r}")
    if how == "default":
        return
    from timm.layers import trunc_normal_

    head = model.get_classifier()
    layers = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise SubtuneError(f"head_init {how}: {type(model).__name__}'s classifier ({type(head).__name__}) has no "
                           "Linear or Conv2d layer to initialise")
    with torch.no_grad():
        for m in layers:
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def create(arch: str, num_classes: int, in_chans: int = 3, head_init: str = "default", **kwargs) -> nn.Module:
    """A randomly initialised timm ``arch`` (its classifier initialised the ``head_init`` way, :func:`init_head`)."""
    import timm

    if not timm.is_model(arch.split(".")[0]):
        raise SubtuneError(f"unknown timm model {arch!r} (see timm.list_models())")
    model = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    init_head(model, head_init)
    return model


def save_checkpoint(path: str | os.PathLike, model: nn.Module, ckpt: Checkpoint) -> None:
    """Save ``model``'s weights and ``ckpt``'s metadata with the weights' SHA-256 atomically (two files; the
    sidecar is renamed into place last, once the weights it describes are)."""
    from safetensors.torch import save_file

    meta = ckpt.meta()
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(sidecar(path)) as tmp_meta, atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"subtune": json.dumps(meta, sort_keys=True)})
        tmp_meta.write_text(json.dumps({**meta, "sha256": sha256_file(tmp)}, indent=2, sort_keys=True) + "\n")


def verify_checkpoint(path: str | os.PathLike) -> None:
    """Check ``path`` against the ``sha256`` its sidecar records, when it records one.

    The error names the file and the rule that makes it: ``pretrain`` for a backbone pretrained here, else
    ``fetch``. A sidecar that is missing, unreadable or without a digest (written before sidecars had one)
    leaves the weights unchecked.
    """
    meta_path = sidecar(path)
    try:
        meta = json.loads(meta_path.read_text())
        recorded, kind = meta.get("sha256"), (meta.get("origin") or {}).get("kind")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(recorded, str):
        rule = "pretrain" if kind == "pretrained" else "fetch"
        verify_sha256(path, recorded, meta_path, f"snakemake --forcerun {rule}")


def load_checkpoint(path: str | os.PathLike) -> tuple[Checkpoint, dict[str, torch.Tensor]]:
    """The checkpoint's metadata and weights, after checking the weights' digest (:func:`verify_checkpoint`)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise SubtuneError(f"missing checkpoint file: {path}")
    verify_checkpoint(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get("subtune")
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise SubtuneError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if raw is None:
        raise SubtuneError(f"{path}: safetensors file without subtune metadata (use `subtune fetch --file`)")
    meta = json.loads(raw)
    meta["mean"], meta["std"] = tuple(meta["mean"]), tuple(meta["std"])
    return Checkpoint(**meta, path=str(path)), state


def check_keep_head(ckpt: Checkpoint, num_classes: int, classes: list[str] | None = None,
                    target: str | None = None) -> None:
    """Refuse ``head: keep`` when the source head's label space is not the target's (one line, naming both).

    The number of classes must match; the class names (in label order) too
    when both the checkpoint and the target record them.
    """
    who = f"targets.{target}.head: keep" if target else "head keep"
    src = ckpt.origin.get("source") or ckpt.origin.get("name") or ckpt.arch
    if ckpt.num_classes != num_classes:
        raise SubtuneError(f"{who}: the checkpoint's head ({src}) has {ckpt.num_classes} classes, the target "
                           f"{num_classes}; keep needs the same label space (use head: new)")
    if ckpt.classes is not None and classes is not None and list(ckpt.classes) != list(classes):
        diff = next(i for i, (a, b) in enumerate(zip(ckpt.classes, classes)) if a != b)
        raise SubtuneError(f"{who}: the checkpoint's class {diff} is {ckpt.classes[diff]!r} ({src}), the target's "
                           f"{classes[diff]!r}; keep needs the same label space (use head: new)")


def build_model(path: str | os.PathLike, num_classes: int, seed: int = 0, keep_head: bool = False,
                classes: list[str] | None = None, target: str | None = None, head_init: str = "default",
                **create_kwargs) -> tuple[nn.Module, Checkpoint]:
    """The checkpoint's backbone with a fresh ``num_classes`` head (initialised from ``seed``).

    ``keep_head``: keep the checkpoint's own (source) head instead, after
    :func:`check_keep_head` (``classes``/``target`` name the target's label
    space in the error). ``head_init``: how the fresh head is initialised
    (:func:`init_head`; ``train.head_init``, passed by ``TrainConfig.model_kwargs``
    with the other build arguments). ``create_kwargs`` are extra
    ``timm.create_model`` arguments that change no weight (``drop_path_rate``);
    they override the checkpoint's ``model_kwargs``.
    """
    if head_init not in HEAD_INITS:
        raise SubtuneError(f"head_init must be one of {', '.join(HEAD_INITS)}, not {head_init!r}")
    ckpt, state = load_checkpoint(path)
    if keep_head:
        check_keep_head(ckpt, num_classes, classes, target)
    model = create(ckpt.arch, ckpt.num_classes, ckpt.in_chans, **{**ckpt.model_kwargs, **create_kwargs})
    model.load_state_dict(state, strict=True)
    if keep_head:
        return model, ckpt
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        model.reset_classifier(num_classes)
        init_head(model, head_init)
    return model, ckpt


def _data_config(model: nn.Module) -> dict[str, Any]:
    import timm.data

    cfg = timm.data.resolve_model_data_config(model)
    return {"image_size": int(cfg["input_size"][-1]), "mean": tuple(cfg["mean"]), "std": tuple(cfg["std"])}


def _label_names(model: nn.Module) -> list[str] | None:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    return [str(n) for n in names] if names and len(names) == model.num_classes else None


def _unreachable_hub(arch: str, timeout: float = 5.0) -> str | None:
    """Why the host serving ``arch``'s weights cannot be reached (None if it can).

    A quick TCP probe, so that an offline machine fails in seconds instead of
    sitting through huggingface_hub's retries; a cached copy is still used.
    """
    import socket
    from urllib.parse import urlparse

    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        import huggingface_hub.constants as hc

        url = os.environ.get("HF_ENDPOINT") or hc.ENDPOINT
    else:
        url = cfg.url or ""
    u = urlparse(url)
    if not u.hostname:
        return None
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname, port), timeout=timeout).close()
    except OSError as exc:
        return f"{u.hostname}:{port} unreachable: {exc}"
    return None


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Run huggingface_hub in offline mode (cache only) while ``offline``."""
    if not offline:
        yield
        return
    import huggingface_hub.constants as hc

    old = hc.HF_HUB_OFFLINE
    hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE = old


def fetch(arch: str, out: str | os.PathLike, file: str | os.PathLike | None = None, **model_kwargs) -> Checkpoint:
    """Fetch pretrained weights from the hub (or a local ``file``) and save them as a checkpoint."""
    import timm

    base = arch.split(".")[0]
    if not timm.is_model(base):
        raise SubtuneError(f"unknown timm model {arch!r} (see timm.list_models())")
    kwargs = dict(model_kwargs)
    if file is not None:
        file = Path(file)
        if not file.is_file():
            raise SubtuneError(f"missing weights file for {arch}: {file}")
        # timm's own format (.pth/.bin/.safetensors, as on the timm/ hub repos) loads through its
        # state-dict path; a big_vision .npz (the original AugReg / in21k ViT files) through the
        # model's custom loader (VisionTransformer.load_pretrained)
        kwargs["pretrained_cfg_overlay"] = dict(file=str(file.resolve()), custom_load=file.suffix == ".npz")
    unreachable = None if file is not None else _unreachable_hub(arch)
    try:
        with _hub_offline(unreachable is not None):
            model = timm.create_model(arch, pretrained=True, **kwargs)
    except SubtuneError:
        raise
    except Exception as exc:  # network, hub, and file-format errors alike
        if file is not None:
            raise SubtuneError(f"cannot load {file} as weights of {arch}: {type(exc).__name__}: {exc}") from None
        reason = unreachable or (str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise SubtuneError(
            f"cannot download pretrained weights for {arch!r} ({type(exc).__name__}: {reason[:200]}); "
            f"offline? provide a local file (backbone.file in the config, or `subtune fetch --file PATH`) "
            f"or a hub mirror (HF_ENDPOINT=http://mirror)"
        ) from None
    dc = _data_config(model)
    ckpt = Checkpoint(
        arch=arch,
        num_classes=model.num_classes,
        in_chans=model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels,
        image_size=dc["image_size"],
        model_kwargs={k: v for k, v in model_kwargs.items()},
        mean=dc["mean"],
        std=dc["std"],
        origin={"kind": "file" if file else "hub", "name": arch, **({"file": str(file)} if file else {})},
        classes=_label_names(model),
    )
    save_checkpoint(out, model, ckpt)
    return ckpt
