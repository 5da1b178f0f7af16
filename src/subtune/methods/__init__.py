"""Methods: what trains. One module per method, one interface (:mod:`.base`)."""

from . import baselines, subtuning, surgical  # noqa: F401  (registration)
from .base import REGISTRY, Method, Trainable, get_method, register
from .surgical import surgical_groups

__all__ = ["REGISTRY", "Method", "Trainable", "get_method", "register", "surgical_groups"]
