"""Datasets: download (mirrors, checksums), raw parsers, corruptions, prepared splits.

- :mod:`.download`: :func:`~.download.fetch` / :func:`~.download.fetch_all` and the ``download`` stage.
- :mod:`.fashion_mnist`, :mod:`.digits`: raw datasets (files, checksums, parsers) and their targets.
- :mod:`.cifar` (CIFAR-10/100), :mod:`.cifar10c` (CIFAR-10-C), :mod:`.flowers102`,
  :mod:`.caltech101`, :mod:`.vtab` (VTAB-1k, NOAH's format): colour raw datasets
  (archives, pinned digests, parsers that read straight from the archives);
  :mod:`.rgb` decodes and resizes their images.
- :mod:`.corruptions`: CIFAR-10-C-style corruptions of grayscale images.
- :mod:`.images`: the one resize every dataset uses.
- :mod:`.prepared`: the prepared-dataset format (safetensors + JSON manifest).
- :mod:`.registry`: what each dataset module registers (its raw files with digests and mirrors, its target
  builders) and the split helpers; adding a dataset is adding its module.
- :mod:`.targets`: the datasets a config can name (read from the registry), ``validate`` and ``build``.
"""
