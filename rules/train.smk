# Final training: every method x target x seed (the test split is read once, here),
# and the data-size sweep. Each job logs one MLflow run. Methods' training config,
# parameters and grid are per target (targets.<t>.methods.<m> over methods.<m>).
# final_data: train+val trains the final runs (not tune, not the sweep) on train and val.

from string import Template

# The `train` stage's command, one shape for the final runs, the epsilon sets and the sweep; the `multilora`
# stage's, one for the comparison and its ablations ($slots: filled here; {braces}: by Snakemake).
TRAIN_CMD = Template(
    "$run --head {params.head} --method $method --method-params '{params.method}' ${blocks}{params.extra} "
    "--data {input.data} --manifest {input.manifest} ${data}--checkpoint {input.ckpt} --train '{params.train}' "
    "--seed {wildcards.seed} --threads {threads} --out {output} --track --tag stage=$stage > {log} 2>&1"
)
MULTILORA_CMD = Template(
    "$run {params.tasks} --checkpoint {input.ckpt} --params '{params.params}' $variant --grid '{params.grid}' "
    "--train '{params.train}' --seed {wildcards.seed} --threads {threads} --out {output} --track --tag stage=$stage "
    "> {log} 2>&1"
)


rule mlflow_init:
    # talks to the tracking store only: runs where Snakemake runs, never as a cluster job
    localrule: True
    output:
        f"{RES}/mlflow.json",
    log:
        f"logs/{EXP}/mlflow_init.log",
    benchmark:
        f"benchmarks/{EXP}/mlflow_init.tsv"
    shell:
        "{PY} track-init --out {output} > {log} 2>&1"


rule tune:
    input:
        unpack(lambda w: PLAN.prepared(w.target, seed=SEL_SEED)),
        unpack(lambda w: PLAN.stage_inputs(w.method, w.target, SEL_SEED)),
        ckpt=CKPT,
        mlflow=f"{RES}/mlflow.json",
    output:
        json=f"{RES}/tune/{{target}}/{{method}}.json",
        **PLAN.tune_outputs(),
    params:
        head=lambda w: target_head(config, w.target),
        train=lambda w: dumps(method_train(config, w.method, w.target)),
        method=lambda w: dumps(method_params(config, w.method, w.target)),
        grid=lambda w: dumps(method_grid(config, w.method, w.target)),
        extra=method_args,
        seed=SEL_SEED,
        extension=tune_extend(config),
        save=lambda w, output: f"--save-chosen {output.chosen}" if REUSE_TUNE else "",
    threads: 1
    log:
        f"logs/{EXP}/tune/{{target}}_{{method}}.log",
    benchmark:
        f"benchmarks/{EXP}/tune/{{target}}_{{method}}.tsv"
    shell:
        "{PY} tune --head {params.head} --method {wildcards.method} --method-params '{params.method}' --grid '{params.grid}' "
        "{params.extra} --data {input.data} --manifest {input.manifest} --checkpoint {input.ckpt} "
        "--train '{params.train}' --seed {params.seed} --extend {params.extension} --threads {threads} {params.save} "
        "--out {output.json} --track --tag stage=tune > {log} 2>&1"


rule train:
    input:
        unpack(lambda w: PLAN.prepared(w.target, seed=w.seed)),
        unpack(lambda w: PLAN.stage_inputs(w.method, w.target, w.seed)),
        unpack(lambda w: PLAN.tuned_input(w.method, w.target)),
        unpack(lambda w: PLAN.reuse_input(w.method, w.target, w.seed)),
        ckpt=CKPT,
        mlflow=f"{RES}/mlflow.json",
    output:
        f"{RES}/runs/{{target}}/{{method}}/seed{{seed}}.json",
    params:
        head=lambda w: target_head(config, w.target),
        train=lambda w: dumps(method_train(config, w.method, w.target)),
        method=lambda w: dumps(method_params(config, w.method, w.target)),
        data=final_flags(config),
        extra=method_args,
    threads: 1
    log:
        f"logs/{EXP}/train/{{target}}_{{method}}_seed{{seed}}.log",
    benchmark:
        f"benchmarks/{EXP}/train/{{target}}_{{method}}_seed{{seed}}.tsv"
    shell:
        TRAIN_CMD.substitute(
            run="{PY} train", method="{wildcards.method}", blocks="", data="{params.data} ", stage="final"
        )


# Epsilon sensitivity (selection.epsilons): SubTuning's final training (its config, its tuned values, every
# seed) on the set another epsilon selects. {blockset}: the blocks joined by '+', 'lp' for none. The main
# selection's set is never trained here (its final runs are reused): subtune.plan.Plan.epsilon_runs.
rule train_epsilon:
    input:
        unpack(lambda w: PLAN.prepared(w.target, seed=w.seed)),
        unpack(lambda w: PLAN.tuned_input("subtuning", w.target)),
        ckpt=CKPT,
        mlflow=f"{RES}/mlflow.json",
    output:
        f"{RES}/epsilon/{{target}}/{{blockset}}/seed{{seed}}.json",
    wildcard_constraints:
        target=r"[^/]+",
        blockset=r"[^/]+",
    params:
        head=lambda w: target_head(config, w.target),
        train=lambda w: dumps(method_train(config, "subtuning", w.target)),
        method=lambda w: dumps(method_params(config, "subtuning", w.target)),
        blocks=lambda w: "" if w.blockset == "lp" else w.blockset,
        data=final_flags(config),
        extra=method_args,
    threads: 1
    log:
        f"logs/{EXP}/epsilon/{{target}}_{{blockset}}_seed{{seed}}.log",
    benchmark:
        f"benchmarks/{EXP}/epsilon/{{target}}_{{blockset}}_seed{{seed}}.tsv"
    shell:
        TRAIN_CMD.substitute(
            run="{PY} train", method="subtuning", blocks="--blocks '{params.blocks}' ", data="{params.data} ",
            stage="epsilon",
        )


