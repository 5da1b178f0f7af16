"""A small learnable data set for the selection and scoring tests (tests/test_prefix.py, test_halving.py); their
checkpoint is tests/conftest.py's ``ckpt`` fixture."""

import torch


def quadrant_data(n=64, nv=32, seed=0):
    """``n`` training and ``nv`` validation 32 px grey images, 4 classes: the class is the brightest quadrant."""
    g = torch.Generator().manual_seed(seed)
    # learnable labels: the class is the brightest quadrant
    x = torch.randint(0, 120, (n + nv, 1, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 4, (n + nv,), generator=g)
    for i, c in enumerate(y.tolist()):
        r, q = divmod(c, 2)
        x[i, :, r * 16 : r * 16 + 16, q * 16 : q * 16 + 16] += 100
    return {"train_x": x[:n], "train_y": y[:n], "val_x": x[n:], "val_y": y[n:]}
