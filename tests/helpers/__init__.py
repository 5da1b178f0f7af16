"""What several test modules share: a test module imports from here (or gets a fixture from tests/conftest.py),
never from another test module, so that each test file can be read, run and moved on its own.

- :mod:`helpers.workflow`: a copy of the workflow in a temporary directory, Snakemake runs and their job counts;
- :mod:`helpers.configs`: which files in configs/ are paper configs, and which are not; configs/test.yaml and the
  config schema for the unit tests that vary it;
- :mod:`helpers.reports`: result files shaped as the workflow's stages write them, for the report's tests;
- :mod:`helpers.methods`: tiny timm models, toy data and exact trainable counts, for the methods' tests;
- :mod:`helpers.scoring`: a small learnable data set, for the selection and scoring tests;
- :mod:`helpers.archives`: tiny archives in the published formats and a loopback HTTP mirror;
- :mod:`helpers.slurm_cluster`: a throwaway single-node SLURM cluster;
- :mod:`helpers.mlflow_server`: a real ``mlflow server`` (stopped, killed, restarted) and a proxy that cuts it off.

tests/ is on ``sys.path`` (pyproject.toml's ``pythonpath``), so this package imports as ``helpers``.
"""
