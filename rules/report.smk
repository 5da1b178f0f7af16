# Report: tables (csv, markdown) and plots under results/<experiment>/; `snakemake --report report.html`.


rule report_main:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        runs=lambda w: PLAN.final_runs(),
        ckpt=CKPT.replace(".safetensors", ".json"),
        selected=lambda w: PLAN.selected_files(),
        surgical=lambda w: PLAN.surgical_files(),
        refs=REFS,
    output:
        csv=report(f"{RES}/tables/main.csv", caption="../report/main.rst", category="Tables"),
        md=f"{RES}/tables/main.md",
        html=report(f"{RES}/tables/main.html", caption="../report/main.rst", category="Tables"),
        json=f"{RES}/tables/main.json",
        cost=report(f"{RES}/plots/cost.png", caption="../report/cost.rst", category="Tables"),
        params_png=report(f"{RES}/plots/params.png", caption="../report/params.rst", category="Tables"),
    params:
        backbone=config["backbone"]["arch"],
        config_hash=CONFIG_HASH,  # the validated config's (Snakefile): a column of every row
    log:
        f"logs/{EXP}/report/main.log",
    benchmark:
        f"benchmarks/{EXP}/report/main.tsv"
    shell:
        "{PY} report main --config-hash {params.config_hash} "
        "--runs {input.runs} --checkpoint {input.ckpt} --selected {input.selected} "
        "--surgical {input.surgical} --references {input.refs} --backbone {params.backbone} --out-csv {output.csv} "
        "--out-md {output.md} --out-html {output.html} --out-json {output.json} --out-cost-png {output.cost} "
        "--out-params-png {output.params_png} > {log} 2>&1"


rule report_rounds:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        lambda w: PLAN.selected_files(),
    output:
        csv=f"{RES}/tables/rounds.csv",
        html=report(f"{RES}/tables/rounds.html", caption="../report/rounds.rst", category="Selection"),
    log:
        f"logs/{EXP}/report/rounds.log",
    benchmark:
        f"benchmarks/{EXP}/report/rounds.tsv"
    shell:
        "{PY} report rounds --states {input} --out-csv {output.csv} --out-html {output.html} > {log} 2>&1"


rule report_selection:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        lambda w: PLAN.selected_files(),
    output:
        csv=f"{RES}/tables/selection.csv",
        md=f"{RES}/tables/selection.md",
        html=report(f"{RES}/tables/selection.html", caption="../report/selection.rst", category="Selection"),
    log:
        f"logs/{EXP}/report/selection.log",
    benchmark:
        f"benchmarks/{EXP}/report/selection.tsv"
    shell:
        "{PY} report selection --states {input} --out-csv {output.csv} --out-md {output.md} "
        "--out-html {output.html} > {log} 2>&1"


rule report_profile:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        lambda w: PLAN.profile_scores(w.target),
    output:
        csv=f"{RES}/tables/profile_{{target}}.csv",
        html=report(f"{RES}/tables/profile_{{target}}.html", caption="../report/profile.rst",
                    category="Fine-tuning profiles"),
        png=report(f"{RES}/plots/profile_{{target}}.png", caption="../report/profile.rst", category="Fine-tuning profiles"),
    log:
        f"logs/{EXP}/report/profile_{{target}}.log",
    benchmark:
        f"benchmarks/{EXP}/report/profile_{{target}}.tsv"
    shell:
        "{PY} report profile --scores {input} --out-csv {output.csv} --out-png {output.png} --out-html {output.html} "
        "> {log} 2>&1"


rule report_pairs:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        lambda w: PLAN.pair_scores(w.target),
    output:
        csv=f"{RES}/tables/pairs_{{target}}.csv",
        html=report(f"{RES}/tables/pairs_{{target}}.html", caption="../report/pairs.rst", category="Pair grid"),
        png=report(f"{RES}/plots/pairs_{{target}}.png", caption="../report/pairs.rst", category="Pair grid"),
    log:
        f"logs/{EXP}/report/pairs_{{target}}.log",
    benchmark:
        f"benchmarks/{EXP}/report/pairs_{{target}}.tsv"
    shell:
        "{PY} report pairs --scores {input} --out-csv {output.csv} --out-png {output.png} --out-html {output.html} "
        "> {log} 2>&1"


rule report_sweep:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        runs=lambda w: PLAN.sweep_runs(),
        refs=REFS,
    output:
        csv=f"{RES}/tables/sweep.csv",
        html=report(f"{RES}/tables/sweep.html", caption="../report/sweep.rst", category="Data-size sweep"),
        png=report(f"{RES}/plots/sweep.png", caption="../report/sweep.rst", category="Data-size sweep"),
    params:
        backbone=config["backbone"]["arch"],
    log:
        f"logs/{EXP}/report/sweep.log",
    benchmark:
        f"benchmarks/{EXP}/report/sweep.tsv"
    shell:
        "{PY} report sweep --runs {input.runs} --references {input.refs} --backbone {params.backbone} "
        "--out-csv {output.csv} --out-png {output.png} --out-html {output.html} > {log} 2>&1"


