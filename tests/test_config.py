"""Tests of lossgeom.config against the real schema and the default config."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from lossgeom.config import ConfigError, adapter_labels, load, validate
from lossgeom.labels import Label
from lossgeom.methods import LOSS_DEFAULTS, TRAINING_DEFAULTS, MethodSpec, MethodSpecError


def method_spec(config: dict, method: str) -> dict:
    """The resolved spec as the dict the train job records (``train_info.json``)."""
    return MethodSpec.from_config(config, method).to_dict()


ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT = ROOT / "config" / "config.yaml"


@pytest.fixture(scope="module")
def default_config() -> dict:
    return yaml.safe_load(DEFAULT.read_text())


@pytest.fixture
def cfg(default_config) -> dict:
    return copy.deepcopy(default_config)


def _error(config: dict) -> str:
    with pytest.raises(ConfigError) as info:
        validate(config, SCHEMA)
    msg = str(info.value)
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    return msg


def test_default_config_validates(cfg):
    before = copy.deepcopy(cfg)
    assert validate(cfg, SCHEMA) == before


def test_load_reads_and_validates_default():
    config = load(DEFAULT, SCHEMA)
    assert config == yaml.safe_load(DEFAULT.read_text())
    assert config["training"]["analysis_step"] <= config["training"]["steps"]


# ---------------------------------------------------------------- errors name the key
def test_unknown_top_level_key(cfg):
    cfg["trainig"] = {"steps": 1}
    msg = _error(cfg)
    assert "unknown key trainig" in msg


def test_unknown_nested_key(cfg):
    cfg["training"]["lr"] = 1e-3
    msg = _error(cfg)
    assert "training.lr" in msg
    assert "learning_rate" in msg  # the allowed keys are listed


def test_wrong_type(cfg):
    cfg["training"]["steps"] = "a"
    msg = _error(cfg)
    assert "training.steps" in msg
    assert "integer" in msg


def test_unknown_loss_name(cfg):
    cfg["methods"]["ppo_run"] = {"loss": "ppo"}
    msg = _error(cfg)
    assert "methods.ppo_run.loss" in msg
    assert "'ppo'" in msg


def test_method_key_that_does_not_apply_to_its_loss(cfg):
    cfg["methods"]["sft"]["beta"] = 0.1
    msg = _error(cfg)
    assert "methods.sft.beta" in msg
    assert "'sft'" in msg


def test_method_key_of_its_own_loss_is_fine(cfg):
    cfg["methods"]["dpo"] = {"loss": "dpo", "beta": 0.2, "pairs_per_prompt": 2, "learning_rate": 1e-4}
    cfg["methods"]["grpo"] = {"loss": "offline_grpo", "bias": 0.0, "std_normalize": True}
    validate(cfg, SCHEMA)


def test_misspelt_method_key(cfg):
    cfg["methods"]["dpo"] = {"loss": "dpo", "bta": 0.2}
    assert "methods.dpo.bta" in _error(cfg)


def test_analysis_step_beyond_steps(cfg):
    cfg["training"]["analysis_step"] = cfg["training"]["steps"] + 1
    msg = _error(cfg)
    assert "analysis_step" in msg
    assert str(cfg["training"]["steps"] + 1) in msg


def test_save_steps_beyond_a_method_steps_override(cfg):
    cfg["training"]["save_steps"] = [40, 60]
    cfg["training"]["analysis_step"] = 40
    cfg["methods"]["rft"]["steps"] = 50  # 60 is saved but rft stops at 50
    msg = _error(cfg)
    assert "save_steps" in msg
    assert "methods.rft" in msg
    assert "60" in msg and "50" in msg


def test_method_steps_override_long_enough_is_fine(cfg):
    cfg["methods"]["rft"]["steps"] = 120
    validate(cfg, SCHEMA)


def test_toy_without_toy_section(cfg):
    del cfg["toy"]
    msg = _error(cfg)
    assert "'toy'" in msg


def test_no_toy_anywhere_needs_no_toy_section(cfg):
    del cfg["toy"]
    cfg["model"]["base"] = "Qwen/Qwen3-4B-Instruct-2507"
    cfg["model"]["teacher"] = "base"
    cfg["prompts"] = {"source": "data/prompts.jsonl"}
    cfg["test_sets"] = {"gsm8k": {"source": "openai/gsm8k", "subset": "main", "split": "test"}}
    for section in cfg.values():  # sections that name a test set (lmc, cka) follow the rename
        if isinstance(section, dict) and "test_set" in section:
            section["test_set"] = "gsm8k"
    validate(cfg, SCHEMA)


def test_toy_test_set_alone_requires_toy_section(cfg):
    del cfg["toy"]
    cfg["model"]["base"] = "some/model"
    cfg["model"]["teacher"] = "base"
    cfg["prompts"] = {"source": "data/prompts.jsonl"}
    cfg["test_sets"] = {"toy": {"source": "toy", "split": "test"}}
    assert "toy" in _error(cfg)


def test_section_naming_an_unknown_test_set(cfg):
    named = [k for k, v in cfg.items() if isinstance(v, dict) and "test_set" in v]
    if not named:
        pytest.skip("the default config has no section that names a test set")
    cfg[named[0]]["test_set"] = "no_such_set"
    msg = _error(cfg)
    assert f"{named[0]}.test_set" in msg and "'no_such_set'" in msg


def test_missing_required_section(cfg):
    del cfg["methods"]
    assert "methods" in _error(cfg)


def test_load_invalid_yaml_message_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [1\nfoo: : bar\n")
    with pytest.raises(ConfigError) as info:
        load(bad, SCHEMA)
    assert "\n" not in str(info.value)


def test_load_invalid_yaml_raises_config_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [1\nfoo: : bar\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load(bad, SCHEMA)


def test_load_non_mapping(tmp_path):
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load(bad, SCHEMA)


# ---------------------------------------------------------------- method_spec
def test_method_spec_precedence(cfg):
    cfg["training"]["grad_accum"] = 4  # training over the built-in training default (1)
    cfg["training"]["learning_rate"] = 1e-3
    cfg["methods"]["grpo"] = {
        "loss": "offline_grpo",
        "description": "offline GRPO, no std",
        "learning_rate": 5e-4,  # method over training
        "bias": 0.3,  # method over the built-in loss default 0.1
    }
    validate(cfg, SCHEMA)
    spec = method_spec(cfg, "grpo")
    assert spec["learning_rate"] == 5e-4
    assert spec["grad_accum"] == 4
    assert spec["bias"] == 0.3
    assert spec["std_normalize"] is False and spec["kl_coef"] == 0.0  # built-in loss defaults fill the rest
    assert spec["loss"] == "offline_grpo"
    assert spec["method"] == "grpo"
    assert "description" not in spec
    assert spec["batch_size"] == cfg["training"]["batch_size"]
    assert spec["steps"] == cfg["training"]["steps"]


def test_method_spec_builtin_training_defaults(cfg):
    for key in ("grad_accum", "lr_scheduler", "warmup_ratio", "max_length", "precision", "data_seed", "threads"):
        cfg["training"].pop(key, None)
    spec = method_spec(cfg, "sft")
    for key in ("grad_accum", "lr_scheduler", "warmup_ratio", "max_length", "precision", "data_seed", "threads"):
        assert spec[key] == TRAINING_DEFAULTS[key]
    # a value in training wins over the built-in one
    cfg["training"]["max_length"] = 99
    assert method_spec(cfg, "sft")["max_length"] == 99


def test_method_spec_loss_defaults(cfg):
    cfg["methods"]["rift"] = {"loss": "rift"}
    cfg["methods"]["dpo"] = {"loss": "dpo", "beta": 0.5}
    rift = method_spec(cfg, "rift")
    assert rift["positive_reward"] == 1.0 and rift["negative_reward"] == -0.2
    dpo = method_spec(cfg, "dpo")
    assert dpo["beta"] == 0.5
    assert dpo["dpo_loss_type"] == "sigmoid" and dpo["pairs_per_prompt"] == 1
    # loss defaults do not leak into other losses
    sft = method_spec(cfg, "sft")
    for key in (*LOSS_DEFAULTS["rift"], *LOSS_DEFAULTS["dpo"], *LOSS_DEFAULTS["offline_grpo"]):
        assert key not in sft


def test_method_spec_does_not_mutate_config(cfg):
    before = copy.deepcopy(cfg)
    cfg["methods"]["g"] = {"loss": "offline_grpo", "bias": 0.2}
    before["methods"]["g"] = {"loss": "offline_grpo", "bias": 0.2}
    method_spec(cfg, "g")
    assert cfg == before


def test_method_spec_lora_and_template(cfg):
    cfg["lora"] = {"target_modules": ["q_proj"], "r": 4, "alpha": 8}
    assert "prompt_template" not in cfg["model"]  # the default is left out
    spec = method_spec(cfg, "sft")
    assert spec["lora"] == {"target_modules": ["q_proj"], "r": 4, "alpha": 8, "dropout": 0.0, "use_rslora": False}
    assert spec["prompt_template"] == "{question}"
    cfg["model"]["prompt_template"] = "Q: {question}\nA:"
    assert method_spec(cfg, "sft")["prompt_template"] == "Q: {question}\nA:"


def test_save_steps_include_analysis_step(cfg):
    cfg["training"]["save_steps"] = [60, 40]
    cfg["training"]["analysis_step"] = 30
    assert method_spec(cfg, "sft")["save_steps"] == [30, 40, 60]
    cfg["training"]["analysis_step"] = 40
    assert method_spec(cfg, "sft")["save_steps"] == [40, 60]  # sorted, no duplicate


# ---------------------------------------------------------------- labels
def test_adapter_labels(cfg):
    cfg["seeds"] = [42, 123]
    cfg["methods"] = {"rft": {"loss": "rft"}, "sft": {"loss": "sft"}, "dpo-lr": {"loss": "dpo"}}
    assert adapter_labels(cfg) == [
        "rft/seed42",
        "rft/seed123",
        "sft/seed42",
        "sft/seed123",
        "dpo-lr/seed42",
        "dpo-lr/seed123",
    ]
    for label in adapter_labels(cfg):
        parsed = Label.parse(label)
        assert label == f"{parsed.method}/seed{parsed.seed}" and parsed.data_seed is None


def test_a_method_may_have_seeds_of_its_own(cfg):
    """``methods.<m>.seeds`` trains a variant at fewer seeds: its labels, replicates and the seed-pair
    sweeps follow, and the key is not a training setting (the spec, so the fingerprint, ignores it)."""
    from lossgeom.config import lmc_pairs, replicate_labels

    cfg["seeds"] = [42, 123]
    cfg["data_order_replicate"] = {"seed": 42, "data_seed": 7}
    cfg["methods"] = {
        "sft": {"loss": "sft"},
        "sft_lr10x": {"loss": "sft", "learning_rate": 1.0e-2, "seeds": [42]},
        "late": {"loss": "rft", "seeds": [123]},
    }
    cfg["lmc"] = {"pairs": "first_seed", "alphas": 3}
    validate(cfg, SCHEMA)
    assert adapter_labels(cfg) == ["sft/seed42", "sft/seed123", "sft_lr10x/seed42", "late/seed123"]
    assert replicate_labels(cfg) == ["sft/seed42data7", "sft_lr10x/seed42data7"]
    assert lmc_pairs(cfg) == [("sft/seed42", "sft_lr10x/seed42"), ("sft/seed42", "sft/seed123")]
    one, both = MethodSpec.from_config(cfg, "sft_lr10x"), MethodSpec.from_config(cfg, "sft")
    assert "seeds" not in one.to_dict() and one.to_dict().keys() == both.to_dict().keys()
    cfg["methods"]["sft_lr10x"]["seeds"] = [42, 42]
    assert "repeats a seed" in _error(cfg)
    cfg["methods"]["sft_lr10x"]["seeds"] = []
    assert "seeds" in _error(cfg)


# ---------------------------------------------------------------- MethodSpec
def test_method_spec_is_typed_frozen_and_round_trips(cfg):
    spec = MethodSpec.from_config(cfg, "dpo")
    assert spec.params.beta == 0.1 and spec.lora.r == cfg["lora"]["r"] and not hasattr(spec.params, "bias")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.params.beta = 0.2
    again = MethodSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec and again.to_json() == spec.to_json()


def test_method_spec_json_is_the_flat_dict_of_earlier_versions(cfg):
    """The rule param keeps its shape, so existing results are not rerun for a new spec type."""
    d = json.loads(MethodSpec.from_config(cfg, "grpo").to_json())
    assert d["lora"] == {"dropout": 0.0, "use_rslora": False, **cfg["lora"]}
    assert {"bias", "std_normalize", "kl_coef"} <= set(d) and "beta" not in d
    assert d["method"] == "grpo" and d["checkpoint_every"] == cfg["training"]["checkpoint_every"]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"loss": "ppo"}, "unknown loss 'ppo'"),
        ({"beta": 0.3}, "'beta' does not apply to loss 'sft'"),
        ({"save_steps": [60, 40]}, "must be sorted"),
        ({"save_steps": [1, 2, 600], "analysis_step": 2}, "exceeds"),
        ({"precision": "fp8"}, "precision"),
        ({"no_such_key": 1}, "unknown spec key 'no_such_key'"),
    ],
)
def test_method_spec_from_dict_rejects_bad_specs_in_one_line(cfg, change, message):
    d = {**MethodSpec.from_config(cfg, "sft").to_dict(), **change}
    with pytest.raises(MethodSpecError, match=message) as info:
        MethodSpec.from_dict(d)
    assert "\n" not in str(info.value) and "'sft'" in str(info.value)


def test_rift_spec_needs_its_rewards(cfg):
    d = MethodSpec.from_config(cfg, "rift").to_dict()
    del d["positive_reward"]
    with pytest.raises(MethodSpecError, match="needs 'positive_reward'"):
        MethodSpec.from_dict(d)


# ---------------------------------------------------------------- the loss registry in the schema
def test_every_loss_parameter_is_in_the_schema_from_its_module():
    """The method entry's per-loss keys and the list of losses come from the registry, where each
    parameter is declared once with its default, type and documentation."""
    from lossgeom.config import load_schema
    from lossgeom.losses import LOSSES

    method = load_schema(SCHEMA)["$defs"]["method"]["properties"]
    assert method["loss"]["enum"] == list(LOSSES)
    for loss in LOSSES.values():
        for key, prop in loss.Params.schema().items():
            assert method[key]["description"] and {k: v for k, v in method[key].items() if k != "description"} == {
                k: v for k, v in prop.items() if k != "description"
            }, (loss.name, key)
    assert "negative_prob" not in yaml.safe_load(SCHEMA.read_text())["$defs"]["method"]["properties"]


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("negative_prob", "tokens", r"methods\.rift\.negative_prob: 'tokens' is not one of \['token', 'sequence'\]"),
        ("positive_reward", "one", r"methods\.rift\.positive_reward: expected number"),
    ],
)
def test_a_bad_loss_parameter_is_named_by_the_schema(tmp_path, key, value, message):
    config = yaml.safe_load(DEFAULT.read_text())
    config["methods"]["rift"][key] = value
    bad = tmp_path / "c.yaml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message):
        load(bad, SCHEMA)


# ---------------------------------------------------------------- typed settings: one place per default
def test_sections_take_their_keys_defaults_and_docs_from_the_settings_classes():
    from lossgeom.config import load_schema, section
    from lossgeom.settings import SECTIONS

    schema = load_schema(SCHEMA)["properties"]
    config = yaml.safe_load(DEFAULT.read_text())
    for key, cls in SECTIONS.items():
        assert set(schema[key]["properties"]) == set(cls.keys()), key
        assert all(p["description"] for p in schema[key]["properties"].values()), key
        resolved = section({**config, key: {}}, key)
        assert {k: v for k, v in resolved.items() if k != "test_set"} == {
            k: v for k, v in cls.defaults().items() if k != "test_set"
        }
        assert set(config.get(key, {})) <= set(cls.keys())
    assert section({"test_sets": {"a": {}, "b": {}}, "cka": {}}, "cka")["test_set"] == "a"


def _restated_defaults(config: dict) -> list[str]:
    """Every key of ``config`` that a settings class (or the loss's parameters) gives the same value by default."""
    from lossgeom.losses import LOSSES
    from lossgeom.settings import GENERATION_BACKENDS, SCHEMA_SECTIONS, SECTIONS
    from lossgeom.settings import ToyModelSettings as ToyModel

    by_name = {pointer.rsplit("/", 1)[-1]: cls for pointer, cls in SCHEMA_SECTIONS.items()}
    places = [(key, config.get(key), by_name[key]) for key in ("model", "toy", "rollouts", "lora", "training")]
    places += [("prompts", config["prompts"], by_name["problem_source"])]
    places += [(f"test_sets.{n}", t, by_name["problem_source"]) for n, t in config["test_sets"].items()]
    places += [(f"toy.models.{n}", m, ToyModel) for n, m in config.get("toy", {}).get("models", {}).items()]
    places += [(key, config.get(key), cls) for key, cls in SECTIONS.items()]
    places += [(f"generation.{k}", config.get("generation", {}).get(k), c) for k, c in GENERATION_BACKENDS.items()]
    places += [(f"methods.{n}", e, LOSSES[e["loss"]].Params) for n, e in config["methods"].items()]
    out = []
    for where, given, cls in places:
        defaults = cls.defaults()
        for key, value in (given or {}).items():
            if key in defaults and defaults[key] == value and type(defaults[key]) is type(value):
                out.append(f"{where}.{key}: {value!r}")
    return out


@pytest.mark.parametrize("name", ["config", "paper", "extended", "rehearsal"])
def test_a_config_file_says_only_what_it_sets(name):
    """Our choice for issue 20: a config file gives only what differs from the defaults (or has none), so
    a default is one line of lossgeom.settings (or a loss module) and no copy of it can drift."""
    config = load(ROOT / "config" / f"{name}.yaml", SCHEMA)
    assert _restated_defaults(config) == []


def test_the_restated_defaults_check_finds_one():
    config = yaml.safe_load(DEFAULT.read_text())
    config["training"]["grad_accum"] = 1
    config["methods"]["rift"]["positive_reward"] = 1.0
    config["test_sets"]["toy"]["grader"] = "exact"
    assert sorted(_restated_defaults(config)) == [
        "methods.rift.positive_reward: 1.0",
        "test_sets.toy.grader: 'exact'",
        "training.grad_accum: 1",
    ]


def test_with_defaults_fills_every_settings_key_and_changes_nothing_given():
    from lossgeom.config import with_defaults
    from lossgeom.settings import ModelSettings, ProblemSourceSettings, RolloutsSettings, ToyModelSettings

    config = load(DEFAULT, SCHEMA)
    before = copy.deepcopy(config)
    full = with_defaults(config)
    assert config == before  # not changed in place
    assert set(full["model"]) == set(ModelSettings.keys()) and full["model"]["teacher"] == "toy"
    assert set(full["rollouts"]) == set(RolloutsSettings.keys()) and full["rollouts"]["import"] is None
    assert set(full["test_sets"]["toy"]) == set(ProblemSourceSettings.keys())
    assert full["test_sets"]["toy"]["split"] == "test" and full["prompts"]["split"] == "train"
    assert all(set(m) == set(ToyModelSettings.keys()) for m in full["toy"]["models"].values())
    assert full["toy"]["max_operand"] == 4 and full["toy"]["min_steps"] == 2
    assert full["lmc"]["test_set"] == "toy" and full["evaluation"]["mid_p"] is False
    # a config that leaves the teacher out samples from the base (not from a toy model it may not have)
    no_teacher = copy.deepcopy(before)
    del no_teacher["model"]["teacher"]
    assert with_defaults(no_teacher)["model"]["teacher"] == "base"


def test_every_section_with_a_settings_class_is_generated_into_the_schema():
    from lossgeom.config import load_schema
    from lossgeom.settings import SCHEMA_SECTIONS

    schema = load_schema(SCHEMA)
    for pointer, cls in SCHEMA_SECTIONS.items():
        node = schema
        for part in pointer.split("/"):
            node = node[part]
        assert set(node["properties"]) == set(cls.keys()), pointer
        assert node["additionalProperties"] is False and all(p["description"] for p in node["properties"].values())
        assert node.get("required", []) == list(cls.required()), pointer
    method = schema["$defs"]["method"]["properties"]
    assert method["warmup_ratio"] == schema["properties"]["training"]["properties"]["warmup_ratio"]


def test_training_defaults_are_the_method_spec_s_own():
    import dataclasses

    from lossgeom.methods import TRAINING_DEFAULTS

    fields = {f.name: f.default for f in dataclasses.fields(MethodSpec)}
    assert TRAINING_DEFAULTS and all(fields[k] == v for k, v in TRAINING_DEFAULTS.items())


def test_generation_backends_take_their_options_from_the_settings_classes():
    from lossgeom.config import load_schema
    from lossgeom.engines.engine import OPENAI_DEFAULTS, VLLM_DEFAULTS
    from lossgeom.settings import GENERATION_BACKENDS

    gen = load_schema(SCHEMA)["properties"]["generation"]["properties"]
    for backend, cls in GENERATION_BACKENDS.items():
        assert set(gen[backend]["properties"]) == set(cls.keys()), backend
    assert VLLM_DEFAULTS == GENERATION_BACKENDS["vllm"].defaults()
    assert OPENAI_DEFAULTS == GENERATION_BACKENDS["openai"].defaults()
    # the schema has one "generation" property (a duplicate key used to shadow a missing $defs entry)
    assert SCHEMA.read_text().count("\n  generation:") == 1


@pytest.mark.parametrize(
    "section, message",
    [
        ({"behaviour": {"n": 4, "k": [1, 2, 8]}}, r"behaviour\.k \[1, 2, 8\] asks for pass@8 from behaviour\.n 4"),
        ({"behaviour": {"test_set": "gsm8k"}}, r"behaviour\.test_set 'gsm8k' is not a key of test_sets"),
        ({"forgetting": {"style": "poetic"}}, r"forgetting\.style: 'poetic' is not one of"),
        ({"behaviour": {"k": []}}, r"behaviour\.k"),
    ],
)
def test_bad_behaviour_and_forgetting_settings_stop_before_any_job(tmp_path, section, message):
    """A pass@k that n samples cannot give, or a test set the study does not have, stops at validation,
    not in the statistics job after every evaluation has run."""
    config = yaml.safe_load(DEFAULT.read_text())
    for key, value in section.items():
        config[key] = {**config.get(key, {}), **value}
    bad = tmp_path / "c.yaml"
    bad.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=message) as info:
        load(bad, SCHEMA)
    assert "\n" not in str(info.value)
