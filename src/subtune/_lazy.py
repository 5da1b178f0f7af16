"""A module imported on first attribute access (keeps torch out of config validation).

``nn = lazy("torch.nn")`` at the top of a module costs nothing; the first
``nn.Linear`` imports ``torch.nn``. Validating a config (Snakemake does it on
every invocation, and per job step on a cluster) then needs no torch, timm or
peft: those take seconds to import.
"""

from __future__ import annotations

import importlib
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
