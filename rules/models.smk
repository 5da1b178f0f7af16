# Models: the backbone checkpoint, pretrained on the source task or fetched (hub, local file or registry package).

BB = config["backbone"]

if BB["checkpoint"] == "pretrain":

    rule pretrain:
        input:
            **PLAN.prepared(config["source"]["dataset"], "source"),
        output:
            ckpt=CKPT,
            meta=CKPT.replace(".safetensors", ".json"),
            metrics=f"{RES}/pretrain/metrics.json",
        params:
            arch=BB["arch"],
            kwargs=dumps(BB.get("model_kwargs") or {}),
            train=PLAN.pretrain_train(),
            seed=BB.get("pretrain", {}).get("seed", 0),
        threads: 4  # capped at --cores by Snakemake
        log:
            f"logs/{EXP}/pretrain.log",
        benchmark:
            f"benchmarks/{EXP}/pretrain.tsv"
        shell:
            "{PY} pretrain --arch {params.arch} --model-kwargs '{params.kwargs}' --data {input.data} "
            "--manifest {input.manifest} --train '{params.train}' --seed {params.seed} --threads {threads} "
            "--out {output.ckpt} --metrics {output.metrics} > {log} 2>&1"

else:

    rule fetch:
        # fetches from the internet (compute nodes often cannot): runs where Snakemake runs, never as a cluster job
        localrule: True
        input:
            [BB["file"]] if BB["checkpoint"] == "file" else [],
        output:
            ckpt=CKPT,
            meta=CKPT.replace(".safetensors", ".json"),
        params:
            arch=BB["arch"],
            kwargs=dumps(BB.get("model_kwargs") or {}),
            **PLAN.fetch_flags(),  # file, package
        log:
            f"logs/{EXP}/fetch.log",
        benchmark:
            f"benchmarks/{EXP}/fetch.tsv"
        shell:
            "{PY} fetch --model {params.arch} --model-kwargs '{params.kwargs}' {params.file} {params.package} "
            "--out {output.ckpt} > {log} 2>&1"
