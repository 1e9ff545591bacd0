# What the deltas do: one evaluation and one activation job per model (base and every adapter), one
# connectivity sweep per pair, and cheap aggregates (statistics, barriers, CKA) over their outputs.

EVAL = cfg.section(config, "evaluation")
LMC = cfg.section(config, "lmc")
CKA = cfg.section(config, "cka")
MODELS = ["base", *LABELS]


wildcard_constraints:
    model=r"base|[A-Za-z0-9_-]+/seed\d+",


rule evaluate:
    input:
        unpack(model_adapter),
        **model_input("base"),
        **toy_input(*config["test_sets"].values()),
    output:
        f"{RESULTS}/eval/{{model}}.parquet",
    params:
        base=model_arg("base"),
        adapter=adapter_arg,
        toy=toy_dir_arg,
        test_sets=lambda w: as_json(config["test_sets"]),
        template=lambda w: TEMPLATE,
        answer_template=lambda w: ANSWER_TEMPLATE,
        max_new_tokens=EVAL["max_new_tokens"],
        batch_size=EVAL["batch_size"],
        generation=lambda w: as_json(cfg.generation_spec(config, "evaluation")),
        dtype=DTYPE,
        remote=REMOTE,
    threads: 1
    resources:
        gpu=1,
        mem_mb=RES["gpu_mem_mb"],
        runtime=RES["gpu_runtime"],
    conda:
        ENV
    log:
        f"{RESULTS}/logs/evaluate/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/evaluate/{{model}}.tsv"
    shell:
        "lossgeom evaluate --base {params.base} --adapter {params.adapter} --test-sets {params.test_sets:q}"
        " {params.toy} --template {params.template:q} --answer-template {params.answer_template:q} --max-new-tokens {params.max_new_tokens}"
        " --batch-size {params.batch_size} --generation {params.generation:q} --dtype {params.dtype} {params.remote}"
        " --threads {threads} --out {output} > {log} 2>&1"


rule eval_stats:
    input:
        [f"{RESULTS}/eval/{m}.parquet" for m in MODELS],
    output:
        report(f"{RESULTS}/eval/accuracy.tsv", caption="../report/accuracy_table.rst", category="Accuracy"),
        report(f"{RESULTS}/eval/pairwise.tsv", caption="../report/pairwise_table.rst", category="Accuracy"),
        f"{RESULTS}/eval/cochran.json",
    params:
        evaluations=lambda w, input: " ".join(f"{m}={p}" for m, p in zip(MODELS, input)),
        ci=EVAL["ci"],
        n_boot=EVAL["n_boot"],
        mid_p="--mid-p" if EVAL["mid_p"] else "",
        out=parent_of(0),
    resources:
        mem_mb=RES["cpu_mem_mb"],
        runtime=RES["cpu_runtime"],
    conda:
        ENV
    log:
        f"{RESULTS}/logs/eval_stats.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval_stats.tsv"
    shell:
        "lossgeom eval-stats {params.evaluations} --ci {params.ci} --n-boot {params.n_boot} {params.mid_p} --out {params.out} > {log} 2>&1"


rule lmc:
    input:
        first=f"{RESULTS}/adapters/{{ma}}/seed{{sa}}",
        second=f"{RESULTS}/adapters/{{mb}}/seed{{sb}}",
        **model_input("base"),
        **toy_input(config["test_sets"][LMC["test_set"]]),
    output:
        f"{RESULTS}/lmc/{{ma}}/seed{{sa}}/{{mb}}/seed{{sb}}.tsv",
    wildcard_constraints:
        ma="|".join(config["methods"]),
        mb="|".join(config["methods"]),
        sa=r"\d+",
        sb=r"\d+",
    params:
        base=model_arg("base"),
        toy=toy_dir_arg,
        test_set=lambda w: as_json(config["test_sets"][LMC["test_set"]]),
        spec=lambda w: {k: LMC[k] for k in ("alphas", "limit", "accuracy_subset")},
        template=lambda w: TEMPLATE,
        answer_template=lambda w: ANSWER_TEMPLATE,
        max_new_tokens=EVAL["max_new_tokens"],
        batch_size=EVAL["batch_size"],
        generation=lambda w: as_json(cfg.generation_spec(config, "lmc")),
        dtype=DTYPE,
        remote=REMOTE,
    threads: 1
    resources:
        gpu=1,
        mem_mb=RES["gpu_mem_mb"],
        runtime=RES["gpu_runtime"],
    conda:
        ENV
    log:
        f"{RESULTS}/logs/lmc/{{ma}}/seed{{sa}}/{{mb}}/seed{{sb}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/lmc/{{ma}}/seed{{sa}}/{{mb}}/seed{{sb}}.tsv"
    shell:
        "lossgeom lmc --base {params.base} --first {wildcards.ma}/seed{wildcards.sa}={input.first}"
        " --second {wildcards.mb}/seed{wildcards.sb}={input.second} --test-set {params.test_set:q} {params.toy}"
        " --alphas {params.spec[alphas]} --limit {params.spec[limit]} --accuracy-subset {params.spec[accuracy_subset]}"
        " --template {params.template:q} --answer-template {params.answer_template:q} --max-new-tokens {params.max_new_tokens} --batch-size {params.batch_size}"
        " --generation {params.generation:q} --dtype {params.dtype} {params.remote} --threads {threads} --out {output} > {log} 2>&1"


