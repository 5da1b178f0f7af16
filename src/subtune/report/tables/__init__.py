"""One module per table or plot family, each registering its table functions with ``@table`` (:mod:`..registry`).

Every module of this package whose name does not start with ``_`` is imported by :func:`discover` (when
:mod:`subtune.report` is imported): adding a table is adding its module here, listed nowhere else.

A module is named as the table it registers, which declares its command line too (``@table(name,
arguments=add_arguments, run=run)``): ``subtune report NAME`` finds it by that name. The first line of the
module's docstring is the table's help line; the report stage reads it from the file, without importing the module.
"""

from __future__ import annotations

from ..._lazy import import_submodules


def discover() -> list[str]:
    """Import every table module of this package (each registers its tables; importing twice is a no-op);
    returns the modules' names."""
    return [m.__name__.rpartition(".")[2] for m in import_submodules(__name__, __path__)]