rule train_sweep:
    input:
        unpack(lambda w: PLAN.prepared(w.target, f"n{w.size}", w.seed)),
        unpack(lambda w: PLAN.sweep_inputs(w.target, w.size, w.method, w.seed)),
        ckpt=CKPT,
        mlflow=f"{RES}/mlflow.json",
    output:
        f"{RES}/sweep/{{target}}/n{{size}}/{{method}}/seed{{seed}}.json",
    params:
        head=lambda w: target_head(config, w.target),
        train=lambda w: dumps(method_train(config, w.method, w.target)),
        method=lambda w: dumps(method_params(config, w.method, w.target)),
        extra=method_args,
    threads: 1
    log:
        f"logs/{EXP}/sweep/{{target}}_n{{size}}_{{method}}_seed{{seed}}.log",
    benchmark:
        f"benchmarks/{EXP}/sweep/{{target}}_n{{size}}_{{method}}_seed{{seed}}.tsv"
    shell:
        TRAIN_CMD.substitute(
            run="{PY} train", method="{wildcards.method}", blocks="", data="",
            stage="sweep --tag train_size={wildcards.size}",
        )


# Multi-LoRA: the multilora targets trained together (shared frozen A, a B and a head per task),
# compared in the same job with K separate LoRA runs of the same rank, training config and grid (each
# side chooses on validation; the same number of optimizer steps per task on both sides). The grid is
# multilora.grid, or methods.lora.grid when that is not set (subtune.plan.multilora_grid). As in the main
# table, the grid is tried on the first seed only; the other seeds train each side at the point it chose there.
rule multilora:
    input:
        data=lambda w: PLAN.multilora_inputs(w.seed)["data"],
        manifests=lambda w: PLAN.multilora_inputs(w.seed)["manifests"],
        ckpt=CKPT,
        mlflow=f"{RES}/mlflow.json",
        tuned=lambda w: PLAN.multilora_tuned(w.seed),
    output:
        f"{RES}/multilora/seed{{seed}}.json",
    params:
        tuned=lambda w, input: f"--tuned {input.tuned}" if input.tuned else "",
        tasks=lambda w, input: PLAN.multilora_tasks(input.data, input.manifests),
        train=lambda w: dumps(multilora_train(config)),
        params=lambda w: dumps(config["multilora"].get("params") or {}),
        grid=lambda w: dumps(multilora_grid(config)),
    threads: 1
    log:
        f"logs/{EXP}/multilora/seed{{seed}}.log",
    benchmark:
        f"benchmarks/{EXP}/multilora/seed{{seed}}.tsv"
    shell:
        MULTILORA_CMD.substitute(run="{PY} multilora", variant="--compare {params.tuned}", stage="multilora")


# Multi-LoRA ablations (multilora.ablations): Multi-LoRA alone, one job per ablation and seed, the same tasks,
# training config and grid (tried on the first seed, as above); {ablation}: train_a (the shared A trained), sequential (the tasks one after
# another), rank<R> (another rank, alpha kept). The configured rank's row is the multilora job's.
rule multilora_ablation:
    input:
        data=lambda w: PLAN.multilora_inputs(w.seed)["data"],
        manifests=lambda w: PLAN.multilora_inputs(w.seed)["manifests"],
        ckpt=CKPT,
        mlflow=f"{RES}/mlflow.json",
        tuned=lambda w: PLAN.multilora_tuned(w.seed, w.ablation),
    output:
        f"{RES}/multilora/{{ablation}}/seed{{seed}}.json",
    wildcard_constraints:
        ablation=r"train_a|sequential|rank\d+",
    params:
        tuned=lambda w, input: f"--tuned {input.tuned}" if input.tuned else "",
        tasks=lambda w, input: PLAN.multilora_tasks(input.data, input.manifests),
        train=lambda w: dumps(multilora_train(config)),
        params=lambda w: dumps(multilora_ablations(config)[w.ablation]["params"]),
        flags=lambda w: multilora_ablations(config)[w.ablation]["flags"],
        grid=lambda w: dumps(multilora_grid(config)),
    threads: 1
    log:
        f"logs/{EXP}/multilora/{{ablation}}_seed{{seed}}.log",
    benchmark:
        f"benchmarks/{EXP}/multilora/{{ablation}}_seed{{seed}}.tsv"
    shell:
        MULTILORA_CMD.substitute(
            run="{PY} multilora", variant="{params.flags} --ablation {wildcards.ablation} {params.tuned}",
            stage="multilora",
        )
