"""What each method needs from earlier workflow stages (importable without torch).

The workflow builds its job graph from this (``rules/*.smk``), also in the job
steps a cluster runs, which then need not import torch, timm and peft (a few
seconds per job) just to parse the Snakefile. The methods read their
``needs`` from here when they register (:func:`subtune.methods.base.register`).

``None``: nothing; ``"selection"``: the greedily selected blocks (SubTuning's
rounds); ``"surgical"``: the block group chosen on validation.
"""

from __future__ import annotations

NEEDS: dict[str, str] = {
    "subtuning": "selection",
    "subtuning_lora": "selection",
    "surgical": "surgical",
}


def method_needs(name: str) -> str | None:
    return NEEDS.get(name)
