"""The toy world's solution styles, style mixtures and cues (lossgeom.toy.problems / .pretrain / .world):
what makes the student a model that can reason when asked and answers at once when not."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lossgeom.data.grading import grade_exact
from lossgeom.errors import InputError
from lossgeom.modeling import load_tokenizer
from lossgeom.toy.pretrain import cued, solution_dataset, style_mixture
from lossgeom.toy.problems import STYLES, generate_splits, make_problem
from lossgeom.toy.world import build_world, read_split

CUE = "Think step by step."


def test_every_style_grades_as_the_answer():
    rng = random.Random(3)
    for _ in range(50):
        p = make_problem(rng, rng.randint(1, 4))
        for style in STYLES:
            text = p.solution_in(style)
            assert grade_exact(text, str(p.answer))[1] == 1.0, (style, text)
    assert p.solution_in("direct") == f"#### {p.answer}"
    with pytest.raises(InputError, match="unknown solution style"):
        p.solution_in("chatty")


def test_style_mixture_is_seeded_and_follows_the_weights():
    a = style_mixture({"direct": 0.2, "verbose": 0.8}, 5000, seed=1)
    assert a == style_mixture({"direct": 0.2, "verbose": 0.8}, 5000, seed=1)
    assert a != style_mixture({"direct": 0.2, "verbose": 0.8}, 5000, seed=2)
    share = Counter(a)["direct"] / len(a)
    assert abs(share - 0.2) < 0.03  # binomial sd at n = 5000 is 0.006
    assert style_mixture("terse", 3, seed=0) == ["terse"] * 3
    assert set(style_mixture({"verbose": 1.0, "direct": 0.0}, 200, seed=0)) == {"verbose"}


@pytest.mark.parametrize("bad", [{}, {"direct": -1.0, "verbose": 2.0}, {"direct": 0.0}])
def test_style_mixture_rejects_bad_weights(bad):
    with pytest.raises(InputError, match="style mixture"):
        style_mixture(bad, 10, seed=0)


def test_cue_goes_on_the_cued_rows_only(tmp_path):
    spec = {
        "seed": 0,
        "n_train": 300,
        "n_test": 10,
        "tokenizer_vocab": 300,
        "max_start": 9,
        "max_operand": 4,
        "max_double": 0,
        "models": {"base": {"cue": CUE}},
    }
    build_world(spec, tmp_path / "world")
    tok = load_tokenizer(tmp_path / "world" / "tokenizer")
    problems = read_split(tmp_path / "world", "train")
    mix = {"direct": 0.3, "verbose": 0.1, "verbose+cue": 0.6}
    rows = solution_dataset(tok, problems, "{question}", mix, seed=4, cue=CUE)
    kinds = style_mixture(mix, len(problems), seed=4)
    assert set(kinds) == set(mix)
    assert len(rows) == len(problems)
    for row, p, kind in zip(rows, problems, kinds):
        ids, mask = row["input_ids"], row["completion_mask"]
        prompt = tok.decode([t for t, m in zip(ids, mask) if not m])
        completion = tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=True)
        assert (CUE in prompt) == (kind == "verbose+cue"), prompt
        assert p.question in prompt
        assert completion.strip() == p.solution_in(kind.removesuffix("+cue"))
    # the cue is text the tokenizer round-trips exactly (byte-level BPE, learned with the cue in its corpus)
    assert tok.decode(tok(cued("Q?", CUE))["input_ids"]) == "Q? " + CUE
    with pytest.raises(InputError, match="has no cue"):
        solution_dataset(tok, problems[:20], "{question}", {"verbose+cue": 1.0}, seed=0, cue=None)


def test_cued():
    assert cued("How many?", None) == "How many?"
    assert cued("How many?", CUE) == "How many? " + CUE


def test_small_world_has_no_doubling():
    train, _ = generate_splits(0, 500, 10, max_start=9, max_operand=4, max_double=0)
    assert not any("*" in p.solution for p in train)
    assert max(p.answer for p in train) <= 9 + 3 * 4


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"n_train": 0, "n_test": 5}, "toy problem counts must be >= 1"),
        ({"n_train": 5, "n_test": 5, "min_steps": 3, "max_steps": 2}, "need 1 <= min_steps <= max_steps"),
        (  # one step from 2 by 1: a few hundred distinct questions
            {
                "n_train": 600,
                "n_test": 1,
                "min_steps": 1,
                "max_steps": 1,
                "max_start": 2,
                "max_operand": 1,
                "max_double": 0,
            },
            "could not draw 601 distinct toy problems",
        ),
    ],
)
def test_a_toy_spec_that_cannot_make_a_world_is_an_input_error(kw, match):
    with pytest.raises(InputError, match=match):
        generate_splits(0, **kw)


def test_a_toy_model_spec_with_heads_that_do_not_divide_is_an_input_error(toy_world):
    from lossgeom.toy.pretrain import qwen3_config

    tok = load_tokenizer(toy_world / "tokenizer")
    with pytest.raises(InputError, match="hidden_size 30 is not divisible by num_attention_heads 4; set head_dim"):
        qwen3_config({"hidden_size": 30, "num_attention_heads": 4, "num_key_value_heads": 2}, len(tok), tok)
