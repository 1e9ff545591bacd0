"""The new method entries as configuration: config/extended.yaml (the contrastive family, online GRPO and
the LR study on the default toy world), config/paper.yaml's online GRPO, and the claims roles they fill."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from lossgeom.config import ConfigError, claim_roles, load, validate
from lossgeom.methods import MethodSpec

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT, EXTENDED, PAPER = (ROOT / "config" / f"{n}.yaml" for n in ("config", "extended", "paper"))


@pytest.fixture(scope="module")
def extended():
    return load(EXTENDED, SCHEMA)


def test_extended_shares_the_default_toy_world_and_recipe(extended):
    """Every section but ``methods``, ``lmc`` and the sampled behaviour's sizes (``behaviour``,
    ``forgetting``: 200 items x 16 samples, 200 texts) is the default's: the same toy world, base,
    prompts, grader, rollouts and LoRA recipe, so the two studies share results/toy and results/rollouts."""
    default = yaml.safe_load(DEFAULT.read_text())
    assert set(extended) == set(default)
    for key in default:
        if key not in ("methods", "lmc", "behaviour", "forgetting"):
            assert extended[key] == default[key], key
    # and the default's own methods are there, with the same settings (the extended study trains
    # every method at every seed; the default runs its extra runs at one)
    for name, entry in default["methods"].items():
        assert extended["methods"][name] == {k: v for k, v in entry.items() if k != "seeds"}, name
        assert "seeds" not in extended["methods"][name], name


def test_extended_holds_the_contrastive_family_online_grpo_and_the_lr_variant(extended):
    losses = {MethodSpec.from_config(extended, m).loss for m in extended["methods"]}
    assert {"ipo", "simpo", "kto", "online_grpo"} <= losses
    specs = {m: MethodSpec.from_config(extended, m) for m in extended["methods"]}
    assert specs["sft_lr10x"].learning_rate == pytest.approx(10 * specs["sft"].learning_rate)
    online = specs["online_grpo"]
    # toy-scaled online GRPO: K=4, short completions, the rollouts' temperature and grader, the default LoRA
    assert (
        online.params.num_generations,
        online.params.max_new_tokens,
        online.params.temperature,
        online.params.grader,
    ) == (4, 64, extended["rollouts"]["temperature"], "exact")
    assert online.steps < specs["sft"].steps and online.analysis_step == online.steps
    assert online.lora == specs["sft"].lora and online.params.generation == "hf"
    assert claim_roles(extended) == {
        "sft": "sft",
        "rft": "rft",
        "dft": "dft",
        "rift": "rift",
        "grpo": "grpo",
        "dpo": "dpo",
        "online_grpo": "online_grpo",
        "lr10x": "sft_lr10x",
    }


def test_the_new_methods_would_run_in_the_default_study():
    """The lead adds them to config/config.yaml later: with the default's sections they validate."""
    default = yaml.safe_load(DEFAULT.read_text())
    ext = yaml.safe_load(EXTENDED.read_text())
    default["methods"].update({m: ext["methods"][m] for m in ("sft_lr10x", "online_grpo", "ipo", "simpo", "kto")})
    validate(default, SCHEMA)
    assert claim_roles(default)["lr10x"] == "sft_lr10x"


def test_paper_online_grpo_has_the_papers_settings():
    paper = load(PAPER, SCHEMA)
    spec = MethodSpec.from_config(paper, "online_grpo")
    assert (spec.steps, spec.params.num_generations, spec.analysis_step) == (600, 8, 600)
    assert (spec.lora.r, spec.lora.alpha, tuple(spec.lora.target_modules)) == (
        32,
        64,
        ("q_proj", "k_proj", "v_proj", "o_proj"),
    )
    assert spec.batch_size * spec.grad_accum == 32  # the paper's effective batch: 4 prompts x 8 samples
    assert (spec.params.grader, spec.params.max_new_tokens, spec.params.generation) == ("math_verify", 4096, "vllm")
    assert claim_roles(paper)["online_grpo"] == "online_grpo"


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c["methods"].update(x={"loss": "online_grpo", "num_generations": 3}),
            "batch_size x grad_accum = 16 completions per step must be a multiple of num_generations 3",
        ),
        (
            lambda c: c["methods"].update(x={"loss": "online_grpo", "steps": 40}),
            "exceeds methods.x steps 40; set methods.x.save_steps and analysis_step",
        ),
        (
            lambda c: c["methods"].update(x={"loss": "kto", "simpo_gamma": 1.0}),
            "methods.x.simpo_gamma does not apply to loss 'kto'",
        ),
        (
            lambda c: c["methods"].update(x={"loss": "simpo", "grader": "exact"}),
            "methods.x.grader does not apply to loss 'simpo'",
        ),
    ],
)
def test_bad_new_method_entries_stop_in_one_line(change, message):
    cfg = copy.deepcopy(yaml.safe_load(DEFAULT.read_text()))
    change(cfg)
    with pytest.raises(ConfigError) as e:
        validate(cfg, SCHEMA)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_online_grpo_sampling_backend_follows_the_generation_section():
    cfg = yaml.safe_load(DEFAULT.read_text())
    cfg["methods"]["og"] = {"loss": "online_grpo"}
    assert MethodSpec.from_config(cfg, "og").params.generation == "hf"
    cfg["generation"] = {"backend": "vllm"}
    assert MethodSpec.from_config(cfg, "og").params.generation == "vllm"
    cfg["generation"] = {"backend": "vllm", "stages": {"training": "hf"}}
    assert MethodSpec.from_config(cfg, "og").params.generation == "hf"
    cfg["generation"] = {
        "backend": "openai",
        "stages": {"evaluation": "hf", "lmc": "hf"},
        "openai": {"base_url": "http://x", "model": "m"},
    }
    assert MethodSpec.from_config(cfg, "og").params.generation == "hf"  # an API teacher cannot sample the student
