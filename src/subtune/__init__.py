"""subtune: selective and parameter-efficient fine-tuning of pretrained vision models."""

__version__ = "0.1.0"


class SubtuneError(Exception):
    """An error caused by bad input (a config key, a file, a URL, a checksum).

    The CLI prints it as one line naming the culprit and exits with status 2,
    before any expensive work starts.
    """


def dataclass_from_dict(cls, d, where: str):
    """``cls(**d)`` for a dataclass, rejecting an unknown key with a message naming ``where.key``."""
    from dataclasses import fields

    d = dict(d or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise SubtuneError(f"unknown key {where}.{unknown[0]} (known: {', '.join(sorted(known))})")
    return cls(**d)
