# Weight-space geometry of every adapter pair, from the LoRA factors (cheap: one aggregate job).

from lossgeom.geometry.tables import SQUARE_METRICS

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
        adapters=" ".join(f"{label}={adapter_dir(label)}" for label in GEOMETRY_LABELS),
        top_k=GEOMETRY["top_k"],
        out=parent_of(0),
        base=lambda w, input: f"--base-model {model_arg('base')(w, input)} {REMOTE}" if BASE_ALIGNMENT else "",
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
