"""The study's configuration: validation against the JSON schema, and the narrow views of it that
each job receives.

Rules never receive the whole config: Snakemake reruns a job when the repr of its params changes,
so each job gets only the slice it uses (:class:`lossgeom.methods.MethodSpec` for a training job,
:func:`section` for the behaviour jobs, ...). Changing one method's learning rate therefore reruns
only that method's jobs.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from .errors import InputError
from .labels import Label
from .measures import MEASURES
from .measures import SECTIONS as MEASURE_SECTIONS
from .measures.base import model_spec, with_test_set
from .methods import MethodSpec, MethodSpecError
from .settings import (
    GENERATION_BACKENDS,
    SCHEMA_SECTIONS,
    SECTIONS,
    LoraSettings,
    ModelSettings,
    ProblemSourceSettings,
    RolloutsSettings,
    ToyModelSettings,
    ToySettings,
    TrainingSettings,
)

# config section -> its settings class: the stages' (lossgeom.settings) and the measures' (lossgeom.measures)
ALL_SECTIONS = {**SECTIONS, **MEASURE_SECTIONS}


class ConfigError(InputError):
    """A configuration value is missing, of the wrong type, or inconsistent. The message names the key."""


def _key_path(error) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def _describe(error) -> str:
    """One line for a jsonschema error: the key and what was expected."""
    where = _key_path(error)
    v = error.validator
    if v == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = sorted(error.schema.get("properties", {}))
        return f"unknown key {where + '.' if where != '<top level>' else ''}{extra[0]}; expected one of {allowed}"
    if v == "enum":
        return f"{where}: {error.instance!r} is not one of {error.validator_value}"
    if v == "type":
        return f"{where}: expected {error.validator_value}, got {type(error.instance).__name__} {error.instance!r}"
    if v == "required":
        return f"{where}: {error.message}"
    if v == "pattern" and error.path and error.schema is not None:
        return f"{where}: {error.instance!r} does not match {error.validator_value!r}"
    return f"{where}: {error.message}"


def load_schema(schema_path: Path | str) -> dict:
    """The config's JSON schema: the YAML file (the study's structure), with every section that has a
    settings class (:data:`lossgeom.settings.SCHEMA_SECTIONS`, the measures' :data:`lossgeom.measures.SECTIONS`)
    and each registered loss's parameters added from their one place of declaration."""
    from .losses import LOSSES, method_schema
    from .methods import OPTIM_KEYS

    schema = yaml.safe_load(Path(schema_path).read_text())
    for key in MEASURE_SECTIONS:  # a measure's section is its module's alone: the YAML does not name it
        schema["properties"].setdefault(key, {})
    measures = {f"properties/{key}": cls for key, cls in MEASURE_SECTIONS.items()}
    for pointer, cls in {**SCHEMA_SECTIONS, **measures}.items():
        node = schema
        for part in pointer.split("/"):
            node = node[part]
        node.update(cls.object_schema())
    method = schema["$defs"]["method"]
    method["properties"]["loss"]["enum"] = list(LOSSES)
    training = TrainingSettings.schema()
    method["properties"].update({k: training[k] for k in OPTIM_KEYS})
    clash = sorted(set(method["properties"]) & set(method_schema()))
    if clash:
        raise ConfigError(f"{schema_path}: method key {clash[0]!r} is declared both in the schema and by a loss")
    method["properties"].update(method_schema())
    return schema


def validate(config: dict, schema_path: Path | str) -> dict:
    """Validate ``config`` against the YAML JSON-schema at ``schema_path`` and check cross-key rules.

    Raises ``ConfigError`` with one line naming the first offending key and what was expected.
    Returns the config unchanged.
    """
    import jsonschema

    schema = load_schema(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        # Prefer the deepest error of the first branch: it names the exact key.
        err = errors[0]
        if err.context:
            err = sorted(err.context, key=lambda e: -len(list(e.absolute_path)))[0]
        raise ConfigError(f"config error: {_describe(err)}")
    _check_consistency(config)
    return config


def _check_consistency(config: dict) -> None:
    """The cross-key rules the schema cannot express; the first broken one is a ``ConfigError`` naming it.

    Long because it is the list of those rules, one short check and one-line message each; split, they
    would be read apart from each other.
    """
    for name in config["methods"]:
        try:
            MethodSpec.from_config(config, name)  # the one place a method spec is resolved and checked
        except MethodSpecError as e:
            raise ConfigError(f"config error: {e}") from None
    for name, entry in config["methods"].items():
        if "seeds" in entry and len(set(entry["seeds"])) != len(entry["seeds"]):
            raise ConfigError(f"config error: methods.{name}.seeds {entry['seeds']} repeats a seed")
    labels = set(adapter_labels(config)) | set(replicate_labels(config))
    rep = config.get("data_order_replicate")
    if rep and rep["seed"] not in config["seeds"]:
        raise ConfigError(
            f"config error: data_order_replicate.seed {rep['seed']} is not one of seeds {config['seeds']}"
        )
    if rep and rep["data_seed"] == rep["seed"]:
        raise ConfigError(
            f"config error: data_order_replicate.data_seed {rep['data_seed']} equals its seed; "
            "a data-order replicate needs another data order"
        )
    for measure in MEASURES.values():  # a rule across a measure's keys that its schema cannot state
        error = measure.config_error(measure.Settings.filled(config.get(measure.section)))
        if error:
            raise ConfigError(f"config error: {error}")
    with_test_set = [key for key, cls in ALL_SECTIONS.items() if "test_set" in cls.keys()]
    for key in with_test_set:
        name = config.get(key, {}).get("test_set")
        if name is not None and name not in config["test_sets"]:
            raise ConfigError(
                f"config error: {key}.test_set {name!r} is not a key of test_sets {sorted(config['test_sets'])}"
            )
    pairs = config.get("lmc", {}).get("pairs", "first_seed")
    if isinstance(pairs, list):
        for pair in pairs:
            for label in pair:
                if label not in labels:
                    raise ConfigError(f"config error: lmc.pairs names {label!r}, which is not an adapter of this study")
    rank, top_k = config["lora"]["r"], config.get("geometry", {}).get("top_k")
    if top_k is not None and top_k > rank:
        raise ConfigError(
            f"config error: geometry.top_k {top_k} exceeds lora.r {rank} (an adapter's update has at most "
            f"{rank} singular directions); lower geometry.top_k"
        )
    gen = config.get("generation", {})
    for stage, need in (("evaluation", rank), ("lmc", 2 * rank)):  # a connectivity point has rank r1 + r2
        limit = gen.get("vllm", {}).get("max_lora_rank")  # when unset, the engine checks its default (64)
        if generation_backend(config, stage) == "vllm" and limit is not None:
            if limit < need:
                raise ConfigError(
                    f"config error: generation.vllm.max_lora_rank {limit} is below the rank {need} the "
                    f"{stage} stage serves (lora.r {rank}{' x 2 for a connectivity point' if stage == 'lmc' else ''})"
                )
    for stage in ("evaluation", "lmc"):
        if generation_backend(config, stage) == "openai":
            raise ConfigError(
                f"config error: generation.backend 'openai' serves rollouts only; set generation.stages.{stage} "
                "to 'hf' or 'vllm'"
            )
    if generation_backend(config, "rollouts") == "openai":
        missing = [k for k in ("base_url", "model") if not gen.get("openai", {}).get(k)]
        if missing:
            raise ConfigError(f"config error: generation.openai.{missing[0]} is required by the openai backend")
        if config["rollouts"].get("import"):
            raise ConfigError("config error: rollouts.import and an openai rollout backend exclude each other")
    uses_toy = (
        config["model"]["base"] == "toy"
        or config["model"].get("teacher") == "toy"
        or config["prompts"]["source"] == "toy"
        or any(s["source"] == "toy" for s in config["test_sets"].values())
    )
    if uses_toy and "toy" not in config:
        raise ConfigError("config error: a model or problem source is 'toy' but there is no 'toy' section")


def load(path: Path | str, schema_path: Path | str) -> dict:
    """Read a YAML config file and validate it."""
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config error: {path} is not valid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config error: {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config error: {path} must hold a mapping at the top level")
    return validate(config, schema_path)


def with_defaults(config: dict) -> dict:
    """A validated ``config`` with every section that has a settings class filled with its defaults
    (a new dict; the given one is not changed): model, toy (and its two models), prompts, each test set,
    rollouts, lora, training, evaluation, lmc, cka and geometry. The workflow reads the filled config,
    so no rule and no command keeps a default of its own: each is one line of :mod:`lossgeom.settings`.
    The generation backends' options are filled where they are used (:mod:`lossgeom.engines.engine`),
    so a stage that does not use a backend does not see its options."""
    out = dict(config)
    out["model"] = ModelSettings.filled(config["model"])
    if config.get("toy"):
        toy = ToySettings.filled(config["toy"])
        toy["models"] = {name: ToyModelSettings.filled(spec) for name, spec in toy["models"].items()}
        out["toy"] = toy
    out["prompts"] = ProblemSourceSettings.filled(config["prompts"])
    out["test_sets"] = {name: ProblemSourceSettings.filled(spec) for name, spec in config["test_sets"].items()}
    out["rollouts"] = RolloutsSettings.filled(config["rollouts"])
    out["lora"] = LoraSettings.filled(config["lora"])
    out["training"] = TrainingSettings.filled(config["training"])
    for key in ALL_SECTIONS:
        out[key] = section(config, key)
    return out


# ---- narrow views -------------------------------------------------------------------------------


def method_seeds(config: dict, method: str) -> list[int]:
    """The seeds ``method`` is trained for: its entry's ``seeds`` (a variant run at one seed), else the
    study's ``seeds``."""
    return list(config["methods"][method].get("seeds", config["seeds"]))


def adapter_labels(config: dict) -> list[str]:
    """Every adapter of the study, as ``"{method}/seed{seed}"``, methods in config order."""
    return [str(Label(m, s)) for m in config["methods"] for s in method_seeds(config, m)]


def replicate_labels(config: dict) -> list[str]:
    """The data-order replicates, ``"{method}/seed{seed}data{data_seed}"`` for every method trained at
    ``seed``, from ``data_order_replicate: {seed, data_seed}``: the same LoRA init as
    ``{method}/seed{seed}`` and another data order. Only the geometry reads them (the data-order noise
    floor); none when the key is absent or null."""
    rep = config.get("data_order_replicate")
    if not rep:
        return []
    return [
        str(Label(m, rep["seed"], rep["data_seed"]))
        for m in config["methods"]
        if rep["seed"] in method_seeds(config, m)
    ]


def geometry_labels(config: dict) -> list[str]:
    """Every adapter the geometry compares: the study's adapters, then the data-order replicates."""
    return adapter_labels(config) + replicate_labels(config)


def section(config: dict, key: str) -> dict:
    """A section that has a settings class (:data:`ALL_SECTIONS`: a stage's or a measure's) with its defaults
    filled in (``test_set``: the first test set when unset)."""
    return with_test_set(ALL_SECTIONS[key].filled(config.get(key)), config["test_sets"])


def lmc_pairs(config: dict) -> list[tuple[str, str]]:
    """The adapter pairs that get a connectivity sweep, per ``lmc.pairs`` (see the schema): a list of
    label pairs; "all" adapter pairs; "first_seed" method pairs at the first seed; "reference" the
    first method against each other method at the first seed. The last two add each method's
    first-vs-second-seed pair (the noise floor: same loss, another init and data order)."""
    pairs = section(config, "lmc")["pairs"]
    labels = adapter_labels(config)
    if isinstance(pairs, list):
        return [tuple(p) for p in pairs]
    if pairs == "all":
        return [(a, b) for i, a in enumerate(labels) for b in labels[i + 1 :]]
    seeds = config["seeds"]
    have = set(labels)
    first = [str(Label(m, seeds[0])) for m in config["methods"] if str(Label(m, seeds[0])) in have]
    if pairs == "reference":
        out = [(first[0], b) for b in first[1:]]
    else:
        out = [(a, b) for i, a in enumerate(first) for b in first[i + 1 :]]
    if len(seeds) > 1:
        out += [
            (str(Label(m, seeds[0])), str(Label(m, seeds[1])))
            for m in config["methods"]
            if {str(Label(m, seeds[0])), str(Label(m, seeds[1]))} <= have
        ]
    return out


LMC_JOB_KEYS = ("alphas", "limit", "accuracy_subset")  # what of the lmc section a sweep reads (pairs: the rules)


def lmc_spec(config: dict) -> dict:
    """The connectivity sweep's spec (``lossgeom lmc --spec``): the model block, the sweep's test set (a
    problem source), the lmc section's :data:`LMC_JOB_KEYS` and the evaluation section's generation limits."""
    lmc = config["lmc"]
    return {
        "model": model_spec(config),
        "test_set": config["test_sets"][lmc["test_set"]],
        "lmc": {k: lmc[k] for k in LMC_JOB_KEYS},
        "evaluation": {k: config["evaluation"][k] for k in ("max_new_tokens", "batch_size")},
    }


def api_rollouts(config: dict) -> bool:
    """Whether the rollouts come from an API teacher: a job that needs no GPU and must reach the network."""
    return not config["rollouts"]["import"] and generation_backend(config, "rollouts") == "openai"


def generation_backend(config: dict, stage: str) -> str:
    """The backend of ``stage`` (rollouts, evaluation, lmc): its override, else ``generation.backend``, else hf."""
    gen = config.get("generation", {})
    return gen.get("stages", {}).get(stage, gen.get("backend", "hf"))


def _backend_options(config: dict, stage: str) -> tuple[str, dict, dict]:
    """The stage's backend, and the options the config gives it split into those that can change what a
    job writes and the runtime-only ones (``runtime_keys`` of its settings class)."""
    backend = generation_backend(config, stage)
    if backend not in GENERATION_BACKENDS:
        return backend, {}, {}
    runtime = GENERATION_BACKENDS[backend].runtime_keys()
    given = config.get("generation", {}).get(backend, {})
    return (
        backend,
        {k: v for k, v in given.items() if k not in runtime},
        {k: v for k, v in given.items() if k in runtime},
    )


def generation_spec(config: dict, stage: str) -> dict:
    """The narrow generation param of one stage's jobs: the backend and that backend's options only,
    so editing the vLLM options does not rerun hf jobs (and never the API key: only its variable name).
    Runtime-only options (requests in flight, retries, timeouts, prices: ``runtime_keys``) are left out,
    so changing them reruns nothing: a finished API-teacher table is never re-requested for them; the
    job gets them apart (:func:`generation_runtime`)."""
    backend, options, _ = _backend_options(config, stage)
    return {"backend": backend, backend: options} if backend in GENERATION_BACKENDS else {"backend": backend}


def generation_runtime(config: dict, stage: str) -> dict:
    """The runtime-only options of a stage's backend that the config gives (see :func:`generation_spec`)."""
    return _backend_options(config, stage)[2]


PAPER_ROLES = {"sft": "sft", "rft": "rft", "dft": "dft", "rift": "rift", "grpo": "offline_grpo", "dpo": "dpo"}


def claim_roles(config: dict) -> dict[str, str]:
    """The paper's six methods -> this study's method names: for each, the first method (config
    order) with that loss (so ``dpo``, not ``dpo_lrmatched``, plays DPO). Absent losses are left out.

    The paper's two extra runs, where the study has them: ``online_grpo``, the first method with loss
    ``online_grpo``; ``lr10x``, the first other method with loss ``sft`` whose resolved learning rate is
    10x that of the method playing SFT (e.g. ``sft_lr10x: {loss: sft, learning_rate: 1.0e-2}``)."""
    out = {}
    for role, loss in PAPER_ROLES.items():
        name = next((m for m, e in config["methods"].items() if e.get("loss") == loss), None)
        if name is not None:
            out[role] = name
    online = next((m for m, e in config["methods"].items() if e.get("loss") == "online_grpo"), None)
    if online is not None:
        out["online_grpo"] = online
    if "sft" in out:
        lr = MethodSpec.from_config(config, out["sft"]).learning_rate
        for m, e in config["methods"].items():
            if (
                m != out["sft"]
                and e.get("loss") == "sft"
                and math.isclose(MethodSpec.from_config(config, m).learning_rate, 10 * lr, rel_tol=1e-9)
            ):
                out["lr10x"] = m
                break
    return out
