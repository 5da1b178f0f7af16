# Data: download raw files (mirrors, SHA-256) and prepare the splits (seeded, uint8 tensors + manifest).


rule download:
    # fetches from the internet (compute nodes often cannot): runs where Snakemake runs, never as a cluster job
    localrule: True
    output:
        "data/raw/{raw}/MANIFEST.json",
    params:
        mirrors=lambda w: " ".join(f"--mirror {m}" for m in config["data"]["mirrors"]),
    log:
        "logs/download/{raw}.log",
    benchmark:
        "benchmarks/download/{raw}.tsv"
    shell:
        "{PY} download --dataset {wildcards.raw} --out data/raw/{wildcards.raw} {params.mirrors} > {log} 2>&1"


rule prepare:
    input:
        raw_input,
    output:
        data=f"{DATA}/{{dataset}}/{{regime}}.safetensors",
        manifest=f"{DATA}/{{dataset}}/{{regime}}.json",
    params:
        build=lambda w: dumps(dataset_params(config, w.dataset, regime_train_size(w.regime))),
        seed=config["data"]["seed"],
        raw=raw_dir,
    log:
        f"logs/{EXP}/prepare/{{dataset}}_{{regime}}.log",
    benchmark:
        f"benchmarks/{EXP}/prepare/{{dataset}}_{{regime}}.tsv"
    shell:
        "{PY} prepare --target {wildcards.dataset} {params.raw} --params '{params.build}' --seed {params.seed} "
        "--out {output.data} --manifest {output.manifest} > {log} 2>&1"
