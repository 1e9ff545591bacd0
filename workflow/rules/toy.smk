# The toy world: generated problems, an offline tokenizer, and small Qwen3 base and teacher models
# trained from scratch, or copied from a shipped directory (toy.models_from). Only scheduled when the
# config uses "toy" somewhere.


rule toy_world:
    output:
        directory(f"{TOY}/world"),
    params:
        spec=lambda w: as_json(config["toy"]),
    localrule: True
    resources:
        **job_resources("toy_world"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/toy_world.log",
    benchmark:
        f"{RESULTS}/benchmarks/toy_world.tsv"
    shell:
        "lossgeom toy-world --spec {params.spec:q} --out {output} > {log} 2>&1"


rule toy_model:
    input:
        world=f"{TOY}/world",
        shipped=toy_shipped,
    output:
        model=directory(f"{TOY}/models/{{name}}"),
        versions=versions_record("toy_model", "{name}"),
    wildcard_constraints:
        name="base|teacher",
    params:
        spec=lambda w: as_json(config["toy"]["models"][w.name]),
        seed=lambda w: config["toy"]["seed"] + (0 if w.name == "base" else 1),
        template=verbatim(TEMPLATE),
        shipped=toy_shipped_arg,
    threads: job_threads("toy_model")
    resources:
        **job_resources("toy_model"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/toy_model/{{name}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/toy_model/{{name}}.tsv"
    shell:
        "lossgeom toy-model --spec {params.spec:q} --world {input.world} --template {params.template:q}"
        " --seed {params.seed} --threads {threads} --out {output.model} --versions-out {output.versions}"
        " {params.shipped} > {log} 2>&1"
