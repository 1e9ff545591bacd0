# Rollouts: K graded samples per prompt from the teacher (or the base), or an imported file.


if config["rollouts"]["import"]:

    rule import_rollouts:
        input:
            config["rollouts"]["import"],
        output:
            rollouts=f"{RESULTS}/rollouts/rollouts.parquet",
        localrule: True
        resources:
            **job_resources("import_rollouts"),
        conda:
            ENV
        log:
            f"{RESULTS}/logs/import_rollouts.log",
        benchmark:
            f"{RESULTS}/benchmarks/import_rollouts.tsv"
        shell:
            "lossgeom import-rollouts --file {input} --out {output} > {log} 2>&1"

else:
    # An API teacher (generation backend "openai") has no local model to track; its completed requests
    # are journalled outside the output, so a killed or preempted job resumes without re-requesting them.
    # It is a local rule: it needs no GPU and must reach the network, which compute nodes often cannot;
    # it runs where Snakemake runs (the login or submit node), for hours or days, mostly waiting.
    ROLLOUT_API = api_rollouts(config)

    rule rollouts:
        input:
            **({} if ROLLOUT_API else model_input(config["rollouts"]["sampler"])),
            **toy_input(config["prompts"]),
        output:
            rollouts=f"{RESULTS}/rollouts/rollouts.parquet",
            versions=versions_record("rollouts"),
        params:
            model=model_arg(config["rollouts"]["sampler"]),
            problems=as_json(config["prompts"]),
            spec=as_json({k: v for k, v in config["rollouts"].items() if k not in ("import", "sampler")}),
            toy_dir=toy_dir_arg,
            template=verbatim(TEMPLATE),
            generation=lambda w: as_json(cfg.generation_spec(config, "rollouts")),
            journal=f"--journal {RESULTS}/journals/rollouts.jsonl" if ROLLOUT_API else "",
            dtype=DTYPE,
            remote=REMOTE,
        threads: job_threads("rollouts")
        localrule: ROLLOUT_API
        resources:
            **job_resources("rollouts"),
            # the backend's runtime-only options (requests in flight, retries, timeouts, prices) travel as a
            # resource, not a param: resources are no rerun trigger, so changing them never reruns a
            # finished table (an API teacher's: days of requests and their bill). Only the API teacher has
            # such options, and its job is local; a submitted job gets the plain word null
            generation_runtime=as_json(cfg.generation_runtime(config, "rollouts")) if ROLLOUT_API else "null",
        conda:
            job_env("rollouts")
        log:
            f"{RESULTS}/logs/rollouts.log",
        benchmark:
            f"{RESULTS}/benchmarks/rollouts.tsv"
        shell:
            "lossgeom rollouts --model {params.model} --problems {params.problems:q} {params.toy_dir}"
            " --spec {params.spec:q} --template {params.template:q} --generation {params.generation:q} {params.journal}"
            " --generation-runtime {resources.generation_runtime:q}"
            " --dtype {params.dtype} {params.remote} --threads {threads} --out {output.rollouts}"
            " --versions-out {output.versions} > {log} 2>&1"


# The rule that writes the rollout table, and the table: what training and the summary read.
ROLLOUTS_RULE = rules.import_rollouts if config["rollouts"]["import"] else rules.rollouts
ROLLOUTS = ROLLOUTS_RULE.output.rollouts


# What the rollouts are, in numbers (rows, accuracy, truncated, grade notes, the served model): the
# report's Rollouts page. A rule of its own, so it serves sampled and imported tables alike.
rule rollouts_summary:
    input:
        ROLLOUTS,
    output:
        summary=report(f"{RESULTS}/rollouts/summary.tsv", caption="../report/rollouts.rst", category="Rollouts"),
    localrule: True
    resources:
        **job_resources("rollouts_summary"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/rollouts_summary.log",
    benchmark:
        f"{RESULTS}/benchmarks/rollouts_summary.tsv"
    shell:
        "lossgeom rollouts-summary --rollouts {input} --out {output} > {log} 2>&1"


add_targets(rules.rollouts_summary)
