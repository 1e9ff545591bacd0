"""The ``lossgeom`` command line's parser (:func:`build_parser`): every subcommand's arguments, their types and
defaults (the settings classes', their one place). :mod:`lossgeom.cli` runs what it parses."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import cli_commands as commands
from .measures import MEASURES, describe_settings
from .measures.accuracy import EvaluationSettings
from .settings import (
    DTYPES,
    BaseSpectrumSettings,
    GeometrySettings,
    LmcSettings,
    ModelSettings,
    RolloutsSettings,
    ToyModelSettings,
    ToySettings,
    TrainingSettings,
)

# flag defaults are the settings classes' (one place per default): the rules pass every value anyway
GEOMETRY = GeometrySettings()
BASE_SPECTRUM = BaseSpectrumSettings()
MODEL, TRAINING = ModelSettings.defaults(), TrainingSettings.defaults()

# Subcommands that run a model: they get a device of their own (lossgeom.devices.claim_gpu).
GPU_COMMANDS = {"toy-model", "rollouts", "train", "evaluate", "lmc"}
MODEL_COMMANDS = GPU_COMMANDS | {"base-spectrum"}  # and one holding its weights: each logs and records its stack


def _json(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg}): {text[:80]!r}") from None


def _labelled(text: str) -> tuple[str, Path]:
    """``label=path``, or a bare path labelled ``{method}/seed{seed}`` when it ends in
    ``.../{method}/seed{seed}`` (the results layout), else by its own name."""
    if "=" in text:
        label, path = text.split("=", 1)
        return label, Path(path)
    from .geometry import label_for_dir

    return label_for_dir(text), Path(text)


# ---- subcommands --------------------------------------------------------------------------------


def _adapter(text: str) -> Path | None:
    """An adapter directory, or 'none' for the base model itself."""
    return None if text == "none" else Path(text)


def _role(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected role=method (e.g. grpo=grpo), got {text!r}")
    role, method = text.split("=", 1)
    return role, method


# ---- parser -------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lossgeom", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    add = _adder(sub)
    _toy_commands(add)
    _rollouts_training_commands(add)
    _geometry_commands(add)
    _behaviour_commands(add)
    _report_commands(add)
    _tool_commands(add)
    for name in MODEL_COMMANDS:  # each model job records its stack (in a declared output of its rule)
        sub.choices[name].add_argument("--versions-out", type=Path, help="JSON record of the versions it ran with")
    return p


def _adder(sub):
    """``add(name, func, help)``: a subparser of ``sub`` that runs ``func``."""

    def add(name, func, help):
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    return add


def _spec_help(sp, *sections: str) -> None:
    """A spec-taking subcommand's --help ends with the fields of its settings and their docs."""
    sp.formatter_class = argparse.RawDescriptionHelpFormatter
    sp.epilog = "--spec's settings (defaults filled where left out):\n" + "\n".join(sections)


def _model_job_opts(sp, spec_form: str) -> None:
    """What every spec-taking model job has: --spec (its settings, of the form ``spec_form``), the base, the toy
    world, torch's threads and the generation backend."""
    sp.add_argument("--spec", type=_json, required=True, help="the job's settings as JSON: " + spec_form)
    sp.add_argument("--base", required=True, help="base model: hub id or local directory")
    sp.add_argument("--toy-dir", type=Path, default=None, help="the toy world (where a problem source is the toy's)")
    sp.add_argument("--threads", type=int, default=TRAINING["threads"], help="CPU threads for torch")
    _generation_opts(sp)


def _model_opts(sp):
    sp.add_argument("--dtype", default=MODEL["dtype"], choices=DTYPES)
    sp.add_argument("--trust-remote-code", action="store_true")
    sp.add_argument("--threads", type=int, default=TRAINING["threads"], help="CPU threads for torch")


def _generation_opts(sp):
    sp.add_argument(
        "--generation",
        type=_json,
        default=None,
        help='the stage\'s generation spec as JSON, e.g. {"backend": "vllm"} (default: hf)',
    )
    sp.add_argument(
        "--generation-runtime",
        type=_json,
        default=None,
        help="the backend's runtime-only options as JSON (requests in flight, retries, timeouts, prices), merged "
        "into --generation's",
    )


