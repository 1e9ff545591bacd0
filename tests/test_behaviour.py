"""Behaviour jobs: the LMC path is exact (endpoints are the adapters, midpoints the dense merge),
sweep endpoints equal the adapters' own evaluation, and bad inputs stop clearly."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from jobs import evaluate

from lossgeom.behaviour import accuracy, activations, cka, connectivity
from lossgeom.behaviour.interpolation import alpha_grid, barrier
from lossgeom.data.problemsets import ProblemSetError
from lossgeom.engines.adapters import LoraPath
from lossgeom.lora.adapters import load_adapter
from lossgeom.modeling import load_model

TEST_SET = {"source": "toy", "split": "test", "grader": "exact"}


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_barrier_by_hand():
    a = [0, 0.5, 1]
    assert barrier(a, [1.0, 3.0, 2.0]) == pytest.approx(1.5)  # line at 0.5 is 1.5
    assert barrier(a, [1.0, 1.0, 2.0]) == 0.0  # below the line: no barrier
    assert barrier(a, [0.8, 0.2, 0.6], higher_is_better=True) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        barrier([0.1, 1.0], [1, 2])
    assert list(alpha_grid(3)) == [0, 0.5, 1]


@pytest.mark.heavy
def test_path_endpoints_are_the_adapters_and_midpoints_the_dense_merge(tiny_base, two_adapters):
    from peft import PeftModel

    ids = torch.randint(5, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    first, second = load_adapter(two_adapters["sft"]), load_adapter(two_adapters["rift"])
    path = LoraPath(load_model(str(tiny_base)), first, second)
    for a, name in ((0.0, "sft"), (1.0, "rift")):
        path.set_alpha(a)
        own = PeftModel.from_pretrained(load_model(str(tiny_base)), str(two_adapters[name]))
        torch.testing.assert_close(_logits(path.model, ids), _logits(own, ids), rtol=0, atol=1e-5)
    path.set_alpha(0.3)
    dense = load_model(str(tiny_base))
    with torch.no_grad():
        for name, module in dense.named_modules():
            key = name.split("model.", 1)[-1] if name.startswith("model.") else name
            if key in first.modules:
                m1, m2 = first.modules[key], second.modules[key]
                delta = 0.7 * m1.scale * m1.B @ m1.A + 0.3 * m2.scale * m2.B @ m2.A
                module.weight += torch.from_numpy(delta).to(module.weight)
    torch.testing.assert_close(_logits(path.model, ids), _logits(dense, ids), rtol=0, atol=1e-5)
    assert path.rank == 8  # r1 + r2 = 4 + 4


@pytest.mark.heavy
def test_sweep_endpoints_equal_the_adapters_own_evaluation(tiny_base, two_adapters, toy_world, tmp_path):
    kw = dict(template="{question}", max_new_tokens=8, batch_size=4)
    sweep = connectivity.connectivity_sweep(
        str(tiny_base),
        (("sft", two_adapters["sft"]), ("rift", two_adapters["rift"])),
        TEST_SET,
        toy_world,
        tmp_path / "sweep.tsv",
        alphas=3,
        limit=6,
        accuracy_subset=6,
        **kw,
    )
    assert sorted(sweep["alpha"].unique()) == [0.0, 0.5, 1.0]
    for alpha, name in ((0.0, "sft"), (1.0, "rift")):
        own_dir = tmp_path / name
        own_dir.mkdir()
        accuracy_settings = {"max_new_tokens": kw["max_new_tokens"], "batch_size": kw["batch_size"]}
        tables = evaluate(tiny_base, two_adapters[name], {"toy": {**TEST_SET, "limit": 6}}, toy_world, own_dir,
                          accuracy=accuracy_settings)  # fmt: skip
        own = pd.read_parquet(tables["accuracy"])
        at = sweep[sweep["alpha"] == alpha].set_index("metric")["value"]
        assert at["answer_ce"] == pytest.approx(own["answer_ce"].mean(), abs=1e-5)
        assert at["solution_ce"] == pytest.approx(own["solution_ce"].mean(), abs=1e-5)
        assert at["accuracy"] == pytest.approx(own["correct"].mean())
    summary = connectivity.connectivity_summary([tmp_path / "sweep.tsv"], tmp_path / "summary.tsv")
    assert set(summary["metric"]) == {"answer_ce", "solution_ce", "accuracy"}
    assert (summary["barrier"] >= 0).all()
    assert (tmp_path / "curves.tsv").exists()


def test_unparsable_gold_is_counted_not_dropped(tmp_path):
    rows = pd.DataFrame(
        {
            "test_set": "t",
            "id": ["a", "b", "c", "d"],
            "correct": [1, 0, np.nan, 1],
            "gold_ok": [True, True, False, True],
            "extracted": None,
            "completion": "",
            "answer_ce": 1.0,
            "solution_ce": 1.0,
        }
    )
    other = rows.assign(correct=[0, 0, np.nan, 1])
    rows.to_parquet(tmp_path / "m1.parquet")
    other.to_parquet(tmp_path / "m2.parquet")
    accuracy.accuracy_statistics(
        {"m1": tmp_path / "m1.parquet", "m2": tmp_path / "m2.parquet"}, tmp_path, n_boot=100, mid_p=False
    )
    acc = pd.read_csv(tmp_path / "accuracy.tsv", sep="\t").set_index("model")
    assert acc.loc["m1", "n"] == 3 and acc.loc["m1", "n_unparsable_gold"] == 1
    assert acc.loc["m1", "accuracy"] == pytest.approx(2 / 3)
    assert json.loads((tmp_path / "cochran.json").read_text())["t"]["n_unparsable_gold"] == 1


def test_empty_probe_or_test_set_stops(tiny_base, toy_world, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    probes = {"test_set": "t", "n_probe": 4, "pooling": "last", "batch_size": 2}
    with pytest.raises(ProblemSetError, match="empty"):
        evaluate(tiny_base, None, {"t": {"source": str(empty)}}, None, tmp_path, activations=probes)
    with pytest.raises(ProblemSetError, match="empty"):
        evaluate(tiny_base, None, {"t": {"source": str(empty)}}, None, tmp_path, accuracy={"max_new_tokens": 4})
    assert not list(tmp_path.glob("a*.*"))  # nothing written but the empty source itself


def test_activations_shapes_and_cka_of_a_model_with_itself(tiny_base, toy_world, tmp_path):
    for pooling in ("completion_mean", "last", "mean"):
        arrays = activations.extract_activations(
            str(tiny_base), None, TEST_SET, toy_world, n_probe=6, pooling=pooling, template="{question}", batch_size=4
        )
        activations.write_activations(arrays, tmp_path / f"{pooling}.npz")
        with np.load(tmp_path / f"{pooling}.npz") as z:
            assert z["acts"].shape == (2, 6, 32)
    table = cka.cka_tables({"x": tmp_path / "last.npz", "y": tmp_path / "last.npz"}, tmp_path / "cka.tsv")
    assert np.allclose(table["cka"], 1.0)
    shifted = tmp_path / "other.npz"
    with np.load(tmp_path / "last.npz") as z:
        np.savez(shifted, acts=z["acts"], ids=z["ids"][::-1], pooling=z["pooling"])
    with pytest.raises(ValueError, match="other probes"):
        cka.cka_tables({"x": tmp_path / "last.npz", "y": shifted}, tmp_path / "cka2.tsv")


def test_reference_solution_for_the_full_solution_ce(tmp_path):
    from lossgeom.behaviour.evaluation import gold_answer_text, reference_solution

    gsm8k = pd.Series({"question": "q", "answer": "2 + 2 = 4\n#### 4"})
    assert reference_solution(gsm8k) == "2 + 2 = 4\n#### 4" and gold_answer_text(gsm8k["answer"]) == "4"
    bare = pd.Series({"question": "q", "answer": "\\frac{1}{2}", "solution": None})
    assert reference_solution(bare) is None and gold_answer_text(bare["answer"]) == "\\frac{1}{2}"
    path = tmp_path / "p.csv"
    pd.DataFrame({"question": ["a", "b"], "answer": ["1", "2"], "solution": ["1 = 1\n#### 1", None]}).to_csv(
        path, index=False
    )
    from lossgeom.data.problemsets import load_problems

    rows = load_problems({"source": str(path)})
    assert [reference_solution(r) for _, r in rows.iterrows()] == ["1 = 1\n#### 1", None]


def test_answer_ce_scores_the_answer_in_the_format_the_prompt_asks_for(tiny_base, toy_world):
    """paper.yaml's prompt asks for \\boxed{}: the answer cross-entropy scores "\\boxed{<answer>}", the toy's
    "#### <answer>"; the config's model.answer_template overrides both."""
    from lossgeom.behaviour.evaluation import continuation_ce, cross_entropies
    from lossgeom.data.problemsets import load_problems
    from lossgeom.engines.backends import open_engine
    from lossgeom.engines.engine import GenerationSpec

    problems = load_problems({**TEST_SET, "limit": 3}, toy_world)
    finals = [a.rsplit("#### ", 1)[1] for a in problems["answer"]]
    boxed_prompt = "{question}\nPut your final answer within \\boxed{}."
    with open_engine(GenerationSpec(), str(tiny_base), batch_size=4) as engine:

        def score(texts, template):
            return continuation_ce(engine, problems, texts, template=template, add_eos=False)

        got = cross_entropies(engine, problems, template=boxed_prompt)["answer_ce"]
        np.testing.assert_allclose(got, score([f"\\boxed{{{f}}}" for f in finals], boxed_prompt), rtol=1e-6)
        got = cross_entropies(engine, problems, template="{question}")["answer_ce"]
        np.testing.assert_allclose(got, score([f"#### {f}" for f in finals], "{question}"), rtol=1e-6)
        got = cross_entropies(engine, problems, template=boxed_prompt, answer_format="The answer is {answer}.")[
            "answer_ce"
        ]
        np.testing.assert_allclose(got, score([f"The answer is {f}." for f in finals], boxed_prompt), rtol=1e-6)
        assert not np.allclose(got, cross_entropies(engine, problems, template=boxed_prompt)["answer_ce"])