rule report_epsilon:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        states=epsilon_states,
        **epsilon_inputs(),
    output:
        csv=f"{RES}/tables/epsilon.csv",
        md=f"{RES}/tables/epsilon.md",
        html=report(f"{RES}/tables/epsilon.html", caption="../report/epsilon.rst", category="Selection"),
    params:
        epsilons=PLAN.epsilon_list(),
        epsilon=config["selection"]["epsilon"],
        runs=epsilon_run_files,
    log:
        f"logs/{EXP}/report/epsilon.log",
    benchmark:
        f"benchmarks/{EXP}/report/epsilon.tsv"
    shell:
        "{PY} report epsilon --states {input.states} --runs {params.runs} --epsilons {params.epsilons} "
        "--selection-epsilon {params.epsilon} --out-csv {output.csv} --out-md {output.md} --out-html {output.html} "
        "> {log} 2>&1"


rule report_grid:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        lambda w: PLAN.tune_files(),
    output:
        csv=f"{RES}/tables/grid.csv",
        md=f"{RES}/tables/grid.md",
        html=report(f"{RES}/tables/grid.html", caption="../report/grid.rst", category="Tuning"),
        png=report(f"{RES}/plots/grid.png", caption="../report/grid.rst", category="Tuning"),
    log:
        f"logs/{EXP}/report/grid.log",
    benchmark:
        f"benchmarks/{EXP}/report/grid.tsv"
    shell:
        "{PY} report grid --tunes {input} --out-csv {output.csv} --out-md {output.md} --out-html {output.html} "
        "--out-png {output.png} > {log} 2>&1"


rule report_multilora:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        runs=PLAN.multilora_runs(),
        ablations=PLAN.multilora_ablation_runs(),
        refs=REFS,
    output:
        csv=f"{RES}/tables/multilora.csv",
        md=f"{RES}/tables/multilora.md",
        html=report(f"{RES}/tables/multilora.html", caption="../report/multilora.rst", category="Tables"),
        ablations=f"{RES}/tables/multilora_ablations.csv",
    params:
        backbone=config["backbone"]["arch"],
        ranks=PLAN.ablation_ranks(),
    log:
        f"logs/{EXP}/report/multilora.log",
    benchmark:
        f"benchmarks/{EXP}/report/multilora.tsv"
    shell:
        "{PY} report multilora --runs {input.runs} --ablations {input.ablations} --ranks {params.ranks} "
        "--references {input.refs} --backbone {params.backbone} --out-csv {output.csv} --out-md {output.md} "
        "--out-html {output.html} "
        "--out-ablations-csv {output.ablations} > {log} 2>&1"


rule report_claims:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        runs=lambda w: PLAN.final_runs(),
        sweep=lambda w: PLAN.claims_sweep(),
        profiles=lambda w: PLAN.claims_profiles(),
        multilora=lambda w: PLAN.claims_multilora(),
    output:
        csv=report(f"{RES}/tables/claims.csv", caption="../report/claims.rst", category="Tables"),
        md=f"{RES}/tables/claims.md",
        html=report(f"{RES}/tables/claims.html", caption="../report/claims.rst", category="Tables"),
    params:
        shifts=PLAN.shift_flags(),
        experiment=EXP,
        config_hash=CONFIG_HASH,  # the validated config's (Snakefile): a column of every row
    log:
        f"logs/{EXP}/report/claims.log",
    benchmark:
        f"benchmarks/{EXP}/report/claims.tsv"
    shell:
        "{PY} report claims --config-hash {params.config_hash} "
        "--runs {input.runs} --sweep {input.sweep} --profiles {input.profiles} "
        "--multilora {input.multilora} --shifts {params.shifts} --experiment {params.experiment} "
        "--out-csv {output.csv} --out-md {output.md} --out-html {output.html} > {log} 2>&1"


rule report_metrics:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job
    localrule: True
    input:
        f"{RES}/tables/main.csv",
    output:
        # DVC metrics (dvc.yaml): one file per method and target, one row each in `dvc metrics show`
        PLAN.metrics_files(),
    log:
        f"logs/{EXP}/report/metrics.log",
    benchmark:
        f"benchmarks/{EXP}/report/metrics.tsv"
    shell:
        "{PY} report metrics --main {input} --out-json {output} > {log} 2>&1"


rule report_start:
    # seconds of CPU work: runs where Snakemake runs, never as a cluster job. The HTML report's start page: the
    # description (report/workflow.rst) and the main table and claims quoted; the Snakefile's `report:` reads it.
    localrule: True
    input:
        description="report/workflow.rst",
        main=f"{RES}/tables/main.md",
        claims=f"{RES}/tables/claims.csv",
    output:
        f"{RES}/report/start.rst",
    log:
        f"logs/{EXP}/report/start.log",
    benchmark:
        f"benchmarks/{EXP}/report/start.tsv"
    shell:
        "{PY} report start --description {input.description} --main-md {input.main} --claims {input.claims} "
        "--out-rst {output} > {log} 2>&1"
