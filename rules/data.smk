# Data: download raw files (mirrors, SHA-256) and prepare the splits (seeded, uint8 tensors + manifest).


rule download:
    # fetches from the internet (compute nodes often cannot): runs where Snakemake runs, never as a cluster job
    localrule: True
    output:
        "data/raw/{raw}/MANIFEST.json",
    params:
        mirrors=lambda w: PLAN.mirror_flags(),
    log:
        "logs/download/{raw}.log",
    benchmark:
        "benchmarks/download/{raw}.tsv"
    shell:
        "{PY} download --dataset {wildcards.raw} --out data/raw/{wildcards.raw} {params.mirrors} > {log} 2>&1"


rule prepare:
    input:
        lambda w: PLAN.raw_input(w.dataset),
    output:
        data=f"{DATA}/{{dataset}}/{{regime}}.safetensors",
        manifest=f"{DATA}/{{dataset}}/{{regime}}.json",
    params:
        build=lambda w: PLAN.dataset_build(w.dataset, w.regime),
        seed=config["data"]["seed"],
        raw=lambda w: PLAN.raw_flag(w.dataset),
    log:
        f"logs/{EXP}/prepare/{{dataset}}_{{regime}}.log",
    benchmark:
        f"benchmarks/{EXP}/prepare/{{dataset}}_{{regime}}.tsv"
    shell:
        "{PY} prepare --target {wildcards.dataset} {params.raw} --params '{params.build}' --seed {params.seed} "
        "--out {output.data} --manifest {output.manifest} > {log} 2>&1"


# data.split_per_seed: each training seed's own split (the same builder, seeded with the run's seed instead of
# data.seed), under <target>/seed<S>/ (subtune.plan.Plan.prepared); the rule above keeps the shared splits.
rule prepare_seed:
    input:
        lambda w: PLAN.raw_input(w.dataset),
    output:
        data=f"{DATA}/{{dataset}}/seed{{seed}}/{{regime}}.safetensors",
        manifest=f"{DATA}/{{dataset}}/seed{{seed}}/{{regime}}.json",
    wildcard_constraints:
        dataset=r"[^/]+",
    params:
        build=lambda w: PLAN.dataset_build(w.dataset, w.regime),
        raw=lambda w: PLAN.raw_flag(w.dataset),
    log:
        f"logs/{EXP}/prepare/{{dataset}}_seed{{seed}}_{{regime}}.log",
    benchmark:
        f"benchmarks/{EXP}/prepare/{{dataset}}_seed{{seed}}_{{regime}}.tsv"
    shell:
        "{PY} prepare --target {wildcards.dataset} {params.raw} --params '{params.build}' --seed {wildcards.seed} "
        "--out {output.data} --manifest {output.manifest} > {log} 2>&1"


ruleorder: prepare_seed > prepare
