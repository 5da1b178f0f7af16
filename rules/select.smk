# Greedy SubTuning selection, one round per job group: score the round's candidates
# (spread over selection.shards jobs), then decide (a checkpoint: round r+1's jobs
# exist only once round r's decision is made). Round 1 of a forward walk is the fine-tuning profile;
# a backward walk's is not (it removes one block from all), so rule score_profile scores it.
# A selection runs on one prepared regime: {sizedir} is '' for the 1k regime
# (select/<target>/seed<S>/) and 'n<size>/' for a data-size sweep's size
# (select/<target>/n<size>/seed<S>/, on that size's training data, the same val split).
# Also the scores behind Surgical's group choice and the pair grid (1k regime).

from string import Template

SELDIR = f"{RES}/select/{{target}}/{{sizedir}}seed{{seed}}"
SEL_WILDCARDS = {"target": r"[^/]+", "sizedir": r"(n\d+/)?"}
# The prefix cache's memory budget changes no result: a global, not a param.
# snakemake --lint: "Shell command directly uses variable CACHE" is accepted: see the line above.
CACHE = cache_flags(config)
SHARDS = PLAN.shards
# The `score` stage's command, one shape for its three uses ($slots: filled here; {braces}: by Snakemake).
SCORE_CMD = Template(
    "$run --head {params.head} --sets $sets --selection '{params.selection}' --data {input.data} "
    "--manifest {input.manifest} --checkpoint {input.ckpt} --train '{params.train}' --seed $seed "
    "${shards}--threads {threads} {params.fast} {params.cv} {CACHE} --out {output}$budget --track --tag $tags "
    "> {log} 2>&1"
)


rule score_round:
    input:
        unpack(lambda w: PLAN.prepared(w.target, sel_regime(w.sizedir), w.seed)),
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
        state=state_flag,
        shards=SHARDS,
        budget=dumps(selection_budget(config)),
    threads: 1
    log:
        f"logs/{EXP}/score/{{target}}_{{sizedir}}seed{{seed}}_round{{round}}_shard{{shard}}.log",
    benchmark:
        f"benchmarks/{EXP}/score/{{target}}_{{sizedir}}seed{{seed}}_round{{round}}_shard{{shard}}.tsv"
    shell:
        SCORE_CMD.substitute(
            run="{PY} score",
            sets="greedy {params.state}",
            seed="{wildcards.seed}",
            shards="--shard {wildcards.shard} --shards {params.shards} ",
            budget=" --budget '{params.budget}'",
            tags="stage=select --tag round={wildcards.round} --tag train_size={wildcards.sizedir}",
        )


checkpoint decide:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        scores=lambda w: PLAN.round_scores(w.target, w.sizedir, w.seed, w.round),
        state=previous_state,
    output:
        f"{SELDIR}/state{{round}}.json",
    wildcard_constraints:
        **SEL_WILDCARDS,
    params:
        # the 1k regime walks for the epsilon sensitivity (selection.epsilons); a sweep size's selection does not
        selection=lambda w: dumps(decision_config(config, walk=not w.sizedir)),
        state=state_flag,
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
        unpack(lambda w: PLAN.prepared(w.target, seed=w.seed)),
        ckpt=CKPT,
    output:
        f"{RES}/select/{{target}}/seed{{seed}}/surgical.json",
    wildcard_constraints:
        target=SEL_WILDCARDS["target"],
    params:
        head=lambda w: target_head(config, w.target),
        train=lambda w: PLAN.surgical_train(w.target),
        selection=dumps(scoring_config(config)),
        fast=scoring_flags(config),
        cv=cv_flags(config),
    threads: 1
    log:
        f"logs/{EXP}/score_surgical/{{target}}_seed{{seed}}.log",
    benchmark:
        f"benchmarks/{EXP}/score_surgical/{{target}}_seed{{seed}}.tsv"
    shell:
        SCORE_CMD.substitute(
            run="{PY} score", sets="surgical", seed="{wildcards.seed}", shards="", budget="", tags="stage=surgical"
        )


rule score_profile:
    # The fine-tuning profile of a backward walk (PLAN.profile_files): every block alone and the linear probe,
    # scored as a forward walk's round 1 is (the selection's training, scoring and shards), over the full schedule.
    input:
        unpack(lambda w: PLAN.prepared(w.target, seed=w.seed)),
        ckpt=CKPT,
    output:
        f"{RES}/select/{{target}}/seed{{seed}}/profile_shard{{shard}}.json",
    wildcard_constraints:
        target=SEL_WILDCARDS["target"],
        seed=r"\d+",
        shard=r"\d+",
    params:
        head=lambda w: target_head(config, w.target),
        train=dumps(selection_train(config)),
        selection=dumps(scoring_config(config)),
        fast=scoring_flags(config),
        cv=cv_flags(config),
        shards=SHARDS,
    threads: 1
    log:
        f"logs/{EXP}/score_profile/{{target}}_seed{{seed}}_shard{{shard}}.log",
    benchmark:
        f"benchmarks/{EXP}/score_profile/{{target}}_seed{{seed}}_shard{{shard}}.tsv"
    shell:
        SCORE_CMD.substitute(
            run="{PY} score",
            sets="profile",
            seed="{wildcards.seed}",
            shards="--shard {wildcards.shard} --shards {params.shards} ",
            budget="",
            tags="stage=profile",
        )


PAIR_SHARDS = PLAN.pair_shards


rule score_pairs:
    input:
        unpack(lambda w: PLAN.prepared(w.target, seed=SEL_SEED)),
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
        SCORE_CMD.substitute(
            run="{PY} score",
            sets="pairs",
            seed="{params.seed}",
            shards="--shard {wildcards.shard} --shards {params.shards} ",
            budget="",
            tags="stage=pairs",
        )
