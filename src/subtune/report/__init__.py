"""Tables and plots of an experiment (pandas + matplotlib, no pyplot state).

Each table function takes explicit input files and writes explicit outputs
atomically (:func:`subtune.io.atomic_path`). Accuracies in the inputs are
fractions; in every table and plot written here they are **percentages**
(and gains are percentage points). Standard deviations are sample standard
deviations over seeds (``ddof=1``), 0 when there is one seed.

Layout: :mod:`.format` (Markdown tables, numbers, colours and markers, the
writers), :mod:`.load` (reading and checking the input files), the sections
several tables share (:mod:`.summary`, :mod:`.published`, :mod:`.vtab`,
:mod:`.cost`), and :mod:`.tables`, one module per table. Each table function
is registered with ``@table("name")`` (:mod:`.registry`) under the name the
report stage knows it by, and :data:`TABLES` holds them all:

- ``main`` (:func:`main_table`): method x target test accuracy (mean ± std
  over seeds), trainable parameters, seeds; plus the source checkpoint's
  accuracy, the blocks each run fine-tuned, the epoch chosen on validation
  (``epoch_select: best_val``), the cost of every method and, when the
  targets include VTAB-1k tasks, the two VTAB-1k averages (:func:`vtab_means`).
- ``profile`` (:func:`profile`): the fine-tuning profile of one target
  (SubTuning Figs 1-2).
- ``rounds`` (:func:`rounds`): the greedy selection rounds of every target and seed.
- ``pairs`` (:func:`pairs`): the pair grid (SubTuning Fig. 3).
- ``sweep`` (:func:`sweep`): accuracy against training-set size (SubTuning
  Fig. 4), with the blocks SubTuning selected at each size.
- ``epsilon`` (:func:`epsilon`), ``grid`` (:func:`grid_table`), ``selection``
  (:func:`selection_table`), ``claims`` (:func:`claims_table`) and
  ``multilora`` (:func:`multilora`): see each.
- ``metrics``: DVC's metrics, one file per row of the main table; ``start``: the
  HTML report's start page, the main table and the claims' verdicts quoted.

Every table can also be written as one HTML page (``--out-html``, :mod:`.html`):
what Snakemake's report shows.

A new table is one module in :mod:`.tables`, named as the table: importing
this package imports every module there (:func:`.tables.discover`), listed
nowhere else. Its command line (``subtune report NAME``) is declared beside
its function, ``@table("name", arguments=..., run=...)``, and its help line
is the first line of the module's docstring (:class:`.registry.TableCLI`).

Runs trained on train+val (``train_data: "train+val"``, ``final_data``) have
no validation accuracy: none is shown for them (a validation accuracy of a
model trained on the validation split would be contaminated).
"""

from __future__ import annotations

from ..methods import method_label, method_needs, method_order
from . import tables
from .cost import COST_COLUMNS, cost_plot, params_plot
from .format import EDGE_MARKS, GRID_MARKERS, LP_LABEL, PathLike, fmt_params
from .load import RUN_COLUMNS, load_multilora, load_profiles, load_runs
from .published import REFERENCE_COLUMNS, attach_published, load_references
from .registry import CLIS, TABLES, TableCLI, get_table, table
from .vtab import VTAB_GROUP_OF, VTAB_GROUPS, VTAB_MEAN_GROUPS, VTAB_MEAN_TASKS, vtab_means

tables.discover()

# the tables' functions under their own names (after discovery: part of this package's API)
from .tables.claims import claims_table  # noqa: E402
from .tables.epsilon import epsilon  # noqa: E402
from .tables.grid import grid_plot, grid_rows, grid_table  # noqa: E402
from .tables.main import main_metrics, main_table  # noqa: E402
from .tables.multilora import MULTILORA_KINDS, multilora  # noqa: E402
from .tables.pairs import pairs  # noqa: E402
from .tables.profile import profile  # noqa: E402
from .tables.rounds import rounds  # noqa: E402
from .tables.selection import (  # noqa: E402
    SELECTION_COLUMNS, jaccard, selection_agreement, selection_rows, selection_table)
from .tables.sweep import sweep  # noqa: E402

__all__ = [
    "CLIS", "COST_COLUMNS", "EDGE_MARKS", "GRID_MARKERS", "LP_LABEL", "MULTILORA_KINDS", "PathLike",
    "REFERENCE_COLUMNS", "RUN_COLUMNS", "SELECTION_COLUMNS", "TABLES", "TableCLI", "VTAB_GROUPS", "VTAB_GROUP_OF",
    "VTAB_MEAN_GROUPS", "VTAB_MEAN_TASKS", "attach_published", "claims_table", "cost_plot", "epsilon", "fmt_params",
    "params_plot", "get_table", "grid_plot", "grid_rows", "grid_table", "jaccard", "load_multilora", "load_profiles",
    "load_references", "load_runs", "main_metrics", "main_table", "method_label", "method_needs", "method_order",
    "multilora", "pairs", "profile", "rounds", "selection_agreement", "selection_rows", "selection_table", "sweep",
    "table", "tables", "vtab_means",
]
