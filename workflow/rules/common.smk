# Helpers shared by the rules: config validation, paths, and the narrow params each job receives.

import json
import os
import shlex
from pathlib import Path

from lossgeom import config as cfg
from lossgeom import measures
from lossgeom.labels import Label, wildcard_pattern
from lossgeom.methods import MethodSpec
from lossgeom.resources import (
    CONDA_ENV,
    api_rollouts,
    attempt_memory,
    memory_kills,
    slurm_job_logs,
    conda_env,
    rule_resources,
    rule_threads,
)

# One line naming the key and what was expected, before any job is scheduled; then every default
# filled in from lossgeom.settings (their one place), so no rule keeps a default of its own.
try:
    cfg.validate(config, workflow.source_path("../schemas/config.schema.yaml"))
except cfg.ConfigError as err:
    raise WorkflowError(str(err)) from None
config.update(cfg.with_defaults(config))


RESULTS = "results"
# Figure code is tracked as an input of the figure rules, so editing it reruns the figures (cheap);
# edits to compute code are not tracked: rerun those stages with --forcerun (docs/CLUSTER.md, "Reruns"). Relative
# to the working directory, like every input path Snakemake records, so a study copied or moved with
# its workflow (the repository root) does not rerun its figures.
FIGURE_CODE = Path(os.path.relpath(Path(workflow.basedir) / "src" / "lossgeom" / "figures"))
TOY = f"{RESULTS}/toy"
LABELS = cfg.adapter_labels(config)
GEOMETRY_LABELS = cfg.geometry_labels(config)  # LABELS and the data-order replicates (geometry only)
CLAIM_ROLES = cfg.claim_roles(config)  # the paper's methods (sft, rft, ...) -> this study's method names
TEMPLATE = config["model"]["prompt_template"]
ENV = f"../../{CONDA_ENV}"  # relative to this file; the jobs that run vLLM get their own (job_env)
DTYPE = config["model"]["dtype"]
REMOTE = "--trust-remote-code" if config["model"]["trust_remote_code"] else ""


def _job_method(rule, wildcards):
    """A training job's method (its label wildcard); None for the other rules."""
    return Label.parse(wildcards.label).method if rule == "train" else None


def job_resources(rule):
    """A rule's resources, sized from the config in one place (lossgeom.resources): host memory growing
    with the attempt (a job killed for memory is retried with more), wall time, GPUs. A profile overrides
    any of them per rule (set-resources). On a CPU-only workstation profiles/default caps the GPUs at 0,
    so GPU rules run on the CPU; under SLURM gpu=1 is submitted as --gpus=1."""
    growth, cap = config["resources"]["memory_growth"], config["resources"]["max_mem_mb"]

    def mem_mb(wildcards, attempt):
        first = rule_resources(config, rule, _job_method(rule, wildcards))["mem_mb"]
        if attempt <= 1:
            return first
        # only the tries SLURM killed for memory grow it (their logs say so: profiles/slurm's slurm-logdir)
        kills = memory_kills(slurm_job_logs(Path("logs/slurm"), rule, dict(wildcards.items())))
        return attempt_memory(first, attempt, growth, kills, cap)

    def runtime(wildcards):
        return rule_resources(config, rule, _job_method(rule, wildcards))["runtime"]

    return {"mem_mb": mem_mb, "runtime": runtime, "gpu": 1 if rule == "train" else rule_resources(config, rule)["gpu"]}


def job_env(rule):
    """A rule's conda environment (--sdm conda): envs/lossgeom-vllm.yaml for a job that runs vLLM
    (lossgeom.resources.uses_vllm: its stage's backend is vllm), else envs/lossgeom.yaml."""
    return lambda wildcards: f"../../{conda_env(config, rule, _job_method(rule, wildcards))}"


def job_threads(rule):
    """A rule's CPUs (lossgeom.resources.rule_threads: training.threads, more for a job running vLLM)."""
    return lambda wildcards: rule_threads(config, rule, _job_method(rule, wildcards))


# An adapter label as a wildcard: the study's methods only, seeds canonical (lossgeom.labels)
STUDY_LABEL = wildcard_pattern(config["methods"], replicates=False)


wildcard_constraints:
    label=wildcard_pattern(config["methods"]),


def versions_record(rule, job=""):
    """Where a job of a model-running rule records the library versions it ran with (``lossgeom ...
    --versions-out``): a declared output of the rule, gathered by the versions rule (results/versions.tsv).
    ``job``: the rule's wildcards, e.g. "{label}" (none for a rule of one job)."""
    return f"{RESULTS}/versions/{rule}/{job}.json" if job else f"{RESULTS}/versions/{rule}.json"


