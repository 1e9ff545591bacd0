# What the deltas do: one evaluation job per model (base and every adapter) running every configured measure
# (lossgeom.measures: accuracy and cross-entropies, the CKA probes' hidden states, samples for pass@k and the
# KL to the base, held-out text for forgetting) in one process (the imports and the model load cost more than
# the toy's measurements); per measure its statistics over all models and its figures; one connectivity
# sweep per pair. A measure's rules are made from its module: adding a measure adds no rule here.

LMC = config["lmc"]
MODELS = ["base", *LABELS]
MEASURES = measures.configured(config)  # the study's, in the evaluation job's order


wildcard_constraints:
    model=f"base|{STUDY_LABEL}",


rule evaluate:
    input:
        unpack(model_adapter),
        unpack(base_outputs_input),
        **model_input("base"),
        **measure_inputs(),
    output:
        **{m.name: measure_output(m) for m in MEASURES},
        versions=versions_record("evaluate", "{model}"),
    params:
        spec=verbatim(as_json(measures.evaluation_spec(config))),
        base=model_arg("base"),
        adapter=adapter_arg,
        toy=toy_dir_arg,
        outputs=measure_outputs_arg,
        base_outputs=base_outputs_arg,
        generation=verbatim(as_json(cfg.generation_spec(config, "evaluation"))),
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
        "lossgeom evaluate --spec {params.spec:q} --base {params.base} --adapter {params.adapter} {params.toy}"
        " --outputs {params.outputs} --base-outputs {params.base_outputs} --generation {params.generation:q}"
        " --threads {threads} --versions-out {output.versions} > {log} 2>&1"


# Each measure's statistics over every model's table, and its figures: rules named by the measure
# (stats_rule, figure_rule: eval_stats, cka, behaviour_stats, and their figures), run in the Snakemake process.
for _measure in MEASURES:
    if _measure.stats_rule is None:
        continue

    rule:
        name:
            _measure.stats_rule
        input:
            **measure_stats_inputs(_measure),
        output:
            **measure_stats_outputs(_measure),
        params:
            measure=_measure.name,
            spec=verbatim(as_json(config[_measure.section])),
            inputs=measure_stats_args(_measure),
            out=parent_of(0),
        localrule: True
        resources:
            **job_resources(_measure.stats_rule),
        conda:
            ENV
        log:
            f"{RESULTS}/logs/{_measure.stats_rule}.log",
        benchmark:
            f"{RESULTS}/benchmarks/{_measure.stats_rule}.tsv"
        shell:
            "lossgeom measure-stats {params.measure} --spec {params.spec:q} --inputs {params.inputs:q}"
            " --out {params.out} > {log} 2>&1"

    add_targets(getattr(rules, _measure.stats_rule))
    if _measure.figure_rule is None:
        continue

    rule:
        name:
            _measure.figure_rule
        input:
            **named(getattr(rules, _measure.stats_rule).output),
            code=figure_code(_measure.figure_module),
        output:
            **{k: v for names, caption, category in _measure.figure_outputs(config)
               for k, v in figure_outputs(*names, caption=f"../report/{caption}", category=category).items()},
        params:
            measure=_measure.name,
            tables=parent_of(0, "input"),
            out=parent_of(0),
        localrule: True
        resources:
            **job_resources(_measure.figure_rule),
        conda:
            ENV
        log:
            f"{RESULTS}/logs/{_measure.figure_rule}.log",
        benchmark:
            f"{RESULTS}/benchmarks/{_measure.figure_rule}.tsv"
        shell:
            "lossgeom measure-figures {params.measure} --tables {params.tables} --out {params.out} > {log} 2>&1"

    add_targets(getattr(rules, _measure.figure_rule))


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
        spec=verbatim(as_json(cfg.lmc_spec(config))),
        base=model_arg("base"),
        toy=toy_dir_arg,
        generation=verbatim(as_json(cfg.generation_spec(config, "lmc"))),
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
        "lossgeom lmc --spec {params.spec:q} --base {params.base} --first {wildcards.first}={input.first}"
        " --second {wildcards.second}={input.second} {params.toy} --generation {params.generation:q}"
        " --threads {threads} --out {output.sweep}"
        " --versions-out {output.versions} > {log} 2>&1"


rule lmc_summary:
    input:
        [lmc_sweep(a, b) for a, b in cfg.lmc_pairs(config)],
    output:
        summary=report(f"{RESULTS}/lmc/summary.tsv", caption="../report/lmc_table.rst", category="Connectivity"),
        curves=f"{RESULTS}/lmc/curves.tsv",
    localrule: True
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


add_targets(rules.lmc_summary)


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
    localrule: True
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


add_targets(rules.connectivity_figures)


