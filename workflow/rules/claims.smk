# The paper's claims, checked against this run: one cheap aggregate over the other stages' tables; and the
# library versions of every model job, another.

rule claims:
    input:
        # the tables lossgeom.claims.check reads
        noise_floor=rules.geometry.output.noise_floor,
        adapters=rules.geometry.output.adapters,
        pairwise=rules.eval_stats.output.pairwise,
        lmc=rules.lmc_summary.output.summary,
        cka=rules.cka.output.cka,
        base_spectrum=rules.base_spectrum.output.summary,
        # where forgetting is measured (the samples measure's statistics then write forgetting_vs_kl.tsv)
        **{k: v for k, v in named(rules.behaviour_stats.output).items() if k == "forgetting_vs_kl"},
    output:
        claims=report(f"{RESULTS}/claims.tsv", caption="../report/claims.rst", category="0 Claims"),
        html=report(f"{RESULTS}/claims.html", caption="../report/claims.rst", category="0 Claims"),
    params:
        roles=labelled(CLAIM_ROLES, CLAIM_ROLES.values()),
        seed=config["seeds"][0],
        geometry=parent_of("noise_floor", "input"),
        eval_dir=parent_of("pairwise", "input"),
        base_spectrum=parent_of("base_spectrum", "input"),
        behaviour=lambda w, input: (
            f"--behaviour {Path(input.forgetting_vs_kl).parent}" if "forgetting_vs_kl" in input.keys() else ""
        ),
    localrule: True
    resources:
        **job_resources("claims"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/claims.log",
    benchmark:
        f"{RESULTS}/benchmarks/claims.tsv"
    shell:
        "lossgeom claims --geometry {params.geometry} --eval-dir {params.eval_dir} --lmc {input.lmc} --cka {input.cka}"
        " --base-spectrum {params.base_spectrum} {params.behaviour} --roles {params.roles} --seed {params.seed} --out {output.claims} --html {output.html} > {log} 2>&1"


add_targets(rules.claims)


# The library versions every model-running job ran with (each job's versions output, gathered by
# version_records in common.smk), in one table with the distributions that differ across jobs flagged: the
# report's Settings page. A cheap aggregate, run locally.
rule versions:
    input:
        lambda w: list(version_records().values()),
    output:
        versions=report(f"{RESULTS}/versions.tsv", caption="../report/versions.rst", category="Settings"),
        # the same table as a page the report shows, the versions that differ across jobs marked
        html=report(f"{RESULTS}/versions.html", caption="../report/versions.rst", category="Settings"),
    params:
        records=lambda w: labelled(version_records(), version_records().values()),
    localrule: True
    resources:
        **job_resources("versions"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/versions.log",
    benchmark:
        f"{RESULTS}/benchmarks/versions.tsv"
    shell:
        "lossgeom versions {params.records} --out {output.versions} --html {output.html} > {log} 2>&1"


add_targets(rules.versions)
