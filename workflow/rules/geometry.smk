# Weight-space geometry of every adapter pair, from the LoRA factors (cheap: one aggregate job); the same
# along training (every saved step: trajectory), and every delta against the base's spectrum.

from lossgeom.geometry.spectrum import SPECTRUM_TABLES
from lossgeom.geometry.tables import SQUARE_METRICS
from lossgeom.geometry.trajectory import TRAJECTORY_TABLES

GEOMETRY = config["geometry"]
BASE_ALIGNMENT = GEOMETRY["base_alignment"]
# Every table the geometry job writes (lossgeom.geometry.write_geometry), by name: one square matrix
# per metric of SQUARE_METRICS, then the long-form tables; base_alignment.tsv only with a base model.
GEOMETRY_TABLES = [*SQUARE_METRICS, "per_layer", "adapters", "adapter_modules", "noise_floor", "long"]
GEOMETRY_TABLES += ["base_alignment"] if BASE_ALIGNMENT else []


rule geometry:
    input:
        [adapter_dir(label) for label in GEOMETRY_LABELS],
        **(model_input("base") if BASE_ALIGNMENT else {}),
    output:
        **{name: f"{RESULTS}/geometry/{name}.tsv" for name in GEOMETRY_TABLES if name != "noise_floor"},
        noise_floor=report(f"{RESULTS}/geometry/noise_floor.tsv", caption="../report/noise_floor.rst", category="Geometry"),
        settings=f"{RESULTS}/geometry/settings.json",
    params:
        adapters=labelled(GEOMETRY_LABELS, map(adapter_dir, GEOMETRY_LABELS)),
        top_k=GEOMETRY["top_k"],
        out=parent_of(0),
        base=lambda w, input: f"--base-model {model_arg('base')(w, input)} {REMOTE}" if BASE_ALIGNMENT else "",
    # from the factors alone a cheap aggregate, run in the Snakemake process; with base_alignment it reads the
    # base's attention weights in float64 and runs their SVDs (~7.5 GB for Qwen3-4B): a submitted CPU job
    localrule: not BASE_ALIGNMENT
    resources:
        **job_resources("geometry"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/geometry.log",
    benchmark:
        f"{RESULTS}/benchmarks/geometry.tsv"
    shell:
        "lossgeom geometry {params.adapters} --top-k {params.top_k} {params.base} --out {params.out} > {log} 2>&1"


add_targets(rules.geometry)


rule geometry_figures:
    input:
        # the tables lossgeom.figures.geometry.geometry_figures reads: its heatmaps, the labels, the
        # noise floor and the per-layer profiles
        cosine_global=rules.geometry.output.cosine_global,
        top1_angle_left_median=rules.geometry.output.top1_angle_left_median,
        orthogonal_fraction_global=rules.geometry.output.orthogonal_fraction_global,
        noise_floor=rules.geometry.output.noise_floor,
        per_layer=rules.geometry.output.per_layer,
        code=figure_code("geometry"),
    output:
        **figure_outputs("cosine_methods", caption="../report/cosine_methods.rst", category="Geometry"),
        **figure_outputs("cosine_global", caption="../report/cosine_global.rst", category="Geometry"),
        **figure_outputs("top1_angle_methods", caption="../report/top1_angle_methods.rst", category="Geometry"),
        **figure_outputs("top1_angle_left_median", caption="../report/top1_angle.rst", category="Geometry"),
        **figure_outputs("orthogonal_fraction_global", caption="../report/orthogonal_fraction.rst", category="Geometry"),
        **figure_outputs("per_layer_profiles", caption="../report/per_layer.rst", category="Geometry"),
    params:
        tables=parent_of("cosine_global", "input"),
        out=parent_of(0),
    localrule: True
    resources:
        **job_resources("geometry_figures"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/geometry_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/geometry_figures.tsv"
    shell:
        "lossgeom geometry-figures --tables {params.tables} --out {params.out} > {log} 2>&1"


add_targets(rules.geometry_figures)


# Every saved step of every adapter (train_info.json lists them), in a rule of its own that only its
# figure reads: the analysis-step tables and the claims never wait for it or rerun with it. Its factor
# caches persist in results/cache/factors (keyed by adapter content): a rerun builds only new steps' caches.
rule trajectory:
    input:
        [adapter_dir(label) for label in GEOMETRY_LABELS],
    output:
        **{name: f"{RESULTS}/trajectory/{name}.tsv" for name in TRAJECTORY_TABLES},
        settings=f"{RESULTS}/trajectory/settings.json",
    params:
        adapters=labelled(GEOMETRY_LABELS, map(adapter_dir, GEOMETRY_LABELS)),
        top_k=GEOMETRY["top_k"],
        cache=f"{RESULTS}/cache/factors",
        out=parent_of(0),
    localrule: True
    resources:
        **job_resources("trajectory"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/trajectory.log",
    benchmark:
        f"{RESULTS}/benchmarks/trajectory.tsv"
    shell:
        "lossgeom trajectory {params.adapters} --top-k {params.top_k} --cache-dir {params.cache} --out {params.out}"
        " > {log} 2>&1"


add_targets(rules.trajectory)


rule trajectory_figures:
    input:
        # the tables lossgeom.figures.trajectory reads
        paths=rules.trajectory.output.paths,
        steps=rules.trajectory.output.steps,
        cross_steps=rules.trajectory.output.cross_steps,
        code=figure_code("trajectory"),
    output:
        **figure_outputs("trajectory", caption="../report/trajectory.rst", category="Geometry along training"),
    params:
        tables=parent_of("paths", "input"),
        roles=labelled(CLAIM_ROLES, CLAIM_ROLES.values()),
        seed=config["seeds"][0],
    localrule: True
    resources:
        **job_resources("trajectory_figures"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/trajectory_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/trajectory_figures.tsv"
    shell:
        "lossgeom trajectory-figures --tables {params.tables} --roles {params.roles} --seed {params.seed}"
        " --out {output.trajectory} > {log} 2>&1"


add_targets(rules.trajectory_figures)


# Each delta against the base weights' own spectrum. The base's SVDs are cached by content in
# results/cache/base_svd (one per base module, whatever the study), so only the adapters' part reruns.
rule base_spectrum:
    input:
        [adapter_dir(label) for label in GEOMETRY_LABELS],
        **model_input("base"),
    output:
        modules=f"{RESULTS}/base_spectrum/modules.tsv",
        summary=report(
            f"{RESULTS}/base_spectrum/summary.tsv", caption="../report/base_spectrum_table.rst", category="Geometry against the base"
        ),
        settings=f"{RESULTS}/base_spectrum/settings.json",
        versions=versions_record("base_spectrum"),
    params:
        adapters=labelled(GEOMETRY_LABELS, map(adapter_dir, GEOMETRY_LABELS)),
        base=model_arg("base"),
        remote=REMOTE,
        top_k=config["base_spectrum"]["top_k"],
        threshold=config["base_spectrum"]["threshold"],
        seed=config["base_spectrum"]["seed"],
        cache=f"{RESULTS}/cache/base_svd",
        out=parent_of(0),
    resources:
        **job_resources("base_spectrum"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/base_spectrum.log",
    benchmark:
        f"{RESULTS}/benchmarks/base_spectrum.tsv"
    shell:
        "lossgeom base-spectrum {params.adapters} --base-model {params.base} {params.remote} --top-k {params.top_k}"
        " --threshold {params.threshold} --seed {params.seed} --cache-dir {params.cache} --out {params.out}"
        " --versions-out {output.versions} > {log} 2>&1"


add_targets(rules.base_spectrum)


rule base_spectrum_figures:
    input:
        summary=rules.base_spectrum.output.summary,
        code=figure_code("spectrum"),
    output:
        **figure_outputs("base_spectrum", caption="../report/base_spectrum.rst", category="Geometry against the base"),
    params:
        tables=parent_of("summary", "input"),
        roles=labelled(CLAIM_ROLES, CLAIM_ROLES.values()),
        seed=config["seeds"][0],
    localrule: True
    resources:
        **job_resources("base_spectrum_figures"),
    conda:
        ENV
    log:
        f"{RESULTS}/logs/base_spectrum_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/base_spectrum_figures.tsv"
    shell:
        "lossgeom base-spectrum-figures --tables {params.tables} --roles {params.roles} --seed {params.seed}"
        " --out {output.base_spectrum} > {log} 2>&1"


add_targets(rules.base_spectrum_figures)
