# Greedy SubTuning selection, one round per job group: score the round's candidates
# (spread over selection.shards jobs), then decide (a checkpoint: round r+1's jobs
# exist only once round r's decision is made). Round 1 is the fine-tuning profile.
# A selection runs on one prepared regime: {sizedir} is '' for the 1k regime
# (select/<target>/seed<S>/) and 'n<size>/' for a data-size sweep's size
# (select/<target>/n<size>/seed<S>/, on that size's training data, the same val split).
# Also the scores behind Surgical's group choice and the pair grid (1k regime).

SELDIR = f"{RES}/select/{{target}}/{{sizedir}}seed{{seed}}"
SEL_WILDCARDS = {"target": r"[^/]+", "sizedir": r"(n\d+/)?"}
# The prefix cache's memory budget changes no result: a global, not a param.
# snakemake --lint: "Shell command directly uses variable CACHE" is accepted: see the line above.
CACHE = cache_flags(config)
SHARDS = config["selection"]["shards"]


rule score_round:
    input:
        unpack(lambda w: prepared(w.target, sel_regime(w))),
        ckpt=CKPT,
        state=previous_state,
    output:
        f"{SELDIR}/round{{round}}_shard{{shard}}.json",
    wildcard_constraints:
        **SEL_WILDCARDS,
    params:
        head=lambda w: target_head(config, w.target),
        train=dumps(selection_train(config)),
        selection=dumps(scoring_config(config)),
        fast=scoring_flags(config),
        cv=cv_flags(config),
        state=lambda w, input: f"--state {input.state}" if input.state else "",
        shards=SHARDS,
        budget=dumps(selection_budget(config)),
    threads: 1
    log:
        f"logs/{EXP}/score/{{target}}_{{sizedir}}seed{{seed}}_round{{round}}_shard{{shard}}.log",
    benchmark:
        f"benchmarks/{EXP}/score/{{target}}_{{sizedir}}seed{{seed}}_round{{round}}_shard{{shard}}.tsv"
    shell:
        "{PY} score --head {params.head} --sets greedy {params.state} --selection '{params.selection}' --data {input.data} "
        "--manifest {input.manifest} --checkpoint {input.ckpt} --train '{params.train}' --seed {wildcards.seed} "
        "--shard {wildcards.shard} --shards {params.shards} --threads {threads} {params.fast} {params.cv} {CACHE} "
        "--out {output} --budget '{params.budget}' --track --tag stage=select --tag round={wildcards.round} > {log} 2>&1"


checkpoint decide:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        scores=lambda w: [
            f"{RES}/select/{w.target}/{w.sizedir}seed{w.seed}/round{w.round}_shard{i}.json" for i in range(SHARDS)
        ],
        state=previous_state,
    output:
        f"{SELDIR}/state{{round}}.json",
    wildcard_constraints:
        **SEL_WILDCARDS,
    params:
        # the 1k regime walks for the epsilon sensitivity (selection.epsilons); a sweep size's selection does not
        selection=lambda w: dumps(decision_config(config, walk=not w.sizedir)),
        state=lambda w, input: f"--state {input.state}" if input.state else "",
    log:
        f"logs/{EXP}/decide/{{target}}_{{sizedir}}seed{{seed}}_round{{round}}.log",
    benchmark:
        f"benchmarks/{EXP}/decide/{{target}}_{{sizedir}}seed{{seed}}_round{{round}}.tsv"
    shell:
        "{PY} decide {params.state} --scores {input.scores} --selection '{params.selection}' "
        "--out {output} > {log} 2>&1"


rule selected:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    # The walk's final state replayed with selection.epsilon: the walk itself when it ran with that epsilon;
    # with selection.epsilons it ran with the epsilon that walks furthest (subtune.select.replay).
    localrule: True
    input:
        final_state,
    output:
        f"{SELDIR}/selected.json",
    wildcard_constraints:
        **SEL_WILDCARDS,
    params:
        epsilon=config["selection"]["epsilon"],
    log:
        f"logs/{EXP}/selected/{{target}}_{{sizedir}}seed{{seed}}.log",
    benchmark:
        f"benchmarks/{EXP}/selected/{{target}}_{{sizedir}}seed{{seed}}.tsv"
    shell:
        "{PY} replay --state {input} --epsilon {params.epsilon} --out {output} > {log} 2>&1"


rule score_surgical:
    input:
        unpack(lambda w: prepared(w.target)),
        ckpt=CKPT,
    output:
        f"{RES}/select/{{target}}/seed{{seed}}/surgical.json",
    wildcard_constraints:
        target=SEL_WILDCARDS["target"],
    params:
        head=lambda w: target_head(config, w.target),
        train=lambda w: dumps(method_train(config, "surgical", w.target)) if "surgical" in config["methods"] else "{}",
        selection=dumps(scoring_config(config)),
        fast=scoring_flags(config),
        cv=cv_flags(config),
    threads: 1
    log:
        f"logs/{EXP}/score_surgical/{{target}}_seed{{seed}}.log",
    benchmark:
        f"benchmarks/{EXP}/score_surgical/{{target}}_seed{{seed}}.tsv"
    shell:
        "{PY} score --head {params.head} --sets surgical --selection '{params.selection}' --data {input.data} "
        "--manifest {input.manifest} --checkpoint {input.ckpt} --train '{params.train}' --seed {wildcards.seed} "
        "--threads {threads} {params.fast} {params.cv} {CACHE} --out {output} --track --tag stage=surgical > {log} 2>&1"


PAIR_SHARDS = config.get("pairs", {}).get("shards", 1)


rule score_pairs:
    input:
        unpack(lambda w: prepared(w.target)),
        ckpt=CKPT,
    output:
        f"{RES}/pairs/{{target}}/shard{{shard}}.json",
    params:
        head=lambda w: target_head(config, w.target),
        train=dumps(selection_train(config)),
        selection=dumps(scoring_config(config)),
        fast=scoring_flags(config),
        cv=cv_flags(config),
        seed=SEL_SEED,
        shards=PAIR_SHARDS,
    threads: 1
    log:
        f"logs/{EXP}/pairs/{{target}}_shard{{shard}}.log",
    benchmark:
        f"benchmarks/{EXP}/pairs/{{target}}_shard{{shard}}.tsv"
    shell:
        "{PY} score --head {params.head} --sets pairs --selection '{params.selection}' --data {input.data} "
        "--manifest {input.manifest} --checkpoint {input.ckpt} --train '{params.train}' --seed {params.seed} "
        "--shard {wildcards.shard} --shards {params.shards} --threads {threads} {params.fast} {params.cv} {CACHE} "
        "--out {output} --track --tag stage=pairs > {log} 2>&1"
