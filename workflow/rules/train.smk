# Training: one job per (method, seed). Checkpoints live outside the output directory so that a
# killed (or preempted) job resumes from them when it is rerun.


rule train:
    input:
        rollouts=ROLLOUTS,
        **model_input("base"),
    output:
        adapter=directory(f"{RESULTS}/adapters/{{method}}/seed{{seed}}"),
    params:
        spec=lambda w: MethodSpec.from_config(config, w.method).to_json(),
        base=model_arg("base"),
        checkpoints=f"{RESULTS}/checkpoints/{{method}}/seed{{seed}}",
        dtype=DTYPE,
        remote=REMOTE,
    threads: lambda w: config["training"]["threads"]
    resources:
        gpu=1,
        mem_mb=RES["gpu_mem_mb"],
        runtime=RES["gpu_runtime"],
    conda:
        ENV
    log:
        f"{RESULTS}/logs/train/{{method}}/seed{{seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{method}}/seed{{seed}}.tsv"
    shell:
        "lossgeom train --spec {params.spec:q} --seed {wildcards.seed} --rollouts {input.rollouts}"
        " --base {params.base} --out {output} --checkpoints {params.checkpoints}"
        " --dtype {params.dtype} {params.remote} --threads {threads} > {log} 2>&1"


# A data-order replicate: the LoRA init of {seed}, the data order of {data_seed} (the geometry's
# data-order noise floor; config key data_order_replicate). The same job as train, but for the data
# seed in its spec and its own paths.
use rule train as train_replicate with:
    output:
        adapter=directory(f"{RESULTS}/adapters/{{method}}/seed{{seed}}data{{data_seed}}"),
    wildcard_constraints:
        data_seed=r"\d+",
    params:
        spec=lambda w: MethodSpec.from_config(config, w.method).with_data_seed(int(w.data_seed)).to_json(),
        checkpoints=f"{RESULTS}/checkpoints/{{method}}/seed{{seed}}data{{data_seed}}",
    log:
        f"{RESULTS}/logs/train/{{method}}/seed{{seed}}data{{data_seed}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{method}}/seed{{seed}}data{{data_seed}}.tsv"


rule training_figures:
    input:
        [adapter_dir(label) for label in LABELS],
        code=figure_code("training"),
    output:
        **figure_outputs("training_curves", caption="../report/training_curves.rst", category="Training"),
    params:
        adapters=" ".join(f"{label}={adapter_dir(label)}" for label in LABELS),
        analysis_step=config["training"]["analysis_step"],
    resources:
        mem_mb=RES["cpu_mem_mb"],
        runtime=RES["cpu_runtime"],
    conda:
        ENV
    log:
        f"{RESULTS}/logs/training_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/training_figures.tsv"
    shell:
        "lossgeom training-figures {params.adapters} --analysis-step {params.analysis_step}"
        " --out {output.training_curves} > {log} 2>&1"
