"""What a measure is: :class:`Measure` (one per module of :mod:`lossgeom.measures`), :class:`ModelJob`, what
the evaluation job hands it, and the model block every model job's spec carries (:func:`model_spec`,
:func:`check_model_spec`).

A measure answers one question of every model of the study (the base and each adapter) in that model's
evaluation job, then once across all models in its statistics job, and may draw its figures from those
statistics. Its module declares everything the workflow, the CLI and the config schema need:

* its settings: :attr:`Measure.section` (the config key) and :attr:`Measure.Settings` (a
  :class:`~lossgeom.settings.Settings` class; a field declared with ``stats=True`` is read only by the
  statistics, so changing it reruns them and not the evaluations);
* per model: :attr:`Measure.output` (its table's path under ``results/``, with ``{model}``), :meth:`Measure.prepare`
  (read its inputs before any model loads, so a bad input stops the job at once) and :meth:`Measure.measure`
  (the table, from the engine the job holds; with :attr:`Measure.uses_engine` False, from a model of its own
  loaded before the engine) and :meth:`Measure.write`;
* across models (optional): :attr:`Measure.stats_rule`, :meth:`Measure.stats_outputs`, :meth:`Measure.statistics`;
* its figures (optional): :attr:`Measure.figure_rule`, :attr:`Measure.figure_module` (in :mod:`lossgeom.figures`,
  the code the rule tracks), :meth:`Measure.figure_outputs`, :meth:`Measure.draw`.

This module imports nothing heavy: the config reads the registry when it validates a study. A measure imports
the code that computes it (the behaviour stage's modules, a figure module) inside the methods that run it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from ..errors import InputError
from ..settings import ModelSettings, Settings

MODEL_SPEC_KEYS = ("prompt_template", "answer_template", "dtype", "trust_remote_code")


def model_spec(config: dict) -> dict:
    """What a model-running job's spec says of the model (its ``model`` block): the prompt template, the
    answer template resolved (how a bare gold answer is written after it), the dtype, trust_remote_code."""
    from ..data.prompting import answer_template

    model = config["model"]
    return {
        "prompt_template": model["prompt_template"],
        "answer_template": answer_template(model["prompt_template"], model["answer_template"]),
        "dtype": model["dtype"],
        "trust_remote_code": model["trust_remote_code"],
    }


def check_model_spec(given, where: str = "--spec model") -> dict:
    """A spec's ``model`` block (:func:`model_spec`'s keys, each as the model section's schema has it)
    checked: one :class:`~lossgeom.errors.InputError` naming the key otherwise."""
    import jsonschema

    props = ModelSettings.schema()
    schema = {
        "type": "object",
        "properties": {k: props[k] for k in MODEL_SPEC_KEYS},
        "required": list(MODEL_SPEC_KEYS),
        "additionalProperties": False,
    }
    try:
        jsonschema.validate(given, schema)
    except jsonschema.ValidationError as e:
        raise InputError(f"{where}{''.join('.' + str(p) for p in e.absolute_path)}: {e.message}") from None
    return dict(given)


def check_spec_keys(spec: Any, keys: tuple[str, ...]) -> None:
    """A job's spec is an object with exactly ``keys`` at its top: one :class:`~lossgeom.errors.InputError`
    naming what it has otherwise."""
    if not isinstance(spec, dict) or set(spec) != set(keys):
        got = sorted(spec) if isinstance(spec, dict) else type(spec).__name__
        raise InputError(f"--spec: expected the keys {', '.join(sorted(keys))}; got {got}")


def with_test_set(settings: dict, test_sets: Mapping[str, Any]) -> dict:
    """A filled section whose ``test_set`` is unset (None) reads the first of ``test_sets``: the one place of that
    rule, for the config (:func:`lossgeom.config.section`) and a job's spec alike."""
    if settings.get("test_set", "") is None:
        settings["test_set"] = next(iter(test_sets), None)
    return settings


def stats_keys(cls: type[Settings]) -> tuple[str, ...]:
    """The keys of a measure's settings read only by its statistics (declared ``setting(..., stats=True)``)."""
    return tuple(f.metadata.get("key") or f.name for f in dataclasses.fields(cls) if f.metadata.get("stats"))


