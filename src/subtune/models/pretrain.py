"""Pretraining a backbone on a source dataset (the embedded default's checkpoint).

A small timm ResNet is trained from random initialisation on the source task
(all parameters, the one training loop), its source-test accuracy measured
once at the end, and the result saved as a checkpoint (safetensors plus
metadata, see :mod:`.checkpoint`; the metadata records the source classes,
so ``head: keep`` can check a target's label space against them).
"""

from __future__ import annotations

from typing import Any

import torch

from ..train import Preprocess, TrainConfig, fit
from ..trainable import Trainable
from .checkpoint import Checkpoint, create, save_checkpoint


def pretrain(
    arch: str,
    data: dict[str, torch.Tensor],
    manifest: dict[str, Any],
    out: str,
    train_cfg: TrainConfig,
    seed: int = 0,
    model_kwargs: dict[str, Any] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    model_kwargs = dict(model_kwargs or {})
    torch.manual_seed(seed)
    num_classes = int(manifest["num_classes"])
    model = create(arch, num_classes, 3, **{**model_kwargs, **train_cfg.model_kwargs()})  # drop_path: not saved
    ckpt = Checkpoint(arch=arch, num_classes=num_classes, in_chans=3, image_size=int(manifest["image_size"]),
                      model_kwargs=model_kwargs, classes=[str(c) for c in manifest["classes"]])
    pre = Preprocess(ckpt.mean, ckpt.std, ckpt.in_chans)
    trainable = Trainable.everything(model)  # every parameter: full fine-tuning from scratch
    metrics = fit(
        model, trainable, pre, (data["train_x"], data["train_y"]),
        {"val": (data["val_x"], data["val_y"])}, train_cfg, seed, device,
        final_evals={"test": (data["test_x"], data["test_y"])}, desc="pretrain",
    )
    ckpt.origin = {
        "kind": "pretrained",
        "source": manifest.get("name"),
        "source_val_acc": metrics["val_acc"],
        "source_test_acc": metrics["test_acc"],
        "seed": seed,
        "train": train_cfg.to_dict(),
    }
    model.cpu()
    save_checkpoint(out, model, ckpt)
    return metrics
