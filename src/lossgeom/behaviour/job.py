"""The behaviour stage's jobs from their specs: the evaluation job of one model and the statistics and figures
jobs of one measure, each looping over the measures of :mod:`lossgeom.measures` (what a measure computes is its
module's; the order, the one model load and the all-or-none writing are here); and one connectivity sweep.

An evaluation job reads every measure's inputs before a model loads (a bad path stops it at once), runs the
measures that load a model of their own (activations), frees it, opens the configured engine once and runs
the others on it in the registry's order, then writes every table together (all or none: Snakemake also
removes a failed job's outputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..engines.engine import GenerationSpec
from ..errors import InputError
from ..fsutil import atomic_files
from ..measures import MEASURES, ModelJob, check_model_spec, check_spec, check_spec_keys


def evaluate_model(
    spec: dict,
    base: str,
    adapter: Path | None,
    toy_dir: Path | None,
    outputs: Mapping[str, Path],
    *,
    base_outputs: Mapping[str, Path] | None = None,
    generation: GenerationSpec | None = None,
) -> None:
    """Measure one model (the base, or ``adapter`` on it) with every measure of ``spec``
    (:func:`lossgeom.measures.evaluation_spec`'s form, checked by :func:`~lossgeom.measures.check_spec`),
    writing measure name -> table path ``outputs`` (one per measure of the spec). ``base_outputs``: the base's
    tables of the measures that read them (an adapter's job)."""
    spec = check_spec(spec)
    names = list(spec["measures"])
    if set(outputs) != set(names):
        raise InputError(f"--outputs names {sorted(outputs)}; the spec's measures are {names}: give one table each")
    model = spec["model"]
    # the generation limits every engine measure starts from: the evaluation section's (the accuracy measure's)
    accuracy = MEASURES["accuracy"].Settings.filled(spec["measures"].get("accuracy"))
    job = ModelJob(
        base=base,
        adapter=Path(adapter) if adapter is not None else None,
        toy_dir=toy_dir,
        test_sets=spec["test_sets"],
        max_new_tokens=accuracy["max_new_tokens"],
        batch_size=accuracy["batch_size"],
        settings=spec["measures"],
        base_outputs=dict(base_outputs or {}),
        **_model_kwargs(model),
    )
    measures = [MEASURES[n] for n in MEASURES if n in names]  # the registry's order
    prepared = {m.name: m.prepare(job) for m in measures}  # every input read before a model loads
    tables = {m.name: m.measure(job, None, prepared[m.name]) for m in measures if not m.uses_engine}
    on_engine = [m for m in measures if m.uses_engine]
    if on_engine:
        from ..engines.backends import open_engine

        gen = generation or GenerationSpec()
        with open_engine(
            gen, base, dtype=job.dtype, trust_remote_code=job.trust_remote_code, batch_size=job.batch_size
        ) as engine:
            for m in on_engine:
                tables[m.name] = m.measure(job, engine, prepared[m.name])
    with atomic_files() as stage:  # the model's tables appear together or not at all
        for m in measures:
            m.write(tables[m.name], stage(Path(outputs[m.name])))


def lmc_job(
    spec: dict,
    base: str,
    adapters: tuple[tuple[str, Path], tuple[str, Path]],
    toy_dir: Path | None,
    out: Path,
    *,
    generation: GenerationSpec | None = None,
) -> None:
    """One connectivity sweep (:func:`.connectivity.connectivity_sweep`) from its spec
    (:func:`lossgeom.config.lmc_spec`'s form), checked first: one line naming a wrong key."""
    from ..measures.accuracy import EvaluationSettings
    from ..settings import LmcSettings
    from .connectivity import connectivity_sweep

    check_spec_keys(spec, ("model", "test_set", "lmc", "evaluation"))
    model = check_model_spec(spec["model"])
    lmc = LmcSettings.checked(spec["lmc"], "--spec lmc")
    evaluation = EvaluationSettings.checked(spec["evaluation"], "--spec evaluation")
    connectivity_sweep(
        base,
        adapters,
        spec["test_set"],
        toy_dir,
        out,
        alphas=lmc["alphas"],
        limit=lmc["limit"],
        accuracy_subset=lmc["accuracy_subset"],
        max_new_tokens=evaluation["max_new_tokens"],
        batch_size=evaluation["batch_size"],
        generation=generation,
        **_model_kwargs(model),
    )


def measure_statistics(name: str, settings: dict, inputs: Mapping, out_dir: Path) -> None:
    """The statistics across models of the measure ``name`` from its filled section ``settings``; ``inputs``:
    what :meth:`~lossgeom.measures.Measure.stats_reads` names (a measure -> ``{model: path}``; ``"adapters"``
    -> a path)."""
    measure = _measure(name)
    settings = measure.Settings.checked(settings, measure.section)
    if not isinstance(inputs.get(name), Mapping) or not inputs[name]:
        raise InputError(f"the statistics of {name!r} read every model's {name} table: give them in --inputs")
    measure.statistics(settings, inputs, Path(out_dir))


def measure_figures(name: str, tables: Path, out: Path) -> None:
    """The figures of the measure ``name`` from its statistics' directory ``tables``."""
    measure = _measure(name)
    if measure.figure_module is None:
        raise InputError(f"measure {name!r} draws no figures")
    measure.draw(Path(tables), Path(out))


def _model_kwargs(model: dict) -> dict:
    """A spec's model block as the keyword arguments of the jobs' functions."""
    return {
        "template": model["prompt_template"],
        "answer_format": model["answer_template"],
        "dtype": model["dtype"],
        "trust_remote_code": model["trust_remote_code"],
    }


def _measure(name: str):
    if name not in MEASURES:
        raise InputError(f"unknown measure {name!r}; expected one of {list(MEASURES)}")
    return MEASURES[name]