@dataclass(frozen=True)
class ModelJob:
    """One model's evaluation job, as every measure sees it.

    base: the base model (hub id or directory); adapter: the adapter directory (None: the base itself);
    toy_dir: the toy world (None: no problem source is the toy's); test_sets: the study's test sets
    (name -> the filled problem-source section); template / answer_format: how a question is asked and a
    bare gold answer written (``model.prompt_template``, the resolved answer template); max_new_tokens,
    batch_size: the evaluation section's; dtype, trust_remote_code: the model section's; settings: each
    configured measure's filled settings (measure name -> dict); base_outputs: the base's tables of the
    measures that read them (:attr:`Measure.needs_base`; empty for the base's own job).
    """

    base: str
    adapter: Path | None
    toy_dir: Path | None
    test_sets: Mapping[str, dict]
    template: str
    answer_format: str | None
    max_new_tokens: int
    batch_size: int
    dtype: str
    trust_remote_code: bool
    settings: Mapping[str, dict]
    base_outputs: Mapping[str, Path]
    loaded: dict = dataclasses.field(default_factory=dict)  # test set name -> (problems, golds), read once

    @property
    def name(self) -> str:
        """How the logs name the model: its adapter directory, or "base"."""
        return str(self.adapter) if self.adapter is not None else "base"

    def test_set(self, name: str):
        """``(problems, golds)`` of the test set ``name`` (read once per job; :func:`~lossgeom.data.problemsets.load_test_set`)."""
        if name not in self.loaded:
            from ..data.problemsets import load_test_set

            self.loaded[name] = load_test_set(self.test_sets[name], self.toy_dir, name)
        return self.loaded[name]


class Measure:
    """The base of every measure (see the module docstring). Subclasses set the class attributes and override
    :meth:`measure` (and :meth:`statistics` / :meth:`draw` where they have them)."""

    name: ClassVar[str]  # the registry's key; also the evaluate rule's output name
    section: ClassVar[str]  # the config section holding its settings
    Settings: ClassVar[type[Settings]]
    output: ClassVar[str]  # its per-model table under results/, with {model}: "samples/{model}.parquet"
    order: ClassVar[int] = 50  # its place in the evaluation job (lower first)
    uses_engine: ClassVar[bool] = True  # False: it loads a model of its own, before the job's engine loads
    needs_base: ClassVar[bool] = False  # an adapter's job reads the base's table (so the base's job runs first)
    stats_rule: ClassVar[str | None] = None  # the rule (and log name) of its statistics across models
    stats_dir: ClassVar[str | None] = None  # their directory under results/
    figure_rule: ClassVar[str | None] = None
    figure_module: ClassVar[str | None] = None  # the lossgeom.figures module its figures come from

    # ---- configuration ----------------------------------------------------------------------------
    def enabled(self, settings: Mapping[str, Any]) -> bool:
        """Whether the study measures it (its filled section); most measures always run."""
        return True

    def config_error(self, settings: Mapping[str, Any]) -> str | None:
        """What is wrong with its filled section by a rule across keys that the schema cannot state (one line
        naming the keys, for the config's error), or None."""
        return None

    def sources(self, settings: Mapping[str, Any], test_sets: Mapping[str, dict]) -> list[dict]:
        """The problem sources it reads (the evaluation job needs the toy world when one is the toy's)."""
        return []

    def input_files(self, settings: Mapping[str, Any]) -> list[str]:
        """Local files it reads besides the test sets, tracked as the job's inputs (a change reruns it)."""
        return []

    # ---- per model ----------------------------------------------------------------------------------
    def prepare(self, job: ModelJob) -> Any:
        """Read and check this measure's inputs before any model loads; returned to :meth:`measure`."""
        return None

    def measure(self, job: ModelJob, engine, prepared: Any) -> Any:
        """This model's table (``engine``: the job's :class:`~lossgeom.engines.engine.Engine`; None where
        :attr:`uses_engine` is False)."""
        raise NotImplementedError

    def write(self, table: Any, path: Path) -> None:
        """Write the table :meth:`measure` returned (a DataFrame by default: parquet)."""
        from ..fsutil import write_table

        write_table(table, path)

    # ---- across models ------------------------------------------------------------------------------
    def stats_reads(self, config: Mapping[str, Any]) -> tuple[str, ...]:
        """What its statistics read: measure names (every model's table of each) and ``"adapters"`` (the
        geometry's adapters.tsv: each delta's norm). Default: its own tables."""
        return (self.name,)

    def stats_outputs(self, config: Mapping[str, Any]) -> dict[str, tuple[str, str | None, str | None]]:
        """Its statistics' files: output name -> (file name in :attr:`stats_dir`, report caption file or
        None, report category)."""
        return {}

    def statistics(self, settings: Mapping[str, Any], inputs: Mapping[str, Any], out_dir: Path) -> None:
        """Write :meth:`stats_outputs` into ``out_dir`` (all or none) from ``inputs`` (:meth:`stats_reads`'
        names -> ``{model: path}``, or a path for ``"adapters"``)."""
        raise NotImplementedError

    # ---- figures ------------------------------------------------------------------------------------
    def figure_outputs(self, config: Mapping[str, Any]) -> list[tuple[list[str], str, str]]:
        """Its figures: groups of (figure names, report caption file, report category)."""
        return []

    def draw(self, tables: Path, out: Path) -> None:
        """Draw :meth:`figure_outputs` into ``out`` from its statistics in ``tables`` (:attr:`stats_dir`)."""
        raise NotImplementedError
