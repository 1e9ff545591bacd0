# Helpers shared by the rules: config validation, paths, and the narrow params each job receives.

import json
from pathlib import Path

from lossgeom import config as cfg
from lossgeom.data.prompting import answer_template
from lossgeom.methods import MethodSpec

# One line naming the key and what was expected, before any job is scheduled.
try:
    cfg.validate(config, workflow.source_path("../schemas/config.schema.yaml"))
except cfg.ConfigError as err:
    raise WorkflowError(str(err)) from None


RESULTS = "results"
# Figure code is tracked as an input of the figure rules, so editing it reruns the figures (cheap);
# edits to compute code are not tracked: rerun those stages with --forcerun (see the README).
FIGURE_CODE = Path(workflow.basedir) / "src" / "lossgeom" / "figures"
TOY = f"{RESULTS}/toy"
LABELS = cfg.adapter_labels(config)
GEOMETRY_LABELS = cfg.geometry_labels(config)  # LABELS and the data-order replicates (geometry only)
TEMPLATE = config["model"].get("prompt_template", "{question}")
# How a bare gold answer is written after the prompt (answer cross-entropy, probes): as the prompt asks
ANSWER_TEMPLATE = answer_template(TEMPLATE, config["model"].get("answer_template"))
ENV = "../../envs/lossgeom.yaml"
DTYPE = config["model"].get("dtype", "float32")
REMOTE = "--trust-remote-code" if config["model"].get("trust_remote_code", False) else ""


# Default job resources; a profile overrides them per rule (set-resources) without touching rules.
# GPU rules ask for one GPU: on a CPU-only workstation the default profile caps gpu at 0 and they run
# on the CPU; under SLURM they are submitted with --gpus=1.
RES = {"gpu_mem_mb": 16000, "gpu_runtime": 240, "cpu_mem_mb": 4000, "cpu_runtime": 30}


# Cheap aggregates run in the Snakemake process, never as a SLURM submission of their own.
localrules:
    all,
    toy_world,
    geometry,
    geometry_figures,
    eval_stats,
    lmc_summary,
    cka,
    behaviour_figures,
    claims,
    training_figures,


wildcard_constraints:
    method="|".join(config["methods"]),
    seed=r"\d+",


def as_json(obj):
    """Compact, key-sorted JSON: a stable param string, so reruns trigger only on real changes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def model_path(name):
    """A model entry: 'toy' is the workflow's own toy model, anything else a hub id or a directory."""
    value = config["model"].get(name, "toy") if name == "teacher" else config["model"]["base"]
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


def parent_of(index=0, kind="output"):
    """A param giving the directory of a job's input/output file (lint-clean, no hard-coded prefix)."""
    return lambda wildcards, input, output: str(Path((output if kind == "output" else input)[index]).parent)


def toy_input(*sources):
    """The toy world as a named job input when any of the problem sources is "toy"."""
    return {"toy": f"{TOY}/world"} if any(s["source"] == "toy" for s in sources) else {}


def adapter_dir(label):
    cfg.parse_label(label)  # checks the form: method/seed<N>, or method/seed<N>data<M> for a replicate
    return f"{RESULTS}/adapters/{label}"


def all_targets():
    return [
        f"{RESULTS}/geometry/cosine_global.tsv",
        f"{RESULTS}/figures/cosine_global.png",
        f"{RESULTS}/eval/accuracy.tsv",
        f"{RESULTS}/lmc/summary.tsv",
        f"{RESULTS}/cka/cka.tsv",
        f"{RESULTS}/figures/lmc.png",
        f"{RESULTS}/claims.tsv",
        f"{RESULTS}/figures/training_curves.png",
        f"{RESULTS}/rollouts/summary.tsv",
    ]


def model_adapter(wildcards):
    """The adapter directory of a model wildcard ('base' has none)."""
    return {} if wildcards.model == "base" else {"adapter": adapter_dir(wildcards.model)}


def adapter_arg(wildcards, input):
    return input.adapter if "adapter" in input.keys() else "none"


def toy_dir_arg(wildcards, input):
    return f"--toy-dir {input.toy}" if "toy" in input.keys() else ""


def lmc_sweep(a, b):
    (ma, sa), (mb, sb) = cfg.parse_label(a), cfg.parse_label(b)
    return f"{RESULTS}/lmc/{ma}/seed{sa}/{mb}/seed{sb}.tsv"
