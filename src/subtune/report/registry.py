"""The tables' registry: ``@table("name")`` on a table function puts it in :data:`TABLES` under the name the
report stage knows it by (``subtune report NAME``), so that a new table is one module in
:mod:`subtune.report.tables`, picked up without being listed anywhere else (as ``@register`` does for methods).
"""

from __future__ import annotations

from typing import Callable, TypeVar

from .. import SubtuneError

F = TypeVar("F", bound=Callable)

#: table name -> the function that reads its inputs and writes its outputs (registration order)
TABLES: dict[str, Callable] = {}


def table(name: str) -> Callable[[F], F]:
    """Register the decorated function as table ``name``; a name taken by another function is refused (the
    same function registered again, as when its module is reloaded, replaces itself)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise SubtuneError(f"report table name {name!r} is not an identifier")

    def register(fn: F) -> F:
        old = TABLES.get(name)
        if old is not None and (old.__module__, old.__qualname__) != (fn.__module__, fn.__qualname__):
            raise SubtuneError(f"report table {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        TABLES[name] = fn
        return fn

    return register


def get_table(name: str) -> Callable:
    """The table registered as ``name``; an unknown name is refused, naming the known ones."""
    try:
        return TABLES[name]
    except KeyError:
        raise SubtuneError(f"unknown report table {name!r} (known: {', '.join(sorted(TABLES))})") from None