def _toy_commands(add) -> None:
    """Subcommands: the toy world, its models (trained or shipped), shipping them."""
    sp = add("toy-world", commands.cmd_toy_world, "generate the toy problems and tokenizer")
    _spec_help(sp, ToySettings.describe("toy (config section 'toy'; models: toy.models.<name>, see toy-model)"))
    sp.add_argument("--spec", type=_json, required=True, help="the config's toy section, as JSON")
    sp.add_argument("--out", type=Path, required=True)

    sp = add(
        "toy-model", commands.cmd_toy_model, "train a toy base or teacher model from scratch (or copy a shipped one)"
    )
    _spec_help(sp, ToyModelSettings.describe("toy.models.<name> (config section 'toy.models')"))
    sp.add_argument("--spec", type=_json, required=True, help="toy.models.<name> as JSON")
    sp.add_argument("--world", type=Path, required=True, help="directory written by toy-world")
    sp.add_argument("--template", default=MODEL["prompt_template"])
    sp.add_argument("--seed", type=int, required=True, help="the model's init and data seed")
    sp.add_argument("--threads", type=int, default=TRAINING["threads"])
    sp.add_argument(
        "--out", type=Path, required=True, help="the model's directory; its name (base, teacher) is the model's"
    )
    sp.add_argument(
        "--shipped", type=Path, default=None, help="toy.models_from: copy the model from this shipped directory instead"
    )

    sp = add(
        "toy-ship", commands.cmd_toy_ship, "write a shipped toy-models directory (toy.models_from) from trained ones"
    )
    sp.add_argument("--models", type=Path, required=True, help="a study's toy/models (base/ and teacher/, trained)")
    sp.add_argument("--out", type=Path, required=True, help="the shipped directory (replaced whole)")


def _rollouts_training_commands(add) -> None:
    """Subcommands: rollouts (sampled, imported, summarised) and training."""
    sp = add("rollouts", commands.cmd_rollouts, "sample and grade K completions per prompt")
    _spec_help(
        sp, RolloutsSettings.describe("rollouts (config section 'rollouts'; import and sampler are the workflow's)")
    )
    sp.add_argument("--model", required=True, help="sampler: hub id or local directory (tokenizer included)")
    sp.add_argument("--problems", type=_json, required=True, help="a problem_source config entry, as JSON")
    sp.add_argument("--toy-dir", type=Path, default=None)
    sp.add_argument("--spec", type=_json, required=True, help="the config's rollouts section, as JSON")
    sp.add_argument("--template", default=MODEL["prompt_template"])
    sp.add_argument("--out", type=Path, required=True, help="rollouts .parquet")
    _generation_opts(sp)
    sp.add_argument(
        "--journal",
        type=Path,
        default=None,
        help="openai backend: JSONL of completed requests, kept across restarts (outside --out)",
    )
    _model_opts(sp)

    sp = add("import-rollouts", commands.cmd_import_rollouts, "check and import a JSONL/parquet rollout file")
    sp.add_argument("--file", type=Path, required=True)
    sp.add_argument("--out", type=Path, required=True)

    sp = add(
        "rollouts-summary",
        commands.cmd_rollouts_summary,
        "the rollout table in numbers (rows, truncated, grade notes, served models)",
    )
    sp.add_argument("--rollouts", type=Path, required=True)
    sp.add_argument("--out", type=Path, required=True, help="summary .tsv (quantity, value)")

    sp = add("train", commands.cmd_train, "train one LoRA adapter (one method, one seed)")
    sp.add_argument("--spec", type=_json, required=True, help="the method's resolved spec, as JSON")
    sp.add_argument("--seed", type=int, required=True)
    sp.add_argument("--rollouts", type=Path, required=True)
    sp.add_argument("--base", required=True, help="base model: hub id or local directory")
    sp.add_argument("--out", type=Path, required=True, help="adapter directory")
    sp.add_argument("--checkpoints", type=Path, required=True, help="resumable checkpoints (kept outside --out)")
    _model_opts(sp)


