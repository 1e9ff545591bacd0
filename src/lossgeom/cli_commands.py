"""The subcommands of the ``lossgeom`` CLI (:mod:`lossgeom.cli`), one function per subcommand: each
takes the parsed arguments and calls its stage's entry point (imported inside, so a subcommand loads
only its own stage). The parser, the argument types and the error handling are in :mod:`lossgeom.cli`.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

log = logging.getLogger("lossgeom")


def figure_set(cmd):
    """A figures subcommand whose figures appear together or not at all: a failure at the last figure leaves
    every earlier one's old files in place (:func:`lossgeom.figures.common.all_or_none`)."""

    @functools.wraps(cmd)
    def run(a):
        from .figures.common import all_or_none

        with all_or_none():
            cmd(a)

    return run


def _generation(a):
    """The stage's :class:`~lossgeom.engines.engine.GenerationSpec`: ``--generation`` with the backend's
    runtime-only options (``--generation-runtime``, kept out of the rule's params) merged in."""
    from .engines.engine import GenerationSpec

    spec = dict(a.generation or {})
    backend = spec.get("backend", "hf")
    if a.generation_runtime:
        spec[backend] = {**spec.get(backend, {}), **a.generation_runtime}
    return GenerationSpec.from_dict(spec)


def cmd_toy_world(a):
    from .toy.world import build_world

    log.info("toy world: %s", build_world(a.spec, a.out))


def cmd_toy_model(a):
    from .modeling import load_tokenizer
    from .toy.pretrain import pretrain
    from .toy.shipped import model_key, unpack
    from .toy.world import read_split

    key = model_key(a.spec, a.seed, a.template, a.world)
    if a.shipped is not None:  # toy.models_from: the model --out names, checked against this key, copied
        unpack(a.shipped, a.out.name, key, a.out)
        log.info("toy model %s: copied from %s (its key and SHA-256s checked)", a.out, a.shipped)
        return
    tokenizer = load_tokenizer(a.world / "tokenizer")
    info = pretrain(a.spec, tokenizer, read_split(a.world, "train"), a.template, a.out, a.seed, a.threads, key)
    log.info("toy model %s: %s", a.out, info)


def cmd_toy_ship(a):
    from .toy.shipped import ship

    manifest = ship(a.models, a.out)
    log.info("shipped %s to %s", ", ".join(manifest["models"]), a.out)


def cmd_rollouts(a):
    from .data.grading import get_grader
    from .data.problemsets import load_problems, parse_golds
    from .data.rollouts import summarize
    from .engines.backends import open_engine
    from .fsutil import write_table
    from .generation.sampling import rollout_sampling, sample_rollouts
    from .settings import ProblemSourceSettings, RolloutsSettings

    source = ProblemSourceSettings.filled(a.problems)
    problems = load_problems(source, a.toy_dir)
    spec, gen = RolloutsSettings.filled(a.spec), _generation(a)
    # every gold is read before any request is sent or sample drawn; left-out items are logged there
    golds = parse_golds(
        problems, get_grader(spec["grader"]), f"prompts ({source['source']})", source["unparsable_gold"]
    )
    kept = [g is not None for g in golds]
    problems, golds = problems[kept].reset_index(drop=True), [g for g in golds if g is not None]
    kw = dict(
        k=spec["k"],
        temperature=spec["temperature"],
        top_p=spec["top_p"],
        max_new_tokens=spec["max_new_tokens"],
        grader=spec["grader"],
        template=a.template,
        seed=spec["seed"],
        golds=golds,
    )
    if gen.backend == "openai":
        from .engines.api_journal import Journal, fingerprint
        from .engines.openai_api import ApiTeacher

        teacher = ApiTeacher(gen.openai)
        sampling = rollout_sampling(**{k: kw[k] for k in ("k", "temperature", "max_new_tokens", "top_p", "seed")})
        journal = Journal(
            a.journal,
            fingerprint(gen.openai, sampling, a.template, list(zip(problems["id"].astype(str), problems["question"]))),
        )
        df = sample_rollouts(
            teacher, problems, **kw, journal=journal, source=f"{teacher.source} T={spec['temperature']} k={spec['k']}"
        )
    else:
        with open_engine(
            gen, a.model, dtype=a.dtype, trust_remote_code=a.trust_remote_code, batch_size=spec["batch_size"]
        ) as engine:
            suffix = "" if engine.name == "hf" else f" ({engine.name})"
            df = sample_rollouts(
                engine, problems, **kw, source=f"{a.model} T={spec['temperature']} k={spec['k']}{suffix}"
            )
    write_table(df, a.out)
    if gen.backend == "openai":
        journal.remove()  # everything is in the table now
    log.info("rollouts: %s", summarize(df))


def cmd_import_rollouts(a):
    from .data.rollouts import import_rollouts, summarize
    from .fsutil import write_table

    df = import_rollouts(a.file)
    write_table(df, a.out)
    log.info("imported rollouts: %s", summarize(df))


def cmd_rollouts_summary(a):
    from .data.rollouts import read_rollouts, summary_table
    from .fsutil import write_table

    write_table(summary_table(read_rollouts(a.rollouts)), a.out)