rule lmc_summary:
    input:
        [lmc_sweep(a, b) for a, b in cfg.lmc_pairs(config)],
    output:
        summary=report(f"{RESULTS}/lmc/summary.tsv", caption="../report/lmc_table.rst", category="Connectivity"),
        curves=f"{RESULTS}/lmc/curves.tsv",
    resources:
        mem_mb=RES["cpu_mem_mb"],
        runtime=RES["cpu_runtime"],
    conda:
        ENV
    log:
        f"{RESULTS}/logs/lmc_summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/lmc_summary.tsv"
    shell:
        "lossgeom lmc-summary {input} --out {output.summary} > {log} 2>&1"


rule activations:
    input:
        unpack(model_adapter),
        **model_input("base"),
        **toy_input(config["test_sets"][CKA["test_set"]]),
    output:
        f"{RESULTS}/activations/{{model}}.npz",
    params:
        base=model_arg("base"),
        adapter=adapter_arg,
        toy=toy_dir_arg,
        test_set=lambda w: as_json(config["test_sets"][CKA["test_set"]]),
        n_probe=CKA["n_probe"],
        pooling=CKA["pooling"],
        batch_size=CKA["batch_size"],
        template=lambda w: TEMPLATE,
        answer_template=lambda w: ANSWER_TEMPLATE,
        dtype=DTYPE,
        remote=REMOTE,
    threads: 1
    resources:
        gpu=1,
        mem_mb=RES["gpu_mem_mb"],
        runtime=RES["gpu_runtime"],
    conda:
        ENV
    log:
        f"{RESULTS}/logs/activations/{{model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/activations/{{model}}.tsv"
    shell:
        "lossgeom activations --base {params.base} --adapter {params.adapter} --test-set {params.test_set:q}"
        " {params.toy} --n-probe {params.n_probe} --pooling {params.pooling} --batch-size {params.batch_size}"
        " --template {params.template:q} --answer-template {params.answer_template:q} --dtype {params.dtype} {params.remote} --threads {threads}"
        " --out {output} > {log} 2>&1"


rule cka:
    input:
        [f"{RESULTS}/activations/{m}.npz" for m in MODELS],
    output:
        f"{RESULTS}/cka/cka.tsv",
    params:
        activations=lambda w, input: " ".join(f"{m}={p}" for m, p in zip(MODELS, input)),
    resources:
        mem_mb=RES["cpu_mem_mb"],
        runtime=RES["cpu_runtime"],
    conda:
        ENV
    log:
        f"{RESULTS}/logs/cka.log",
    benchmark:
        f"{RESULTS}/benchmarks/cka.tsv"
    shell:
        "lossgeom cka {params.activations} --out {output} > {log} 2>&1"


rule behaviour_figures:
    input:
        accuracy=f"{RESULTS}/eval/accuracy.tsv",
        lmc=f"{RESULTS}/lmc/summary.tsv",
        cka=f"{RESULTS}/cka/cka.tsv",
        code=FIGURE_CODE / "behaviour.py",
    output:
        report(f"{RESULTS}/figures/lmc.png", caption="../report/lmc.rst", category="Connectivity"),
        report(f"{RESULTS}/figures/lmc_pairs.png", caption="../report/lmc_pairs.rst", category="Connectivity"),
        report(f"{RESULTS}/figures/cka_profiles.png", caption="../report/cka.rst", category="Representations"),
        report(f"{RESULTS}/figures/cka_last_layer.png", caption="../report/cka_last_layer.rst", category="Representations"),
        *[report(f"{RESULTS}/figures/accuracy_{t}.png", caption="../report/accuracy.rst", category="Accuracy")
          for t in config["test_sets"]],
        *[report(f"{RESULTS}/figures/mcnemar_{t}.png", caption="../report/mcnemar.rst", category="Accuracy")
          for t in config["test_sets"]],
    params:
        eval_dir=lambda w, input: str(Path(input.accuracy).parent),
        lmc_dir=lambda w, input: str(Path(input.lmc).parent),
        out=parent_of(0),
    resources:
        mem_mb=RES["cpu_mem_mb"],
        runtime=RES["cpu_runtime"],
    conda:
        ENV
    log:
        f"{RESULTS}/logs/behaviour_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/behaviour_figures.tsv"
    shell:
        "lossgeom behaviour-figures --eval-dir {params.eval_dir} --lmc-dir {params.lmc_dir} --cka {input.cka}"
        " --out {params.out} > {log} 2>&1"
