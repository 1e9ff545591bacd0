"""Online GRPO on TRL's GRPOTrainer: completions sampled during training from the rollout table's
prompts, rewarded by the project's grader (:class:`GraderReward`) against their gold answers.

TRL settings: ``num_generations``, ``max_completion_length`` = ``max_new_tokens``, ``temperature``,
``beta`` = ``kl_coef``, ``scale_rewards`` = ``group`` if ``std_normalize`` else ``none``, ``loss_type``
= ``grpo_loss_type``; sampled by TRL's colocated vLLM where ``generation`` is ``vllm`` and CUDA is
there, else by ``generate()``. ``max_new_tokens``, ``temperature`` and ``grader`` default to the
rollouts section's; ``generation`` to ``generation.stages.training`` (else ``generation.backend``; an
API teacher's backend means ``hf``: sampling here is local).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pandas as pd

from .base import Loss, LossParams, MethodSpecError, ViewError, param

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnlineGRPOParams(LossParams):
    num_generations: int = param(
        4, {"type": "integer", "minimum": 2}, "samples per prompt (K); batch_size x grad_accum must be a multiple"
    )
    max_new_tokens: int | None = param(
        None, {"type": "integer", "minimum": 1}, "completion length (default: rollouts.max_new_tokens)"
    )
    temperature: float | None = param(
        None, {"type": "number", "exclusiveMinimum": 0}, "sampling temperature (default: rollouts.temperature)"
    )
    grader: str | None = param(
        None, {"enum": ["exact", "math_verify"]}, "the reward's grader (default: rollouts.grader)"
    )
    kl_coef: float = param(0.0, {"type": "number", "minimum": 0}, "TRL's beta: the KL to the base (0: none)")
    std_normalize: bool = param(
        True,
        {"type": "boolean"},
        "divide advantages by the group's reward std (TRL's scale_rewards='group', else 'none')",
    )
    grpo_loss_type: str = param("dapo", {"enum": ["grpo", "dapo", "dr_grpo", "bnpo"]}, "TRL's GRPO loss_type")
    generation: str | None = param(
        None,
        {"enum": ["hf", "vllm"]},
        "how online GRPO samples: hf generate, or TRL's colocated vLLM (GPU only; CPU falls back to generate)",
    )
    vllm_max_model_length: int | None = param(
        None,
        {"type": ["integer", "null"], "minimum": 1},
        "the colocated vLLM's context, prompt + completion tokens (TRL's vllm_max_model_length; null: the "
        "method's max_length). Left unset in TRL, vLLM sizes its KV cache for the model's whole context "
        "(262,144 tokens for Qwen3-4B) and does not start within its memory share",
    )
    vllm_gpu_memory_utilization: float = param(
        0.3,
        {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "the share of the GPU the colocated vLLM takes beside training (TRL's vllm_gpu_memory_utilization; its "
        "default)",
    )


def online_prompts(rollouts: pd.DataFrame) -> pd.DataFrame:
    """One row per prompt of the rollout table (first appearance order) with its gold answer:
    columns prompt_id, prompt, gold. Rows without a gold answer are dropped (an imported table may
    lack them: such a prompt cannot be graded)."""
    first = rollouts.drop_duplicates("prompt_id")[["prompt_id", "prompt", "gold"]]
    first = first[first["gold"].fillna("").astype(str).str.strip() != ""]
    return first.reset_index(drop=True)


class OnlineGRPO(Loss):
    name = "online_grpo"
    Params = OnlineGRPOParams
    trainer = "trl"
    trl_trainers = (("trl", "GRPOConfig", "GRPOTrainer"),)
    from_rollouts = ("max_new_tokens", "temperature", "grader")
    reads_completions = False  # it samples its own
    # each completion through a training pass, and one forward more: with vLLM's importance-sampling correction
    # (TRL 1.16's default) GRPOTrainer recomputes the sampled completions' log-probs (grpo_trainer.py, around
    # line 2643); a bound for hf sampling, which skips it. Sampling the completions is costed as decoding
    # (lossgeom.cost_model), and kl_coef > 0 adds the reference's forward (cost_sequences)
    train_sequences, forward_sequences = 1.0, 1.0

    def resolve(self, values, config):
        super().resolve(values, config)
        if values.get("grader") is None:
            values["grader"] = "exact"
        if values.get("generation") is None:
            gen = config.get("generation", {})
            backend = gen.get("stages", {}).get("training", gen.get("backend", "hf"))
            values["generation"] = backend if backend in ("hf", "vllm") else "hf"
        if values.get("vllm_max_model_length") is None:
            values["vllm_max_model_length"] = values["max_length"]  # what the trainer sees of a row

    def cost_sequences(self, spec):
        return self.train_sequences, self.forward_sequences + (1.0 if spec.params.kl_coef > 0 else 0.0)

    def check_spec(self, spec, where):
        k = spec.params.num_generations
        if (spec.batch_size * spec.grad_accum) % k:
            raise MethodSpecError(
                f"{where}: batch_size x grad_accum = {spec.batch_size * spec.grad_accum} "
                f"completions per step must be a multiple of num_generations {k}"
            )

    def view(self, rollouts, rows, spec, seed, counts):
        view = online_prompts(rollouts)
        counts["rows"] = int(len(view))
        if view.empty:
            raise ViewError(
                f"method {spec.method!r} (online_grpo): no prompt with a gold answer to grade against "
                f"(column 'gold' empty); counts {counts}"
            )
        return view

    def trl_args(self, spec):
        import torch

        p = spec.params
        use_vllm = p.generation == "vllm" and torch.cuda.is_available()
        if p.generation == "vllm" and not use_vllm:
            log.warning(
                "method %s: generation 'vllm' asks for a GPU; none here, so TRL samples with generate()", spec.method
            )
        return {
            "num_generations": p.num_generations,
            "max_completion_length": p.max_new_tokens,
            "temperature": p.temperature,
            "top_p": 1.0,
            "beta": p.kl_coef,
            "scale_rewards": "group" if p.std_normalize else "none",
            "loss_type": p.grpo_loss_type,
            "use_vllm": use_vllm,
            **(self._vllm_args(spec) if use_vllm else {}),
            "log_completions": False,
        }

    @staticmethod
    def _vllm_args(spec) -> dict:
        """TRL's colocated vLLM, sized from the config: its context and its share of the GPU."""
        p = spec.params
        return {
            "vllm_mode": "colocate",
            "vllm_max_model_length": p.vllm_max_model_length,
            "vllm_gpu_memory_utilization": p.vllm_gpu_memory_utilization,
        }

    def dataset(self, view, tokenizer, template):
        from datasets import Dataset

        from ..data.prompting import prompt_string

        return Dataset.from_dict(
            {
                "prompt": [prompt_string(tokenizer, p, template) for p in view["prompt"]],
                "gold": view["gold"].astype(str).tolist(),
            }
        )

    def trainer_kwargs(self, spec, view, args):
        # Sampling (prompt order and completions) follows the data-order seed: the init seed has done
        # its work in lora_model before the trainer exists, so a data-order replicate shares the init.
        args["seed"] = args["data_seed"]
        args.pop("max_length")  # prompt and completion lengths: the prompts' own and max_completion_length
        reward = GraderReward(spec.params.grader)
        reward.read_golds(view, spec.method)  # every gold read before the first step, not at step N
        return {"reward_funcs": [reward]}


