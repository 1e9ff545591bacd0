"""The cost model's FLOP counts against torch's own FLOP counter (torch.utils.flop_counter.FlopCounterMode,
which counts every matrix product autograd and the model actually run) on random Qwen3 models of several
shapes: a forward, a LoRA training pass (PEFT's LoRA, frozen base) for several target sets, and sampling
with transformers' generate. Eager attention computes the whole (query, key) square, so the counts are
compared with ``causal=False``."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lossgeom.cost_model import Shape, decode_flops, forward_flops, lora_train_flops

SHAPES = [  # layers, hidden, heads, kv_heads, head_dim, intermediate, vocab
    Shape(2, 64, 4, 2, 16, 192, 300),
    Shape(3, 48, 6, 3, 12, 100, 97),
    Shape(1, 32, 2, 1, 24, 64, 50),  # heads x head_dim != hidden (Qwen3 allows it)
    Shape(4, 40, 5, 5, 8, 120, 128),  # no grouped-query attention
]
TARGETS = [
    ["q_proj", "k_proj", "v_proj", "o_proj"],  # the paper's
    ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],  # all linear
    ["v_proj"],  # only v: the first layer's attention scores need no gradient
    ["down_proj"],  # only the MLP's last: nothing of the first layer's attention needs a gradient
    ["q_proj"],  # dQ at the first layer, but not dK
]


def _model(shape: Shape):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        attn_implementation="eager",
        pad_token_id=0,
        eos_token_id=1,
    )
    return Qwen3ForCausalLM(cfg).eval()


def _counted(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("tokens", [1, 7, 33])
def test_forward_flops_equal_torch_s_count(shape, tokens):
    model = _model(shape)
    ids = torch.randint(2, shape.vocab, (1, tokens))
    with torch.no_grad():
        counted = _counted(lambda: model(ids))
    assert forward_flops(shape, tokens, causal=False) == counted


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("targets", TARGETS, ids=lambda t: "+".join(t))
def test_lora_training_pass_flops_equal_torch_s_count(shape, targets):
    from peft import LoraConfig, get_peft_model

    rank, tokens = 4, 19
    model = get_peft_model(_model(shape), LoraConfig(r=rank, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    model.train()
    ids = torch.randint(2, shape.vocab, (1, tokens))

    def step():
        model(input_ids=ids).logits.float().sum().backward()

    counted = _counted(step)
    assert lora_train_flops(shape, tokens, targets, rank, causal=False) == counted


@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)
@pytest.mark.parametrize(("prompt", "new"), [(5, 1), (9, 6), (3, 12)])
def test_sampling_flops_equal_torch_s_count_of_generate(shape, prompt, new):
    model = _model(shape)
    ids = torch.randint(2, shape.vocab, (1, prompt))
    kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        counted = _counted(lambda: model.generate(ids, **kwargs))
    assert decode_flops(shape, prompt, new, causal=False) == counted


def test_causal_counts_half_the_square_and_the_paper_s_model():
    """The formula's scale on Qwen3-4B (its config.json): P = 4.02e9 weights, so ~8 GFLOPs a token forward."""
    from lossgeom.cost_model import KNOWN_SHAPES

    qwen = Shape(**KNOWN_SHAPES["Qwen/Qwen3-4B-Instruct-2507"])
    assert qwen.linear_params == 36 * (2560 * (4096 + 1024 + 1024) + 4096 * 2560 + 3 * 2560 * 9728) + 2560 * 151936
    t = 1000
    dense, causal = forward_flops(qwen, t, causal=False), forward_flops(qwen, t)
    assert dense - causal == 4 * 36 * 32 * 128 * (t * t - t * (t + 1) / 2)
    assert 8.0e9 < causal / t < 8.7e9


def _sft_trainer(model, tokens: int, checkpointing: bool, out_dir):
    """TRL's SFTTrainer on one row of ``tokens`` tokens, set up as training runs it (gradient checkpointing
    enabled as Trainer.train does, transformers' trainer.py)."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    vocab = {f"t{i}": i for i in range(model.config.vocab_size)}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t2")), pad_token="t0", eos_token="t1"
    )
    args = SFTConfig(
        output_dir=str(out_dir),
        max_steps=1,
        per_device_train_batch_size=1,
        use_cpu=True,
        report_to=[],
        gradient_checkpointing=checkpointing,
        save_strategy="no",
        dataset_kwargs={"skip_prepare_dataset": True},
        remove_unused_columns=False,
    )
    ds = Dataset.from_dict({"input_ids": [list(range(2, 2 + tokens))]})
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok)
    trainer.current_gradient_accumulation_steps = 1
    if checkpointing:
        trainer.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
    return trainer


@pytest.mark.parametrize("checkpointing", [False, True])
@pytest.mark.parametrize("targets", TARGETS[:2] + [["down_proj"]], ids=lambda t: "+".join(t))
def test_a_training_step_of_trl_s_trainer_equals_the_count(checkpointing, targets, tmp_path):
    """One training step of TRL's SFTTrainer (the trainers' base), with TRL's default gradient checkpointing and
    without: torch's count equals the formula's (the loss's T - 1 positions through the LM head)."""
    from peft import LoraConfig, get_peft_model

    shape, rank, tokens = SHAPES[0], 4, 19
    model = get_peft_model(_model(shape), LoraConfig(r=rank, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    trainer = _sft_trainer(model, tokens, checkpointing, tmp_path)
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    counted = _counted(lambda: trainer.training_step(trainer.model, batch))
    expected = lora_train_flops(
        shape, tokens, targets, rank, causal=False, checkpointing=checkpointing, head_tokens=tokens - 1
    )
    assert expected == counted
