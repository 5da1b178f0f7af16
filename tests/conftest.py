"""Parallel runs (`pytest -n 2 --dist loadgroup`, as `make test` does): one worker per test file by default.

Many files share expensive module-scoped fixtures (a finished workflow, a SLURM cluster, an MLflow server);
split over workers they would be built once per worker. So every test is put in its file's ``xdist_group``
unless it names its own group (tests/test_paper_configs.py: one group per config, independent runs).
Without pytest-xdist the marks do nothing.
"""

import os

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "xdist_group(name): tests run on one pytest-xdist worker (--dist loadgroup)")


def pytest_collection_modifyitems(config, items):
    for item in items:
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
