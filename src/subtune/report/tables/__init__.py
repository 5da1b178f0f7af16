"""One module per table or plot family, each registering its table functions with ``@table`` (:mod:`..registry`).

Every module of this package whose name does not start with ``_`` is imported by :func:`discover` (when
:mod:`subtune.report` is imported): adding a table is adding its module here, listed nowhere else.

A module is named as the table it registers, which declares its command line too (``@table(name,
arguments=add_arguments, run=run)``): ``subtune report NAME`` finds it by that name. The first line of the
module's docstring is the table's help line; the report stage reads it from the file, without importing the module.
"""

from __future__ import annotations

import importlib
import pkgutil


def discover() -> list[str]:
    """Import every table module of this package (each registers its tables; importing twice is a no-op);
    returns the modules' names."""
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names
