"""One place that turns questions and completions into token ids.

Every stage (rollouts, training, evaluation, connectivity, activations) goes through these two
functions, so a prompt is tokenised the same way everywhere. The prompt is the user turn of the
tokenizer's chat template followed by the generation prompt (``add_generation_prompt=True``);
the completion is the assistant text followed by the tokenizer's EOS token (``<|im_end|>`` for
Qwen3 and for the toy tokenizer). ``template`` wraps the question first, e.g.
``"{question}\\nPlease reason step by step."``.
"""

from __future__ import annotations

from ..errors import InputError


def prompt_text(question: str, template: str = "{question}") -> str:
    """The user message for ``question``; ``template`` must contain ``{question}``."""
    if "{question}" not in template:
        raise InputError(
            f"prompt template (model.prompt_template, --template) must contain '{{question}}', got {template!r}"
        )
    return template.replace("{question}", question)


HASH_ANSWER, BOXED_ANSWER = "#### {answer}", "\\boxed{{answer}}"


def answer_template(template: str = "{question}", answer: str | None = None) -> str:
    """How a bare final answer is written as a continuation of the prompt (the answer cross-entropy's
    and a probe's target), with ``{answer}`` where the answer goes: ``answer`` when given, else what the
    prompt ``template`` asks for: ``\\boxed{<answer>}`` when it names ``\\boxed``, GSM8K's
    ``#### <answer>`` line otherwise (the toy world's format)."""
    if answer is not None:
        if "{answer}" not in answer:
            raise InputError(
                f"answer template (model.answer_template, --answer-template) must contain '{{answer}}', got {answer!r}"
            )
        return answer
    return BOXED_ANSWER if "\\boxed" in template else HASH_ANSWER


def answer_text(final_answer: str, template: str) -> str:
    """``final_answer`` written in an answer template (:func:`answer_template`)."""
    return template.replace("{answer}", final_answer)


def prompt_string(tokenizer, question: str, template: str = "{question}") -> str:
    """The chat-formatted prompt as text, ending with the assistant generation prompt."""
    messages = [{"role": "user", "content": prompt_text(question, template)}]
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except ValueError as e:  # transformers' error for a tokenizer without a chat template: the model's fault
        name = getattr(tokenizer, "name_or_path", None) or "the tokenizer"
        raise InputError(f"{name}: cannot write a chat prompt ({e}); give a model whose tokenizer has one") from None


def prompt_ids(tokenizer, question: str, template: str = "{question}") -> list[int]:
    """Token ids of ``prompt_string`` (the template already holds any special tokens)."""
    return tokenizer(prompt_string(tokenizer, question, template), add_special_tokens=False)["input_ids"]


def completion_ids(tokenizer, completion: str) -> list[int]:
    """Token ids of an assistant completion, terminated by the EOS token (added once)."""
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError(
            "the tokenizer has no eos_token, so completions cannot be terminated: give the model one (tokenizer_config.json)"
        )
    if not ids or ids[-1] != eos:
        ids = ids + [eos]
    return ids


def prompt_completion(
    tokenizer,
    question: str,
    completion: str,
    template: str = "{question}",
    max_length: int | None = None,
    eos: bool = True,
):
    """(ids, completion_mask) of prompt + completion (EOS-terminated unless ``eos`` is False), truncated
    to ``max_length``: the row format of TRL's SFTTrainer (pre-tokenised) and of every scoring pass."""
    p = prompt_ids(tokenizer, question, template)
    c = completion_ids(tokenizer, completion) if eos else tokenizer(completion, add_special_tokens=False)["input_ids"]
    ids, mask = p + c, [0] * len(p) + [1] * len(c)
    return (ids[:max_length], mask[:max_length]) if max_length else (ids, mask)


def right_padded(seqs: list[list[int]], pad_id: int, device=None):
    """Batch of right-padded ``input_ids`` and ``attention_mask`` tensors, shape (batch, longest)."""
    import torch

    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in seqs], device=device)
    attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
    return ids, attn
