# Training: one job per adapter label (method, seed[, data seed]). Checkpoints live outside the output directory so that a
# killed (or preempted) job resumes from them when it is rerun.


rule train:
    input:
        rollouts=ROLLOUTS,
        **model_input("base"),
    output:
        # {label}: method/seed<N> (an adapter of the study) or method/seed<N>data<M> (a data-order
        # replicate: the LoRA init of N, the data order of M; the geometry's data-order noise floor)
        adapter=directory(f"{RESULTS}/adapters/{{label}}"),
        versions=versions_record("train", "{label}"),
    params:
        spec=lambda w: train_spec(w.label),
        seed=lambda w: Label.parse(w.label).seed,
        base=model_arg("base"),
        checkpoints=f"{RESULTS}/checkpoints/{{label}}",
        dtype=DTYPE,
        remote=REMOTE,
    threads: job_threads("train")
    resources:
        **job_resources("train"),
    conda:
        job_env("train")
    log:
        f"{RESULTS}/logs/train/{{label}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/train/{{label}}.tsv"
    shell:
        "lossgeom train --spec {params.spec:q} --seed {params.seed} --rollouts {input.rollouts}"
        " --base {params.base} --out {output.adapter} --checkpoints {params.checkpoints}"
        " --dtype {params.dtype} {params.remote} --threads {threads} --versions-out {output.versions} > {log} 2>&1"


rule training_figures:
    input:
        [adapter_dir(label) for label in LABELS],
        code=figure_code("training"),
    output:
        **figure_outputs("training_curves", caption="../report/training_curves.rst", category="Training"),
    params:
        adapters=labelled(LABELS, map(adapter_dir, LABELS)),
        analysis_step=config["training"]["analysis_step"],
    localrule: True
    resources:
        **job_resources("training_figures"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/training_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/training_figures.tsv"
    shell:
        "lossgeom training-figures {params.adapters} --analysis-step {params.analysis_step}"
        " --out {output.training_curves} > {log} 2>&1"


add_targets(rules.training_figures)
