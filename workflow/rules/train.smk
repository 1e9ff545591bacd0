# Training: one job per (method, seed). Checkpoints live outside the output directory so that a
# killed (or preempted) job resumes from them when it is rerun.


rule train:
    input:
        rollouts=f"{RESULTS}/rollouts/rollouts.parquet",
        **model_input("base"),
    output:
        directory(f"{RESULTS}/adapters/{{method}}/seed{{seed}}"),
    params:
        spec=lambda w: MethodSpec.from_config(config, w.method).to_json(),
        base=model_arg("base"),
        checkpoints=f"{RESULTS}/checkpoints/{{method}}/seed{{seed}}",
        dtype=DTYPE,
        remote=REMOTE,
    threads: lambda w: config["training"].get("threads", 1)
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
        " --dtype {params.dtype} {params.remote} --threads {threads} 2> {log}"
