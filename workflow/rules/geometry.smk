# Weight-space geometry of every adapter pair, from the LoRA factors (cheap: one aggregate job).

BASE_ALIGNMENT = config.get("geometry", {}).get("base_alignment", False)


rule geometry:
    input:
        [adapter_dir(label) for label in GEOMETRY_LABELS],
        **(model_input("base") if BASE_ALIGNMENT else {}),
    output:
        f"{RESULTS}/geometry/cosine_global.tsv",
        f"{RESULTS}/geometry/long.tsv",
        report(f"{RESULTS}/geometry/noise_floor.tsv", caption="../report/noise_floor.rst", category="Geometry"),
    params:
        adapters=" ".join(f"{label}={adapter_dir(label)}" for label in GEOMETRY_LABELS),
        top_k=config.get("geometry", {}).get("top_k", 10),
        out=parent_of(0),
        base=lambda w, input: f"--base-model {model_arg('base')(w, input)} {REMOTE}" if BASE_ALIGNMENT else "",
    resources:
        mem_mb=RES["cpu_mem_mb"],
        runtime=RES["cpu_runtime"],
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
        f"{RESULTS}/geometry/cosine_global.tsv",
        f"{RESULTS}/geometry/noise_floor.tsv",
        code=FIGURE_CODE / "geometry.py",
    output:
        report(f"{RESULTS}/figures/cosine_methods.png", caption="../report/cosine_methods.rst", category="Geometry"),
        report(f"{RESULTS}/figures/cosine_global.png", caption="../report/cosine_global.rst", category="Geometry"),
        report(f"{RESULTS}/figures/top1_angle_methods.png", caption="../report/top1_angle_methods.rst", category="Geometry"),
        report(f"{RESULTS}/figures/top1_angle_left_median.png", caption="../report/top1_angle.rst", category="Geometry"),
        report(f"{RESULTS}/figures/orthogonal_fraction_global.png", caption="../report/orthogonal_fraction.rst",
               category="Geometry"),
        report(f"{RESULTS}/figures/per_layer_profiles.png", caption="../report/per_layer.rst", category="Geometry"),
    params:
        tables=parent_of(0, "input"),
        out=parent_of(0),
    resources:
        mem_mb=RES["cpu_mem_mb"],
        runtime=RES["cpu_runtime"],
    conda:
        ENV
    log:
        f"{RESULTS}/logs/geometry_figures.log",
    benchmark:
        f"{RESULTS}/benchmarks/geometry_figures.tsv"
    shell:
        "lossgeom geometry-figures --tables {params.tables} --out {params.out} > {log} 2>&1"