class GraderReward:
    """Online GRPO's reward function in TRL's interface: the project's grader on each sampled completion.

    Called by GRPOTrainer with ``completions`` (list[str], the decoded samples without special tokens,
    K per prompt), ``gold`` (list[str], the dataset column repeated alongside) and ``log_metric``;
    returns the rewards, list[float] in {0, 1}, exactly ``grade(completion, gold).reward``. Logs
    ``accuracy`` (fraction of samples graded correct: with a 0/1 grader the mean reward) and
    ``answer_rate`` (fraction with a parsable final answer) for each step's metrics row.
    """

    def __init__(self, grader: str):
        from ..data.grading import get_grader

        self.grader = grader
        self.grade = get_grader(grader)
        self._golds: dict[str, object] = {}  # gold text -> parsed gold: each gold is parsed once per job
        self.__name__ = "grader"  # TRL names the reward's metrics columns after it

    def _gold(self, gold: str):
        if gold not in self._golds:
            self._golds[gold] = self.grade.parse_gold(gold)
        return self._golds[gold]

    def read_golds(self, view, method: str) -> None:
        """Parse every gold of the online view (prompt_id, gold) now; one that the grader cannot read
        stops the job here with the prompt and the method named (a ``MethodSpecError``)."""
        from ..data.grading import GoldError

        for pid, g in zip(view["prompt_id"], view["gold"]):
            try:
                self._gold(g)
            except GoldError as e:
                raise MethodSpecError(f"method {method!r} (online_grpo): prompt {pid!r}: {e}") from None

    def __call__(self, prompts, completions, gold, log_metric=None, **kwargs) -> list[float]:
        graded = [
            self.grade.grade(c if isinstance(c, str) else c[-1]["content"], self._gold(g))
            for c, g in zip(completions, gold)
        ]
        rewards = [float(g.reward) for g in graded]
        if log_metric is not None and rewards:
            log_metric("accuracy", sum(rewards) / len(rewards))
            log_metric("answer_rate", sum(g.answer is not None for g in graded) / len(graded))
        return rewards


LOSS = OnlineGRPO()