def _geometry_commands(add) -> None:
    """Subcommands: weight-space geometry and its figures."""
    sp = add("geometry", commands.cmd_geometry, "compare two or more PEFT LoRA adapters (tables)")
    sp.add_argument("adapters", nargs="+", type=_labelled, help="label=adapter_dir (or adapter_dir)")
    sp.add_argument("--out", type=Path, required=True, help="output directory for the tables")
    sp.add_argument("--top-k", type=int, default=GEOMETRY.top_k, help="singular subspace size for principal angles")
    sp.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="reuse per-adapter factor caches (thin SVDs) from here, keyed by the adapter's content",
    )
    sp.add_argument(
        "--base-model",
        default=None,
        help="also measure how much of each delta lies in the base weights' top singular subspaces",
    )
    sp.add_argument("--trust-remote-code", action="store_true")

    sp = add("trajectory", commands.cmd_trajectory, "geometry along training: every saved step of every adapter")
    sp.add_argument(
        "adapters", nargs="+", type=_labelled, help="label=adapter_dir (its train_info.json lists the steps)"
    )
    sp.add_argument("--out", type=Path, required=True, help="output directory for the tables")
    sp.add_argument("--top-k", type=int, default=GEOMETRY.top_k, help="singular subspace size for principal angles")
    sp.add_argument("--cache-dir", type=Path, default=None, help="reuse per-(adapter, step) factor caches from here")

    sp = add(
        "base-spectrum",
        commands.cmd_base_spectrum,
        "each delta against the base weights' spectrum: intruder dimensions, rotation, top singular values",
    )
    sp.add_argument("adapters", nargs="+", type=_labelled, help="label=adapter_dir")
    sp.add_argument("--base-model", required=True, help="the adapters' base model: hub id or local directory")
    sp.add_argument("--out", type=Path, required=True, help="output directory for the tables")
    sp.add_argument("--top-k", type=int, default=BASE_SPECTRUM.top_k, help="top singular vectors of W + dW examined")
    sp.add_argument("--threshold", type=float, default=BASE_SPECTRUM.threshold, help="intruder |cosine| threshold")
    sp.add_argument("--seed", type=int, default=BASE_SPECTRUM.seed, help="seed of the chance level's random deltas")
    sp.add_argument("--cache-dir", type=Path, default=None, help="cache of the base weights' SVDs (by content)")
    sp.add_argument("--trust-remote-code", action="store_true")

    for name, fn, what in (
        ("trajectory-figures", commands.cmd_trajectory_figures, "cosines along training with their floors"),
        ("base-spectrum-figures", commands.cmd_base_spectrum_figures, "base-spectrum statistics per method"),
    ):
        sp = add(name, fn, what)
        sp.add_argument("--tables", type=Path, required=True, help=f"directory written by '{name[: -len('-figures')]}'")
        sp.add_argument("--roles", nargs="+", type=_role, required=True, help="the paper's methods as role=method")
        sp.add_argument("--seed", type=int, required=True, help="the seed whose adapters share a LoRA init")
        sp.add_argument("--out", type=Path, required=True, help="figure .png (a .pdf is written beside it)")

    sp = add(
        "geometry-figures", commands.cmd_geometry_figures, "heatmaps and per-layer profiles of the geometry tables"
    )
    sp.add_argument("--tables", type=Path, required=True, help="directory written by 'geometry'")
    sp.add_argument("--out", type=Path, required=True, help="figure directory")
    sp.add_argument(
        "--reference", default=None, help="label the per-layer profiles compare against (default: the first)"
    )


def _evaluate_command(add) -> None:
    """The evaluate subcommand: one model measured by the spec's measures (:mod:`lossgeom.measures`)."""
    sp = add(
        "evaluate",
        commands.cmd_evaluate,
        "measure one model (the base or an adapter) with the spec's measures: " + ", ".join(MEASURES),
    )
    _spec_help(sp, describe_settings())
    _model_job_opts(
        sp,
        "{model: {prompt_template, answer_template, dtype, trust_remote_code}, test_sets: {name: problem source}, "
        "measures: {name: settings}} (the workflow writes it from the config: lossgeom.measures.evaluation_spec)",
    )
    sp.add_argument("--adapter", type=_adapter, default=None, help="adapter directory, or 'none' for the base")
    sp.add_argument("--outputs", nargs="+", type=_labelled, required=True, help="measure=path: each measure's table")
    sp.add_argument(
        "--base-outputs", nargs="*", type=_labelled, default=[], help="measure=path: the base's tables an adapter reads"
    )


def _measure_commands(add) -> None:
    """Subcommands: a measure's statistics across models and its figures."""
    sp = add("measure-stats", commands.cmd_measure_stats, "a measure's statistics across every model's table")
    sp.add_argument("measure", choices=list(MEASURES))
    sp.add_argument("--spec", type=_json, default=None, help="the measure's config section as JSON (defaults filled)")
    sp.add_argument(
        "--inputs",
        type=_json,
        required=True,
        help='what it reads, as JSON: {measure: {model: path}} (a model named "base"), and "adapters": the '
        "geometry's adapters.tsv where it reads the deltas' norms",
    )
    sp.add_argument("--out", type=Path, required=True, help="output directory")

    sp = add("measure-figures", commands.cmd_measure_figures, "a measure's figures from its statistics")
    sp.add_argument("measure", choices=[n for n, m in MEASURES.items() if m.figure_module])
    sp.add_argument("--tables", type=Path, required=True, help="the directory written by its measure-stats")
    sp.add_argument("--out", type=Path, required=True, help="figure directory")


