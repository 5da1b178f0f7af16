"""Parallel runs (`pytest -n 2 --dist loadgroup`, as `make test` does): one worker per test file by default.

Many files share expensive module-scoped fixtures (a finished workflow, a SLURM cluster, an MLflow server);
split over workers they would be built once per worker. So every test is put in its file's ``xdist_group``
unless it names its own group (tests/test_paper_configs.py: one group per config, independent runs).
Without pytest-xdist the marks do nothing.

Fixtures that several test files use live here; other shared helpers are in tests/helpers/ (a test file imports
from there, never from another test file).
"""

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "xdist_group(name): tests run on one pytest-xdist worker (--dist loadgroup)")


def pytest_itemcollected(item):
    """Each test joins its file's group as it is collected: pytest-xdist's worker reads the groups in its own
    ``pytest_collection_modifyitems``, which runs before a conftest's, so marks added there come too late (every
    test would be its own group, and a file's module-scoped fixtures would be built on both workers)."""
    if item.get_closest_marker("xdist_group") is None:
        item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))


@pytest.fixture(scope="session", autouse=True)
def _torch_threads_per_worker(worker_id):
    """Under pytest-xdist, each worker's in-process training uses its share of the cores (2 workers on 2 cores:
    one thread each). Oversubscribed OpenMP threads spin against each other and slow both workers down.
    Jobs run by Snakemake get their own thread counts (``--threads``); this is the test process only."""
    if worker_id == "master":
        yield
        return
    import torch

    n = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // n))
    yield


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A small random ResNet-18 checkpoint (4 classes, channels 8..64, 32 px): the path of its file. Module scope:
    each test file gets its own (tests/test_prefix.py, test_halving.py)."""
    import timm
    import torch

    from subtune.models.checkpoint import Checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=4, channels=(8, 16, 32, 64))
    path = tmp_path_factory.mktemp("ck") / "c.safetensors"
    save_checkpoint(path, model, Checkpoint("resnet18", 4, image_size=32, model_kwargs={"channels": [8, 16, 32, 64]}))
    return str(path)
