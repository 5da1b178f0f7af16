# Final training: every method x target x seed (the test split is read once, here),
# and the data-size sweep. Each job logs one MLflow run.


rule mlflow_init:
    output:
        f"{RES}/mlflow.json",
    log:
        f"logs/{EXP}/mlflow_init.log",
    benchmark:
        f"benchmarks/{EXP}/mlflow_init.tsv"
    shell:
        "{PY} track-init --out {output} > {log} 2>&1"


def method_inputs(w):
    """What a method needs from the selection stage (SubTuning's blocks, Surgical's group scores)."""
    needs = METHOD_REGISTRY[w.method].needs
    sel = f"{RES}/select/{w.target}/seed{selection_seed(w.seed)}"
    if needs == "selection":
        return {"selection": f"{sel}/selected.json"}
    if needs == "surgical":
        return {"surgical": f"{sel}/surgical.json"}
    return {}


def method_args(w, input):
    if "selection" in input.keys():
        return f"--selection-state {input.selection}"
    if "surgical" in input.keys():
        return f"--surgical-scores {input.surgical}"
    return ""


rule train:
    input:
        unpack(lambda w: prepared(w.target)),
        unpack(method_inputs),
        ckpt=CKPT,
        mlflow=f"{RES}/mlflow.json",
    output:
        f"{RES}/runs/{{target}}/{{method}}/seed{{seed}}.json",
    params:
        train=lambda w: dumps(method_train(config, w.method)),
        method=lambda w: dumps(config["methods"][w.method].get("params") or {}),
        extra=method_args,
    threads: 1
    log:
        f"logs/{EXP}/train/{{target}}_{{method}}_seed{{seed}}.log",
    benchmark:
        f"benchmarks/{EXP}/train/{{target}}_{{method}}_seed{{seed}}.tsv"
    shell:
        "{PY} train --method {wildcards.method} --method-params '{params.method}' {params.extra} "
        "--data {input.data} --manifest {input.manifest} --checkpoint {input.ckpt} --train '{params.train}' "
        "--seed {wildcards.seed} --threads {threads} --out {output} --track --tag stage=final > {log} 2>&1"


def sweep_inputs(w):
    sel = f"{RES}/select/{w.target}/seed{selection_seed(w.seed)}"
    needs = METHOD_REGISTRY[w.method].needs
    # SubTuning in the sweep reuses the blocks selected in the 1k regime.
    return {"selection": f"{sel}/selected.json"} if needs == "selection" else {}


rule train_sweep:
    input:
        unpack(lambda w: prepared(w.target, f"n{w.size}")),
        unpack(sweep_inputs),
        ckpt=CKPT,
        mlflow=f"{RES}/mlflow.json",
    output:
        f"{RES}/sweep/{{target}}/n{{size}}/{{method}}/seed{{seed}}.json",
    params:
        train=lambda w: dumps(method_train(config, w.method)),
        method=lambda w: dumps(config["methods"][w.method].get("params") or {}),
        extra=method_args,
    threads: 1
    log:
        f"logs/{EXP}/sweep/{{target}}_n{{size}}_{{method}}_seed{{seed}}.log",
    benchmark:
        f"benchmarks/{EXP}/sweep/{{target}}_n{{size}}_{{method}}_seed{{seed}}.tsv"
    shell:
        "{PY} train --method {wildcards.method} --method-params '{params.method}' {params.extra} "
        "--data {input.data} --manifest {input.manifest} --checkpoint {input.ckpt} --train '{params.train}' "
        "--seed {wildcards.seed} --threads {threads} --out {output} --track --tag stage=sweep > {log} 2>&1"