def _behaviour_commands(add) -> None:
    """Subcommands: evaluation, a measure's statistics and figures, connectivity sweeps."""
    _evaluate_command(add)
    _measure_commands(add)

    sp = add("lmc", commands.cmd_lmc, "linear-mode-connectivity sweep between two adapters")
    _spec_help(
        sp,
        LmcSettings.describe("lmc (config section 'lmc'; pairs and test_set are the workflow's)"),
        EvaluationSettings.describe("evaluation (max_new_tokens and batch_size are read)"),
    )
    _model_job_opts(
        sp,
        "{model: {prompt_template, answer_template, dtype, trust_remote_code}, test_set: a problem source, lmc: "
        "{alphas, limit, accuracy_subset}, evaluation: {max_new_tokens, batch_size}} (the workflow writes it from "
        "the config: lossgeom.config.lmc_spec)",
    )
    sp.add_argument("--first", type=_labelled, required=True, help="label=adapter_dir (alpha = 0)")
    sp.add_argument("--second", type=_labelled, required=True, help="label=adapter_dir (alpha = 1)")
    sp.add_argument("--out", type=Path, required=True, help="the sweep's .tsv")

    sp = add("lmc-summary", commands.cmd_lmc_summary, "barriers of all sweeps, and the curves in one table")
    sp.add_argument("sweeps", nargs="+", type=Path)
    sp.add_argument("--out", type=Path, required=True, help="summary .tsv (curves.tsv is written beside it)")


def _report_commands(add) -> None:
    """Subcommands: the training and connectivity figures, and the claims table."""
    sp = add("training-figures", commands.cmd_training_figures, "training curves of every adapter from its metrics.tsv")
    sp.add_argument("adapters", nargs="+", type=_labelled, help="label=adapter_dir")
    sp.add_argument("--analysis-step", type=int, default=None)
    sp.add_argument("--out", type=Path, required=True, help="figure .png (a .pdf is written beside it)")

    sp = add("claims", commands.cmd_claims, "the paper's claims checked against this run (claims.tsv)")
    sp.add_argument("--geometry", type=Path, required=True, help="directory written by 'geometry'")
    sp.add_argument("--eval-dir", type=Path, default=None, help="directory written by 'measure-stats accuracy'")
    sp.add_argument("--lmc", type=Path, default=None, help="summary.tsv written by 'lmc-summary'")
    sp.add_argument("--cka", type=Path, default=None, help="cka.tsv written by 'measure-stats activations'")
    sp.add_argument("--base-spectrum", type=Path, default=None, help="directory written by 'base-spectrum'")
    sp.add_argument("--behaviour", type=Path, default=None, help="directory written by 'measure-stats samples'")
    sp.add_argument(
        "--roles",
        nargs="+",
        type=_role,
        required=True,
        help="the paper's methods as role=method: sft= rft= dft= rift= grpo= dpo=",
    )
    sp.add_argument("--seed", type=int, required=True, help="the seed whose adapters share a LoRA init")
    sp.add_argument("--out", type=Path, required=True, help="claims .tsv")
    sp.add_argument("--html", type=Path, default=None, help="the table as an HTML page too (the report's first)")

    sp = add(
        "connectivity-figures",
        commands.cmd_connectivity_figures,
        "LMC curves of every pair, and per pair with its barrier",
    )
    sp.add_argument("--summary", type=Path, required=True, help="summary.tsv written by 'lmc-summary'")
    sp.add_argument("--curves", type=Path, required=True, help="curves.tsv written by 'lmc-summary'")
    sp.add_argument("--out", type=Path, required=True, help="figure directory")


def _tool_commands(add) -> None:
    """Subcommands around the study: its GPU-hours, two runs compared, the versions table."""
    sp = add("cost", commands.cmd_cost, "every stage's GPU-hours and each job's time limit, from the FLOP model")
    sp.add_argument("--configfile", type=Path, default=Path("config/config.yaml"), help="the study's config")

    sp = add("compare-runs", commands.cmd_compare_runs, "what moved between two runs: verdicts, numbers, weights")
    sp.add_argument("runs", nargs=2, type=Path, help="two results directories (scripts/compare-kernels.sh)")
    sp.add_argument("--names", nargs=2, default=("a", "b"), help="what each run was (the summary's headings)")
    sp.add_argument("--out", type=Path, required=True, help="directory: summary.md, verdicts/tables/weights .tsv")

    sp = add("worlds", commands.cmd_worlds, "write one study config per toy world of a worlds file; print the names")
    sp.add_argument("--file", type=Path, required=True, help="a worlds file (config/worlds/four.yaml)")
    sp.add_argument("--out", type=Path, required=True, help="directory: <world>/config.yaml for each world")

    sp = add("worlds-claims", commands.cmd_worlds_claims, "one claims table over the worlds' claims tables")
    sp.add_argument("claims", nargs="+", type=_labelled, help="world=claims.tsv, two or more")
    sp.add_argument("--out", type=Path, required=True, help="claims .tsv over the worlds")

    sp = add("versions", commands.cmd_versions, "the library versions of every model job in one table")
    sp.add_argument("records", nargs="+", type=_labelled, help="rule/job=record (a model job's --versions-out)")
    sp.add_argument("--out", type=Path, required=True, help="versions .tsv")
    sp.add_argument("--html", type=Path, default=None, help="the table as an HTML page too (the report's)")
