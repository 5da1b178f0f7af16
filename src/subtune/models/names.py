"""Is ``backbone.arch`` a model timm can build? Answered without importing torch or timm.

The config check (:func:`subtune.config.validate`) runs on every Snakemake
invocation and in every cluster job step, and must not import torch, timm or
peft (seconds each). Yet a misspelt architecture should stop the workflow
before any download, not at pretraining an hour later. :func:`check_arch`
does it by *reading the source* of the installed timm: every architecture
timm can build is a function decorated with ``@register_model`` in
``timm/models/*.py``, and every pretrained tag is a literal ``'arch.tag'`` key
of that file's ``default_cfgs``. Scanning those ~120 files with one regular
expression takes ~30 ms.

Why a source scan rather than a committed list of ``timm.list_models()``:
pyproject pins a *range* of timm versions (``timm>=1.0.20,<2``), so a list
frozen from one version would be wrong for another (rejecting a model that the
installed timm has, or passing one it lacks), and would need regenerating at
every upgrade. The scan always describes the timm that will build the model.
Its fidelity is a test (tests/test_models_names.py): the scanned names equal
``timm.list_models()`` exactly, and every ``timm.list_pretrained()`` name
passes, for the installed timm. If a future timm registers models some other
way, that test fails rather than configs.

Accepted, exactly:

- ``name`` where ``name`` is registered with ``@register_model`` in timm or in
  :mod:`subtune.models` (our own models, e.g. a CIFAR Wide-ResNet, are
  registered with timm's decorator, and scanned the same way);
- ``name.tag`` where, in addition, ``.tag'`` ends a quoted model key in the
  file that registers ``name``. This is looser than timm's registry by design:
  a few families (e.g. ``qwen3_vit_*_enc``) derive their tagged names in code
  from a base model's literal key; matching the tag within the same file
  accepts those and still rejects a misspelt or foreign tag. Tags without
  weights (``.untrained``) pass, as timm builds them with ``pretrained=False``;
- ``hf-hub:…``, ``hf_hub:…`` and ``local-dir:…`` names pass unchecked (timm
  resolves them from the Hub or disk; the fetch stage reports its errors).

Not accepted: names timm lists only as deprecated aliases (``timm.is_model``,
which the checkpoint code uses, rejects them too).
"""

from __future__ import annotations

import difflib
import functools
import importlib.metadata
import importlib.util
import re
from pathlib import Path

from .. import SubtuneError

# `@register_model` (possibly followed by other decorators) then `def name(`
_REGISTER = re.compile(r"^@register_model\b[^\n]*\n(?:@[^\n]*\n)*def\s+(\w+)\s*\(", re.M)
_PREFIXES = ("hf-hub:", "hf_hub:", "local-dir:")
OWN_MODELS_DIR = Path(__file__).resolve().parent


def _timm_models_dir() -> Path:
    spec = importlib.util.find_spec("timm")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise SubtuneError("timm is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


@functools.lru_cache(maxsize=4)
def _scan(timm_dir: Path, own_dir: Path) -> dict[str, Path]:
    """{registered model name: the file registering it}, timm's then ours."""
    out: dict[str, Path] = {}
    for d in (timm_dir, own_dir):
        for f in sorted(d.glob("*.py")):
            text = f.read_text(encoding="utf-8", errors="replace")
            if "register_model" in text:
                for name in _REGISTER.findall(text):
                    out.setdefault(name, f)
    return out


def registered_models() -> dict[str, Path]:
    """Every model name timm (as installed) and :mod:`subtune.models` register, with its source file."""
    return _scan(_timm_models_dir(), OWN_MODELS_DIR)


def _tag_known(file: Path, tag: str) -> bool:
    text = file.read_text(encoding="utf-8", errors="replace")
    return re.search(r"""['"][\w-]+\.""" + re.escape(tag) + r"""['"]\s*:""", text) is not None


def _tags_in(file: Path, name: str) -> list[str]:
    text = file.read_text(encoding="utf-8", errors="replace")
    return sorted(set(re.findall(r"""['"]""" + re.escape(name) + r"""\.([\w-]+)['"]\s*:""", text)))


def _timm_version() -> str:
    try:
        return importlib.metadata.version("timm")
    except importlib.metadata.PackageNotFoundError:
        return "?"


def check_arch(arch: str, key: str = "backbone.arch") -> None:
    """Raise a one-line :class:`SubtuneError` naming ``key`` unless timm can build ``arch`` (see module doc)."""
    if not isinstance(arch, str) or not arch:
        raise SubtuneError(f"bad config value {key}: {arch!r} is not a model name")
    if arch.startswith(_PREFIXES):
        return
    models = registered_models()
    name, _, tag = arch.partition(".")
    if name not in models:
        close = difflib.get_close_matches(name, list(models), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else " (see timm.list_models())"
        raise SubtuneError(f"unknown model {key} {arch!r}: timm {_timm_version()} has no model {name!r}{hint}")
    if tag and not _tag_known(models[name], tag):
        tags = _tags_in(models[name], name)
        close = difflib.get_close_matches(tag, tags, n=3, cutoff=0.5) or tags[:5]
        hint = f"; known tags include {', '.join(f'{name}.{t}' for t in close)}" if close else ""
        raise SubtuneError(
            f"unknown pretrained tag {key} {arch!r}: timm {_timm_version()} has no tag {tag!r} for {name}{hint}"
        )