def toy_models():
    """The toy models the study trains (toy_model jobs): the models that training and the rollouts read."""
    readers = [rules.train, ROLLOUTS_RULE]
    return sorted({Path(r.input.model).name for r in readers if "model" in r.input.keys()})


def toy_shipped_dir():
    """toy.models_from as a path (a relative one is the workflow's own: beside the Snakefile, whatever the
    working directory), or None where the study trains its toy models."""
    value = config["toy"]["models_from"]
    return None if value == "train" else Path(workflow.basedir, value)


def toy_shipped(wildcards):
    """The shipped model's files as the toy_model job's inputs, so that a re-shipped model reruns the study."""
    shipped = toy_shipped_dir()
    return [] if shipped is None else [str(shipped / "manifest.json"), *sorted(map(str, (shipped / wildcards.name).rglob("*.*")))]


def toy_shipped_arg(wildcards):
    shipped = toy_shipped_dir()
    return "" if shipped is None else f"--shipped {shlex.quote(str(shipped))}"


def version_records():
    """``{"<rule>/<job>": versions record}`` of every model-running job, named through its rule's output (the
    rules are read when it is called: from an input function, once every rule file is included)."""
    records = {f"toy_model/{name}": rules.toy_model.output.versions.format(name=name) for name in toy_models()}
    if not config["rollouts"]["import"]:
        records["rollouts"] = rules.rollouts.output.versions
    records |= {f"train/{label}": rules.train.output.versions.format(label=label) for label in GEOMETRY_LABELS}
    records |= {f"evaluate/{model}": rules.evaluate.output.versions.format(model=model) for model in MODELS}
    records |= {
        f"lmc/{a}/{b}": rules.lmc.output.versions.format(first=Label.parse(a), second=Label.parse(b))
        for a, b in cfg.lmc_pairs(config)
    }
    records["base_spectrum"] = rules.base_spectrum.output.versions
    return records


def as_json(obj):
    """Compact, key-sorted JSON: a stable param string, so reruns trigger only on real changes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def model_path(name):
    """A model entry: 'toy' is the workflow's own toy model, anything else a hub id or a directory."""
    value = config["model"][name]
    if value == "base":
        return model_path("base")
    return f"{TOY}/models/{name}" if value == "toy" else value


def model_input(name):
    """The toy model directory as a named job input (hub ids and external directories are not tracked)."""
    path = model_path(name)
    return {"model": path} if path.startswith(f"{TOY}/") else {}


def model_arg(name):
    """The --model/--base argument: the tracked input when there is one, else the hub id or directory."""
    return lambda wildcards, input: input.model if "model" in input.keys() else model_path(name)


def parent_of(key=0, kind="output"):
    """A param giving the directory of a job's input/output file, by position or name (lint-clean, no
    hard-coded prefix)."""

    def parent(wildcards, input, output):
        files = output if kind == "output" else input
        return str(Path(files[key] if isinstance(key, int) else getattr(files, key)).parent)

    return parent


def toy_input(*sources):
    """The toy world as a named job input when any of the problem sources is "toy"."""
    return {"toy": f"{TOY}/world"} if any(s["source"] == "toy" for s in sources) else {}


def adapter_dir(label):
    """The adapter directory of a label (the train rule's output; Label.parse checks the form)."""
    return rules.train.output.adapter.format(label=Label.parse(label))


def train_spec(label):
    """The train job's --spec: the method's resolved spec, with the label's data seed for a replicate."""
    label = Label.parse(label)
    spec = MethodSpec.from_config(config, label.method)
    return (spec if label.data_seed is None else spec.with_data_seed(label.data_seed)).to_json()


def figure_code(module):
    """A figure rule's code inputs: the figure module it runs and figures/common.py, which every figure
    module imports (tests/test_workflow_layout.py checks that a module imports no other figure module)."""
    return [str(FIGURE_CODE / f"{name}.py") for name in (module, "common")]


def figure_outputs(*names, caption, category):
    """Named outputs of a figure rule: each figure's PNG (``name``, shown in the report under
    ``category``) and the PDF written beside it (``name_pdf``)."""
    out = {}
    for name in names:
        out[name] = report(f"{RESULTS}/figures/{name}.png", caption=caption, category=category)
        out[f"{name}_pdf"] = f"{RESULTS}/figures/{name}.pdf"
    return out


# The default target's files (the all rule's inputs); each rule file adds its own rules' with add_targets,
# so a new rule file registers its outputs where it declares them.
TARGETS = []


