# What the deltas do: one evaluation job per model (base and every adapter), one connectivity sweep per
# pair, and cheap aggregates (statistics, barriers, CKA, pass@k, KL, forgetting) over their outputs.
# The evaluation job measures everything of one model in one process (the imports and the model load
# cost more than the toy's measurements): greedy pass@1 and cross-entropies, the CKA probes' hidden
# states, samples (pass@k, KL to the base) and the held-out text (forgetting). An adapter's job reads
# the base's samples (KL(base || adapter)), so the base's evaluation runs first.

EVAL = config["evaluation"]
LMC = config["lmc"]
CKA = config["cka"]


wildcard_constraints:
    model=f"base|{STUDY_LABEL}",


rule evaluate:
    input:
        unpack(model_adapter),
        unpack(base_samples_input),
        **model_input("base"),
        **toy_input(*config["test_sets"].values(), FORGETTING),
        **heldout_input(),
    output:
        evaluation=f"{RESULTS}/eval/{{model}}.parquet",
        activations=f"{RESULTS}/activations/{{model}}.npz",
        samples=f"{RESULTS}/samples/{{model}}.parquet",
        **({"heldout": f"{RESULTS}/heldout/{{model}}.parquet"} if HAS_FORGETTING else {}),
        versions=versions_record("evaluate", "{model}"),
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
        behaviour=behaviour_args,
        activations=lambda w: as_json({
            "test_set": config["test_sets"][CKA["test_set"]], **{k: CKA[k] for k in ("n_probe", "pooling", "batch_size")}
        }),
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
        " --threads {threads} --activations {params.activations:q} --activations-out {output.activations}"
        " {params.behaviour} --out {output.evaluation} --versions-out {output.versions} > {log} 2>&1"


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


rule behaviour_stats:
    input:
        samples=expand(rules.evaluate.output.samples, model=MODELS),
        heldout=expand(rules.evaluate.output.heldout, model=MODELS) if HAS_FORGETTING else [],
        # each delta's norm: the contrast to the KL in forgetting_vs_kl.tsv
        adapters=rules.geometry.output.adapters if HAS_FORGETTING else [],
    output:
        pass_at_k=report(f"{RESULTS}/behaviour/pass_at_k.tsv", caption="../report/pass_at_k_table.rst", category="Accuracy"),
        kl=report(f"{RESULTS}/behaviour/kl.tsv", caption="../report/kl_table.rst", category="KL and forgetting"),
        pairwise=f"{RESULTS}/behaviour/pairwise.tsv",
        **(
            {
                "forgetting": report(f"{RESULTS}/behaviour/forgetting.tsv", caption="../report/forgetting_table.rst",
                                     category="KL and forgetting"),
                "forgetting_vs_kl": f"{RESULTS}/behaviour/forgetting_vs_kl.tsv",
            }
            if HAS_FORGETTING
            else {}
        ),
    params:
        samples=lambda w, input: " ".join(f"{m}={p}" for m, p in zip(MODELS, input.samples)),
        heldout=lambda w, input: (
            "--heldout " + " ".join(f"{m}={p}" for m, p in zip(MODELS, input.heldout)) + f" --adapters {input.adapters}"
            if HAS_FORGETTING
            else ""
        ),
        k=" ".join(str(k) for k in BEHAVIOUR["k"]),
        temperature=BEHAVIOUR["temperature"],
        n_boot=BEHAVIOUR["n_boot"],
        ci=BEHAVIOUR["ci"],
        out=parent_of("pass_at_k"),
    resources:
        **job_resources("behaviour_stats"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/behaviour_stats.log",
    benchmark:
        f"{RESULTS}/benchmarks/behaviour_stats.tsv"
    shell:
        "lossgeom behaviour-stats {params.samples} {params.heldout} --k {params.k} --temperature {params.temperature}"
        " --n-boot {params.n_boot} --ci {params.ci} --out {params.out} > {log} 2>&1"


rule lmc:
    input:
        first=rules.train.output.adapter.replace("{label}", "{first}"),
        second=rules.train.output.adapter.replace("{label}", "{second}"),
        **model_input("base"),
        **toy_input(config["test_sets"][LMC["test_set"]]),
    output:
        sweep=f"{RESULTS}/lmc/{{first}}/{{second}}.tsv",
        versions=versions_record("lmc", "{first}/{second}"),
    wildcard_constraints:  # a data-order replicate may be an endpoint (a seed claim's second replicate)
        first=wildcard_pattern(config["methods"]),
        second=wildcard_pattern(config["methods"]),
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
        " --generation {params.generation:q} --dtype {params.dtype} {params.remote} --threads {threads} --out {output.sweep}"
        " --versions-out {output.versions} > {log} 2>&1"


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


rule cka:
    input:
        expand(rules.evaluate.output.activations, model=MODELS),
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


rule behaviour_figures:
    input:
        pass_at_k=rules.behaviour_stats.output.pass_at_k,
        kl=rules.behaviour_stats.output.kl,
        **(
            {"forgetting": rules.behaviour_stats.output.forgetting,
             "forgetting_vs_kl": rules.behaviour_stats.output.forgetting_vs_kl}
            if HAS_FORGETTING
            else {}
        ),
        code=figure_code("behaviour"),
    output:
        **figure_outputs("pass_at_k", caption="../report/pass_at_k.rst", category="Accuracy"),
        **figure_outputs("kl_forgetting", caption="../report/kl_forgetting.rst", category="KL and forgetting"),
    params:
        tables=parent_of("pass_at_k", "input"),
        out=parent_of(0),
    resources:
        **job_resources("behaviour_figures"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/behaviour_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/behaviour_figures.tsv"
    shell:
        "lossgeom behaviour-figures --tables {params.tables} --out {params.out} > {log} 2>&1"
