"""A module imported on first attribute access (keeps torch out of config validation).

``nn = lazy("torch.nn")`` at the top of a module costs nothing; the first
``nn.Linear`` imports ``torch.nn``. Validating a config (Snakemake does it on
every invocation, and per job step on a cluster) then needs no torch, timm or
peft: those take seconds to import.

:func:`submodules` and :func:`import_submodules` find a package's modules
without a list of them: the registries (the CLI's stages, the methods, the
report's tables, the backbone families) are "every module of the package",
so adding one is adding its module.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Collection, Iterable, Iterator
from types import ModuleType
from typing import Any


class lazy:  # noqa: N801  (used like a module)
    __slots__ = ("_name", "_module")

    def __init__(self, name: str):
        self._name = name
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def submodules(path: Iterable[str], *, skip: Collection[str] = (), sort: bool = False) -> list[pkgutil.ModuleInfo]:
    """The modules in a package's directories ``path`` (its ``__path__``, which a test or plugin may extend).

    One rule for every registry: a name starting with ``_`` is a private helper, never a registered module, and
    a name in ``skip`` is one the caller knows registers nothing. A name held by two directories is the first
    one's, as on import. pkgutil's order (directory by directory, by name within each) unless ``sort``: by name
    across all. Takes the directories rather than the package, so a caller can list a package without importing
    it (the report stage lists its tables without pandas); ``module_finder.path`` is each module's directory.
    """
    found = [m for m in pkgutil.iter_modules(list(path)) if not m.name.startswith("_") and m.name not in skip]
    return sorted(found, key=lambda m: m.name) if sort else found


def import_submodules(package: str, path: Iterable[str], *, skip: Collection[str] = (),
                      sort: bool = False) -> Iterator[ModuleType]:
    """Import the modules :func:`submodules` finds in ``package`` (at ``path``), one by one, in its order.

    A generator: a caller that checks each module (does it define its record?) reports the first bad one
    before the later ones are imported, and one that only needs the side effect (registration) runs it with
    ``for _ in ...``. A module already imported is not imported again.
    """
    for m in submodules(path, skip=skip, sort=sort):
        yield importlib.import_module(f"{package}.{m.name}")