def add_targets(*rules_):
    """Make the rules' outputs part of the default target (``snakemake`` with no target builds them)."""
    for rule_ in rules_:
        TARGETS.extend(rule_.output)


def labelled(labels, paths):
    """The CLI's labelled path list: ``label=path`` words, one per (label, path) pair, space-separated."""
    return " ".join(f"{label}={path}" for label, path in zip(labels, paths, strict=True))


def verbatim(value):
    """A param whose value Snakemake must pass as it is. A plain string param is formatted with the job's
    wildcards, so braces in it (a prompt template's {question}, JSON) would be read as wildcards and fail;
    a function's return value is not formatted."""
    return lambda wildcards: value


def named(files):
    """A rule's input or output files by name, as a dict (to pass a rule's outputs on as named inputs)."""
    return dict(files.items())


def model_adapter(wildcards):
    """The adapter directory of a model wildcard ('base' has none)."""
    return {} if wildcards.model == "base" else {"adapter": adapter_dir(wildcards.model)}


def adapter_arg(wildcards, input):
    return input.adapter if "adapter" in input.keys() else "none"


def toy_dir_arg(wildcards, input):
    return f"--toy-dir {input.toy}" if "toy" in input.keys() else ""


def lmc_sweep(a, b):
    """The sweep table of the adapter pair (a, b), alpha = 0 at a and 1 at b (an output of the lmc rule)."""
    return rules.lmc.output.sweep.format(first=Label.parse(a), second=Label.parse(b))


# The measures of the evaluation jobs (lossgeom.measures; MEASURES and MODELS: behaviour.smk): what their
# rules are made of.


def measure_inputs():
    """What the study's measures read besides the model: the toy world where a problem source is the toy's,
    and their local files (a change reruns the evaluations)."""
    sources = [s for m in MEASURES for s in m.sources(config[m.section], config["test_sets"])]
    files = {f"{m.name}_input{i}": f for m in MEASURES for i, f in enumerate(m.input_files(config[m.section]))}
    return toy_input(*sources) | files


def measure_output(measure, model="{model}"):
    """A measure's table of one model (the evaluate rule's output named by the measure)."""
    return f"{RESULTS}/{measure.output}".format(model=model)


def base_outputs_input(wildcards):
    """An adapter's evaluation reads the base's tables of the measures that need them (samples: the KL)."""
    if wildcards.model == "base":
        return {}
    return {f"base_{m.name}": measure_output(m, "base") for m in MEASURES if m.needs_base}


def measure_outputs_arg(wildcards, output):
    """The evaluate job's --outputs: measure=path for each of its tables."""
    return labelled((m.name for m in MEASURES), (output[m.name] for m in MEASURES))


def base_outputs_arg(wildcards, input):
    """The evaluate job's --base-outputs: measure=path for the base's tables an adapter reads (none for the base)."""
    given = [m.name for m in MEASURES if f"base_{m.name}" in input.keys()]
    return labelled(given, (input[f"base_{name}"] for name in given))


def _stats_reads(measure):
    """What a measure's statistics read: measure name -> {model: path}, and "adapters" -> the deltas' norms."""
    reads = {}
    for name in measure.stats_reads(config):
        if name == "adapters":
            reads[name] = rules.geometry.output.adapters
        else:
            reads[name] = {model: measure_output(measures.MEASURES[name], model) for model in MODELS}
    return reads


def measure_stats_inputs(measure):
    """The stats rule's inputs: every file its statistics read, named ``<measure>_<i>`` (the i-th model) or
    ``adapters``."""
    out = {}
    for name, value in _stats_reads(measure).items():
        if isinstance(value, dict):
            out |= {f"{name}_{i}": path for i, path in enumerate(value.values())}
        else:
            out[name] = value
    return out


def measure_stats_args(measure):
    """The stats job's --inputs (JSON): measure -> {model: path}, "adapters" -> path. Models in the study's order
    (base first, then the config's), not sorted: the order of the models is the order of the tables' rows."""
    return verbatim(json.dumps(_stats_reads(measure), separators=(",", ":")))


def measure_stats_outputs(measure):
    """The stats rule's outputs: each of the measure's statistics files in results/<stats_dir>/, in the report
    under its caption and category where it has one."""
    out = {}
    for key, (name, caption, category) in measure.stats_outputs(config).items():
        path = f"{RESULTS}/{measure.stats_dir}/{name}"
        out[key] = report(path, caption=f"../report/{caption}", category=category) if caption else path
    return out
