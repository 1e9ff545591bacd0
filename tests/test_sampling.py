"""Sampling rollouts from a (tiny, random) model: schema, K per prompt, log-probs, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lossgeom.data.problemsets import load_problems
from lossgeom.data.rollouts import ROLLOUT_COLUMNS
from lossgeom.engines.hf import HFEngine
from lossgeom.generation.sampling import sample_rollouts
from lossgeom.modeling import load_model, load_tokenizer


def _sample(tiny_base, toy_world, seed=0):
    problems = load_problems({"source": "toy", "split": "train", "limit": 5}, toy_world)
    engine = HFEngine(str(tiny_base), batch_size=2)
    return problems, sample_rollouts(
        engine, problems, k=3, temperature=1.0, max_new_tokens=12, grader="exact", seed=seed, source="tiny"
    )


def test_rollout_table_schema_and_counts(tiny_base, toy_world):
    problems, df = _sample(tiny_base, toy_world)
    assert list(df.columns) == ROLLOUT_COLUMNS
    assert len(df) == 15
    assert (
        df.groupby("prompt_id")["sample_index"].apply(sorted)
        == pd.Series([[0, 1, 2]] * 5, index=sorted(problems["id"]))
    ).all()
    assert set(df["reward"]) <= {0.0, 1.0}
    # an untrained model writes no '####' line: no answer, reward 0, and the row is kept
    assert df.loc[df["answer"].isna(), "reward"].eq(0).all()
    tok = load_tokenizer(str(tiny_base))
    for row in df.itertuples():
        assert all(lp <= 0 for lp in row.logprobs)
        # one log-prob per sampled token, EOS included when it stopped before the limit
        assert len(row.logprobs) == len(row.completion_ids) <= 12
        ids = list(row.completion_ids)
        if tok.eos_token_id in ids:
            assert ids.index(tok.eos_token_id) == len(ids) - 1
            ids = ids[:-1]
        assert tok.decode(ids, skip_special_tokens=True) == row.completion


def test_sampling_is_deterministic_by_seed(tiny_base, toy_world):
    _, a = _sample(tiny_base, toy_world, seed=0)
    _, b = _sample(tiny_base, toy_world, seed=0)
    _, c = _sample(tiny_base, toy_world, seed=1)
    assert a["completion"].tolist() == b["completion"].tolist()
    assert np.allclose(np.concatenate(a["logprobs"].tolist()), np.concatenate(b["logprobs"].tolist()))
    assert a["completion"].tolist() != c["completion"].tolist()


def test_sampler_logprobs_match_a_forward_pass(tiny_base, toy_world):
    """The stored log-probs are those of the sampling distribution (temperature 1: the model's own)."""
    import torch

    from lossgeom.data.prompting import prompt_ids

    problems, df = _sample(tiny_base, toy_world)
    model, tok = load_model(str(tiny_base)), load_tokenizer(str(tiny_base))
    row = df.iloc[0]
    p = prompt_ids(tok, row["prompt"])
    c = list(row["completion_ids"])
    ids = torch.tensor([p + c])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, len(p) - 1 : -1].float(), -1)
    expected = logp.gather(-1, torch.tensor(c)[:, None]).squeeze(-1).numpy()
    np.testing.assert_allclose(row["logprobs"], expected, atol=1e-4)