def cmd_train(a):
    from .methods import MethodSpec
    from .training.job import train_adapter

    info = train_adapter(
        MethodSpec.from_dict(a.spec),
        a.seed,
        a.rollouts,
        a.base,
        a.out,
        a.checkpoints,
        trust_remote_code=a.trust_remote_code,
        dtype=a.dtype,
    )
    log.info("trained %s/seed%d: %s", info["method"], info["seed"], info["counts"])


def cmd_geometry(a):
    from .fsutil import check_replaceable
    from .geometry import compare_adapter_dirs

    check_replaceable(a.out, keep=(a.cache_dir,))  # --out is replaced whole: refuse before reading weights
    labels = [label for label, _ in a.adapters]
    dirs = [path for _, path in a.adapters]
    base_weights = None
    if a.base_model:
        from .lora.checkpoint import base_weights_of

        base_weights = base_weights_of(a.base_model, dirs[0], trust_remote_code=a.trust_remote_code)
    compare_adapter_dirs(
        dirs, a.out, top_k=a.top_k, labels=labels, cache_dir=a.cache_dir, progress=True, base_weights=base_weights
    )


def cmd_trajectory(a):
    from .geometry.trajectory import write_trajectory

    write_trajectory(dict(a.adapters), a.out, top_k=a.top_k, cache_dir=a.cache_dir, progress=True)


def cmd_base_spectrum(a):
    from .fsutil import check_replaceable
    from .geometry import build_factor_cache, load_adapter
    from .geometry.spectrum import write_base_spectrum
    from .lora.checkpoint import base_weights_of

    check_replaceable(a.out, keep=(a.cache_dir,))  # --out is replaced whole: refuse before reading weights
    # top_k=1: only the factors and the delta's singular values are read (the chance level's spectrum)
    caches = {label: build_factor_cache(load_adapter(d), top_k=1, label=label) for label, d in a.adapters}
    base_weights = base_weights_of(a.base_model, a.adapters[0][1], trust_remote_code=a.trust_remote_code)
    write_base_spectrum(caches, base_weights, a.out, a.top_k, a.threshold, a.seed, cache_dir=a.cache_dir, progress=True)


@figure_set
def cmd_trajectory_figures(a):
    from .figures.trajectory import trajectory_figure

    trajectory_figure(a.tables, dict(a.roles), a.seed, a.out)


@figure_set
def cmd_base_spectrum_figures(a):
    from .figures.spectrum import base_spectrum_figure

    base_spectrum_figure(a.tables, dict(a.roles), a.seed, a.out)


@figure_set
def cmd_geometry_figures(a):
    from .figures.geometry import geometry_figures

    geometry_figures(a.tables, a.out, a.reference)


def cmd_evaluate(a):
    from .behaviour.job import evaluate_model

    evaluate_model(
        a.spec,
        a.base,
        a.adapter,
        a.toy_dir,
        dict(a.outputs),
        base_outputs=dict(a.base_outputs),
        generation=_generation(a),
    )


def cmd_measure_stats(a):
    from .behaviour.job import measure_statistics

    measure_statistics(a.measure, a.spec, a.inputs, a.out)


@figure_set
def cmd_measure_figures(a):
    from .behaviour.job import measure_figures

    measure_figures(a.measure, a.tables, a.out)


def cmd_lmc(a):
    from .behaviour.job import lmc_job

    lmc_job(a.spec, a.base, (a.first, a.second), a.toy_dir, a.out, generation=_generation(a))


def cmd_lmc_summary(a):
    from .behaviour.connectivity import connectivity_summary

    connectivity_summary(a.sweeps, a.out)


@figure_set
def cmd_connectivity_figures(a):
    from .figures.connectivity import connectivity_figures

    connectivity_figures(a.summary, a.curves, a.out)


@figure_set
def cmd_training_figures(a):
    from .figures.training import training_figures

    training_figures(dict(a.adapters), a.out, a.analysis_step)


def cmd_claims(a):
    from .claims.check import write_claims

    df = write_claims(
        a.geometry, a.eval_dir, a.lmc, a.cka, dict(a.roles), a.seed, a.out, a.base_spectrum, a.behaviour, a.html
    )
    log.info("claims: %s", df["verdict"].value_counts().to_dict())


def cmd_versions(a):
    from .versions import write_versions_table

    df = write_versions_table(dict(a.records), a.out, a.html)
    log.info("versions: %d jobs", len(df))


def cmd_cost(a):
    from .config import load, with_defaults
    from .stage_costs import gpu_hours_markdown

    # the workflow's schema, beside the package in the checkout the package is installed from (pip install -e)
    schema = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
    if not schema.is_file():
        raise FileNotFoundError(f"{schema}: lossgeom cost reads the workflow's schema; run it from a checkout")
    print(gpu_hours_markdown(with_defaults(load(a.configfile, schema))), end="")


def cmd_compare_runs(a):
    from .run_diff import compare_runs

    print(compare_runs(*a.runs, a.out, tuple(a.names)), end="")


def cmd_worlds(a):
    from .worlds import write_world_configs

    print(" ".join(write_world_configs(a.file, a.out)))


def cmd_worlds_claims(a):
    from .worlds import write_aggregate

    df = write_aggregate(dict(a.claims), a.out)
    log.info("claims over %d worlds: %s", len(a.claims), df["verdict"].value_counts().to_dict())
