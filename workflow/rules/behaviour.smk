# What the deltas do: one evaluation and one activation job per model (base and every adapter), one
# connectivity sweep per pair, and cheap aggregates (statistics, barriers, CKA) over their outputs.

EVAL = config["evaluation"]
LMC = config["lmc"]
CKA = config["cka"]
MODELS = ["base", *LABELS]


wildcard_constraints:
    model=f"base|{STUDY_LABEL}",


rule evaluate:
    input:
        unpack(model_adapter),
        **model_input("base"),
        **toy_input(*config["test_sets"].values()),
    output:
        evaluation=f"{RESULTS}/eval/{{model}}.parquet",
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
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate"),
    conda:
        job_env("evaluate")
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
        expand(rules.evaluate.output.evaluation, model=MODELS),
    output:
        accuracy=report(f"{RESULTS}/eval/accuracy.tsv", caption="../report/accuracy_table.rst", category="Accuracy"),
        pairwise=report(f"{RESULTS}/eval/pairwise.tsv", caption="../report/pairwise_table.rst", category="Accuracy"),
        cochran=f"{RESULTS}/eval/cochran.json",
    params:
        evaluations=lambda w, input: " ".join(f"{m}={p}" for m, p in zip(MODELS, input)),
        ci=EVAL["ci"],
        n_boot=EVAL["n_boot"],
        mid_p="--mid-p" if EVAL["mid_p"] else "",
        seed=EVAL["seed"],
        out=parent_of(0),
    resources:
        **job_resources("eval_stats"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/eval_stats.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval_stats.tsv"
    shell:
        "lossgeom eval-stats {params.evaluations} --ci {params.ci} --n-boot {params.n_boot} {params.mid_p} --seed {params.seed} --out {params.out} > {log} 2>&1"


rule lmc:
    input:
        first=rules.train.output.adapter.replace("{label}", "{first}"),
        second=rules.train.output.adapter.replace("{label}", "{second}"),
        **model_input("base"),
        **toy_input(config["test_sets"][LMC["test_set"]]),
    output:
        sweep=f"{RESULTS}/lmc/{{first}}/{{second}}.tsv",
    wildcard_constraints:
        first=STUDY_LABEL,
        second=STUDY_LABEL,
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
    threads: job_threads("lmc")
    resources:
        **job_resources("lmc"),
    conda:
        job_env("lmc")
    log:
        f"{RESULTS}/logs/lmc/{{first}}/{{second}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/lmc/{{first}}/{{second}}.tsv"
    shell:
        "lossgeom lmc --base {params.base} --first {wildcards.first}={input.first}"
        " --second {wildcards.second}={input.second} --test-set {params.test_set:q} {params.toy}"
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
        **job_resources("lmc_summary"),
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
        activations=f"{RESULTS}/activations/{{model}}.npz",
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
    threads: job_threads("activations")
    resources:
        **job_resources("activations"),
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
        expand(rules.activations.output.activations, model=MODELS),
    output:
        cka=f"{RESULTS}/cka/cka.tsv",
    params:
        activations=lambda w, input: " ".join(f"{m}={p}" for m, p in zip(MODELS, input)),
    resources:
        **job_resources("cka"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/cka.log",
    benchmark:
        f"{RESULTS}/benchmarks/cka.tsv"
    shell:
        "lossgeom cka {params.activations} --out {output} > {log} 2>&1"


# The figures of each analysis: one rule per figure module (lossgeom.figures.<analysis>), reading
# exactly its tables and tracking exactly its code.
rule accuracy_figures:
    input:
        accuracy=rules.eval_stats.output.accuracy,
        pairwise=rules.eval_stats.output.pairwise,
        code=figure_code("accuracy"),
    output:
        # one pair of figures per test set: the names follow the config
        **figure_outputs(*(f"accuracy_{t}" for t in config["test_sets"]), caption="../report/accuracy.rst",
                         category="Accuracy"),
        **figure_outputs(*(f"mcnemar_{t}" for t in config["test_sets"]), caption="../report/mcnemar.rst",
                         category="Accuracy"),
    params:
        out=parent_of(0),
    resources:
        **job_resources("accuracy_figures"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/accuracy_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/accuracy_figures.tsv"
    shell:
        "lossgeom accuracy-figures --accuracy {input.accuracy} --pairwise {input.pairwise} --out {params.out} > {log} 2>&1"


rule connectivity_figures:
    input:
        summary=rules.lmc_summary.output.summary,
        curves=rules.lmc_summary.output.curves,
        code=figure_code("connectivity"),
    output:
        **figure_outputs("lmc", caption="../report/lmc.rst", category="Connectivity"),
        **figure_outputs("lmc_pairs", caption="../report/lmc_pairs.rst", category="Connectivity"),
    params:
        out=parent_of(0),
    resources:
        **job_resources("connectivity_figures"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/connectivity_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/connectivity_figures.tsv"
    shell:
        "lossgeom connectivity-figures --summary {input.summary} --curves {input.curves} --out {params.out} > {log} 2>&1"


rule representations_figures:
    input:
        cka=rules.cka.output.cka,
        code=figure_code("representations"),
    output:
        **figure_outputs("cka_profiles", caption="../report/cka.rst", category="Representations"),
        **figure_outputs("cka_last_layer", caption="../report/cka_last_layer.rst", category="Representations"),
    params:
        out=parent_of(0),
    resources:
        **job_resources("representations_figures"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/representations_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/representations_figures.tsv"
    shell:
        "lossgeom representations-figures --cka {input.cka} --out {params.out} > {log} 2>&1"
