"""The sampled-behaviour path of an evaluation job (lossgeom.behaviour.sampled) against exact values.

The KL estimates are checked against the exact KL of a tiny model's whole output space: a vocabulary of
six tokens and completions of at most four, so every completion (781 of them: those ending in EOS and
the cut ones of four tokens) can be enumerated and its probability computed in float64 by direct
forward passes. Samples come from the hf engine (HF ``generate``), log-probabilities from its scoring
path, as in the study; the reference is transformers' model in float64 with a PEFT merge of the adapter.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pandas as pd
import pytest
from conftest import random_adapter, tiny_qwen3

from lossgeom.behaviour.estimators import kl_sequence, kl_token, per_item_log_ratio
from lossgeom.behaviour.sampled import KL_TEMPERATURE, SAMPLE_COLUMNS, kl_draws, sample_model
from lossgeom.errors import InputError

VOCAB = {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2, "a": 3, "b": 4, "q": 5}
EOS = VOCAB["<|im_end|>"]
MAX_NEW = 4
QUESTIONS = ["q", "ab"]
TEMPLATE = "{question}"


@pytest.fixture(scope="module")
def tiny_space(tmp_path_factory):
    """(base dir, adapter dir): a 6-token Qwen3 with a character-level tokenizer, and a random LoRA on it."""
    import torch
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny_space")
    tok = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>{% endif %}"
    )
    model = tiny_qwen3(vocab_size=len(VOCAB), eos_token_id=EOS, pad_token_id=0, bos_token_id=None)
    with torch.no_grad():  # sharper next-token distributions than a fresh init's near-uniform ones
        model.lm_head.weight.mul_(4.0)
    base = root / "base"
    model.save_pretrained(str(base))
    fast.save_pretrained(str(base))
    adapter = random_adapter(base, root / "adapter", r=2, seed=3)
    return base, adapter


def _float64_models(base, adapter):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    b = AutoModelForCausalLM.from_pretrained(str(base), torch_dtype=torch.float64).eval()
    t = AutoModelForCausalLM.from_pretrained(str(base), torch_dtype=torch.float64)
    t = PeftModel.from_pretrained(t, str(adapter)).merge_and_unload().eval()
    return b, t


def _completion_space(model, prompt: list[int]) -> dict[tuple, float]:
    """log P(y | prompt) of every completion y: ends in EOS within MAX_NEW tokens, or is cut at MAX_NEW."""
    import torch

    out, prefixes = {}, [()]
    for depth in range(MAX_NEW):
        ids = torch.tensor([prompt + list(p) for p in prefixes])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[:, -1], dim=-1).numpy()
        carried = {}
        for p, row in zip(prefixes, logp):
            base_lp = out.pop(p, 0.0) if p else 0.0
            for t in range(len(VOCAB)):
                y = p + (t,)
                if t == EOS or depth == MAX_NEW - 1:
                    out[y] = base_lp + row[t]
                else:
                    carried[y] = base_lp + row[t]
        out.update(carried)  # open prefixes: extended (and popped) at the next depth
        prefixes = list(carried)
    return out


def _exact_kl(p: dict, q: dict) -> tuple[float, float]:
    """(KL(P || Q) in nats per completion, E_P[length])."""
    probs = np.exp(np.array(list(p.values())))
    assert abs(probs.sum() - 1) < 1e-9  # the enumeration covers the whole space
    kl = float(sum(np.exp(lp) * (lp - q[y]) for y, lp in p.items()))
    length = float(sum(np.exp(lp) * len(y) for y, lp in p.items()))
    return kl, length


def _problems():
    return pd.DataFrame({"id": [f"i{j}" for j in range(len(QUESTIONS))], "question": QUESTIONS, "answer": ["1", "2"]})


def _sample(engine, adapter, n, base_samples=None, temperature=1.0):
    spec = {"n": n, "temperature": temperature, "top_p": 1.0, "seed": 7}
    return sample_model(
        engine,
        _problems(),
        [1, 2],
        test_set="t",
        spec=spec,
        grader="exact",
        template=TEMPLATE,
        max_new_tokens=MAX_NEW,
        adapter=adapter,
        base_samples=base_samples,
    )


@pytest.fixture(scope="module")
def sampled(tiny_space):
    from lossgeom.engines.engine import AdapterDir
    from lossgeom.engines.hf import HFEngine

    base, adapter = tiny_space
    engine = HFEngine(str(base), batch_size=1000)  # both prompts in one generate call; scoring in 1,000s
    base_table = _sample(engine, None, 3000)
    tuned_table = _sample(engine, AdapterDir(adapter), 3000, base_samples=base_table)
    return base_table, tuned_table


def _se_ratio(lr: np.ndarray, length: np.ndarray) -> float:
    """Delta-method standard error of sum(lr) / sum(length)."""
    r = lr.sum() / length.sum()
    return float(np.std(lr - r * length, ddof=1) / np.sqrt(len(lr)) / length.mean())


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_estimates_match_the_exact_kl_of_the_whole_output_space(tiny_space, sampled, direction):
    base, adapter = tiny_space
    base_table, tuned_table = sampled
    b64, t64 = _float64_models(base, adapter)
    from lossgeom.data.prompting import prompt_ids
    from lossgeom.modeling import load_tokenizer

    tok = load_tokenizer(str(base))
    rows = kl_draws(tuned_table, "self" if direction == "forward" else "base")
    sign = 1.0 if direction == "forward" else -1.0
    per_item = per_item_log_ratio(rows, sign)
    for pid, question in zip(_problems()["id"], QUESTIONS):
        prompt = prompt_ids(tok, question, TEMPLATE)
        p_t, p_b = _completion_space(t64, prompt), _completion_space(b64, prompt)
        p, q = (p_t, p_b) if direction == "forward" else (p_b, p_t)
        exact, length = _exact_kl(p, q)
        assert 0.05 < exact < 5  # the two models differ enough for the test to mean something
        r = rows[rows["id"] == pid]
        lr = sign * (r["logp"] - r["logp_base"]).to_numpy()
        # every sampled completion's log-probabilities are the enumeration's (float32 scoring path)
        sampler = p_t if direction == "forward" else p_b
        other = p_b if direction == "forward" else p_t
        for ids, lp, lpb in zip(r["token_ids"][:200], r["logp"][:200], r["logp_base"][:200]):
            y = tuple(int(t) for t in ids)
            own, ref = (lp, lpb) if direction == "forward" else (lpb, lp)
            assert own == pytest.approx(sampler[y], abs=2e-4) and ref == pytest.approx(other[y], abs=2e-4)
        seq = kl_sequence(per_item.loc[pid, "log_ratio_sum"], per_item.loc[pid, "n"])
        se = lr.std(ddof=1) / np.sqrt(len(lr))
        assert abs(seq - exact) < 4.5 * se, (seq, exact, se)
        tok_rate = kl_token(per_item.loc[[pid], "log_ratio_sum"], per_item.loc[[pid], "tokens"])
        lengths = r["n_tokens"].to_numpy()
        assert abs(tok_rate - exact / length) < 4.5 * _se_ratio(lr, lengths), (tok_rate, exact / length)
        assert abs(lengths.mean() - length) < 4.5 * lengths.std(ddof=1) / np.sqrt(len(lengths))


def test_samples_cover_the_space_in_proportion_to_the_model(tiny_space, sampled):
    """The sampler is the model's own distribution at temperature 1: completion frequencies match the
    enumerated probabilities (chi-square over the completions of probability >= 1%)."""
    from scipy import stats

    from lossgeom.data.prompting import prompt_ids
    from lossgeom.modeling import load_tokenizer

    base, adapter = tiny_space
    b64, _ = _float64_models(base, adapter)
    base_table, _ = sampled
    tok = load_tokenizer(str(base))
    r = base_table[base_table["id"] == "i0"]
    p = _completion_space(b64, prompt_ids(tok, QUESTIONS[0], TEMPLATE))
    counts = pd.Series([tuple(int(t) for t in ids) for ids in r["token_ids"]]).value_counts()
    common = [y for y, lp in p.items() if np.exp(lp) >= 0.01]
    observed = np.array([counts.get(y, 0) for y in common] + [len(r) - sum(counts.get(y, 0) for y in common)])
    expected = np.array([np.exp(p[y]) for y in common] + [1 - sum(np.exp(p[y]) for y in common)]) * len(r)
    assert stats.chisquare(observed, expected).pvalue > 1e-4


def test_samples_table_layout_and_the_base_s_kl_to_itself_is_zero(sampled):
    base_table, tuned_table = sampled
    for table in (base_table, tuned_table):
        assert list(table.columns) == SAMPLE_COLUMNS
        assert (table["n_tokens"] == table["token_ids"].map(len)).all()
        assert set(table["finish_reason"]) <= {"stop", "length"}
        stopped = table["finish_reason"] == "stop"
        assert table.loc[stopped, "token_ids"].map(lambda t: t[-1] == EOS).all()
        assert (table.loc[~stopped, "n_tokens"] == MAX_NEW).all()
    assert set(base_table["source"]) == {"self"}
    assert (base_table["logp"] == base_table["logp_base"]).all()  # KL(base || base) = 0 exactly
    assert tuned_table.groupby("source").size().to_dict() == {"base": 6000, "self": 6000}
    # the base's samples are carried over as they were, scored anew under the adapter
    rev = tuned_table[tuned_table["source"] == "base"].reset_index(drop=True)
    assert rev["token_ids"].map(tuple).tolist() == base_table["token_ids"].map(tuple).tolist()
    assert np.array_equal(rev["logp_base"].to_numpy(), base_table["logp"].to_numpy())
    assert not np.allclose(rev["logp"], rev["logp_base"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_path_floor_is_reported_and_the_base_against_itself_is_within_it(tiny_space, dtype):
    """Both terms of a KL come from the scoring path; the sampler's own log-probabilities (decode path) stay
    beside them, and their gap is the floor kl.tsv reports (issue 30): ~1e-7 nats per token in float32 (and
    ~5e-7 at most in bf16 on this 2-layer model, on the CPU that wrote this)."""
    from lossgeom.behaviour.estimators import path_gap
    from lossgeom.engines.hf import HFEngine

    base, _ = tiny_space
    engine = HFEngine(str(base), dtype=dtype, batch_size=1000)
    table = kl_draws(_sample(engine, None, 300))
    assert table["logp_sampler"].notna().all() and table["logp"].notna().all()
    per_seq, per_token = path_gap(table)
    assert np.isfinite(per_seq) and np.isfinite(per_token)
    lr = per_item_log_ratio(table)
    kl_self = float(kl_token(lr["log_ratio_sum"], lr["tokens"]))
    assert abs(kl_self) <= abs(per_token)  # the base against itself: 0, within the floor
    if dtype == "float32":  # the two paths agree to float32 precision
        assert ((table["logp_sampler"] - table["logp"]).abs() / table["n_tokens"]).max() < 1e-5


def test_a_pass_at_k_temperature_other_than_one_draws_the_kl_samples_apart(tiny_space):
    from lossgeom.engines.engine import AdapterDir
    from lossgeom.engines.hf import HFEngine

    base, adapter = tiny_space
    engine = HFEngine(str(base), batch_size=2)
    base_table = _sample(engine, None, 5, temperature=0.5)
    tuned = _sample(engine, AdapterDir(adapter), 5, base_samples=base_table, temperature=0.5)
    for table, sources in ((base_table, {"self"}), (tuned, {"self", "base"})):
        assert set(table["source"]) == sources
        own = table[table["source"] == "self"]
        assert own.groupby("temperature").size().to_dict() == {0.5: 10, KL_TEMPERATURE: 10}
        assert own.loc[own["temperature"] == 0.5, ["logp", "logp_base"]].isna().all().all()
        assert own.loc[own["temperature"] == 1.0, ["logp", "logp_base"]].notna().all().all()
    assert (tuned.loc[tuned["source"] == "base", "temperature"] == 1.0).all()  # only T=1 base samples


def test_an_adapter_needs_the_base_s_samples_of_the_same_items(tiny_space, sampled):
    from lossgeom.engines.engine import AdapterDir
    from lossgeom.engines.hf import HFEngine

    base, adapter = tiny_space
    engine = HFEngine(str(base), batch_size=2)
    with pytest.raises(ValueError, match="base's samples table"):
        _sample(engine, AdapterDir(adapter), 2)
    other = sampled[0].assign(id="elsewhere")
    with pytest.raises(ValueError, match="item 'elsewhere' is not in it"):
        _sample(engine, AdapterDir(adapter), 2, base_samples=other)


@pytest.mark.heavy
def test_the_evaluation_job_writes_every_table_and_reads_its_inputs_first(tiny_space, tmp_path, toy_world, tiny_base):
    """The evaluation job with activations, samples and held-out text: every table written, paired by item."""
    from jobs import evaluate

    from lossgeom.behaviour.heldout import HeldoutTextError
    from lossgeom.settings import ProblemSourceSettings

    test_sets = {"toy": ProblemSourceSettings.filled({"source": "toy", "split": "test", "limit": 6})}
    measures = {
        "accuracy": {"max_new_tokens": 6, "batch_size": 4},
        "samples": {"limit": 4, "n": 3, "test_set": "toy"},
        "heldout": {"source": "toy", "split": "heldout", "limit": 5},
        "activations": {"test_set": "toy", "n_probe": 3, "pooling": "completion_mean", "batch_size": 2},
    }
    adapter = random_adapter(tiny_base, tmp_path / "adapter", r=2)
    outs = {}
    for name, ad in (("base", None), ("tuned", adapter)):
        (tmp_path / name).mkdir()
        base_outputs = {"samples": outs["base"]["samples"]} if ad is not None else None
        outs[name] = evaluate(
            tiny_base, ad, test_sets, toy_world, tmp_path / name, template=TEMPLATE, base_outputs=base_outputs,
            **measures,
        )  # fmt: skip
        assert all(p.exists() for p in outs[name].values()) and len(outs[name]) == 4
    s = pd.read_parquet(outs["tuned"]["samples"])
    assert s.groupby("source").size().to_dict() == {"base": 12, "self": 12}
    assert set(s["id"]) == {f"toy-test-{i}" for i in range(4)}
    h = {m: pd.read_parquet(o["heldout"]) for m, o in outs.items()}
    assert h["base"]["id"].tolist() == h["tuned"]["id"].tolist() == [f"toy-heldout-{i}" for i in range(5)]
    assert (h["tuned"]["ce"] != h["base"]["ce"]).any() and (h["base"]["n_tokens"] >= 1).all()
    npz = np.load(outs["tuned"]["activations"])
    assert npz["acts"].shape[1] == 3
    # an unreadable held-out source stops the job before anything is written
    bad = tmp_path / "bad"
    bad.mkdir()
    missing = {**measures, "heldout": {"source": str(tmp_path / "missing.txt")}}
    with pytest.raises(HeldoutTextError, match="does not exist"):
        evaluate(tiny_base, None, test_sets, toy_world, bad, template=TEMPLATE, **missing)
    assert not list(bad.iterdir())
    # an adapter's samples without the base's table: one line, before any model loads
    with pytest.raises(InputError, match="base's samples table"):
        evaluate(tiny_base, adapter, test_sets, toy_world, bad, template=TEMPLATE, **measures)
    json.dumps(measures)  # the settings travel as the job's JSON spec


def test_every_completion_of_the_space_is_enumerated_once():
    """The enumeration itself: 1 + 5 + 25 + 125 completions ending in EOS, 5**4 cut at four tokens."""

    class Uniform:
        def __call__(self, input_ids):
            import torch

            class Out:
                logits = torch.zeros(input_ids.shape[0], input_ids.shape[1], len(VOCAB), dtype=torch.float64)

            return Out()

    space = _completion_space(Uniform(), [1])
    assert len(space) == sum(5**d for d in range(MAX_NEW)) + 5**MAX_NEW
    assert len(set(space)) == len(space)
    assert all(y[-1] == EOS or len(y) == MAX_NEW for y in space)
    assert not any(EOS in y[:-1] for y in space)
    assert set(itertools.chain.from_iterable(space)) == set(VOCAB.values())
