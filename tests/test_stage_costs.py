"""Tests of lossgeom.stage_costs: each job's device time from the FLOP model, the time limits it sets, and the
rows a source is sized by before it is read."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest

from lossgeom.config import load, with_defaults
from lossgeom.cost_model import model_shape
from lossgeom.methods import MethodSpec
from lossgeom.stage_costs import (
    Work,
    gpu_hours,
    job_work,
    rule_minutes,
    sampling,
    source_rows,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def paper() -> dict:
    return with_defaults(load(ROOT / "config" / "paper.yaml", SCHEMA))


def test_a_measured_throughput_times_an_sft_job_by_its_tokens(paper):
    """With train_tokens_per_second set (measured), an SFT job takes its rows x max_length tokens at that rate,
    whatever the FLOP model says (the bound: every row at max_length)."""
    config = copy.deepcopy(paper)
    config["resources"]["train_tokens_per_second"] = 5000.0
    spec = MethodSpec.from_config(config, "sft")
    tokens = spec.steps * spec.batch_size * spec.grad_accum * spec.max_length
    assert job_work(config, "train", "sft").seconds(config["resources"]) == pytest.approx(tokens / 5000.0, rel=1e-12)
    # DPO: chosen and rejected trained, both also through the reference's forward (cheaper than a training pass)
    dpo = job_work(config, "train", "dpo").seconds(config["resources"])
    assert 2 * tokens / 5000.0 < dpo < 4 * tokens / 5000.0


def test_a_time_limit_is_the_bound_with_its_margin_and_overhead_capped(paper):
    res = paper["resources"]
    for rule, method in (("train", "sft"), ("train", "online_grpo"), ("evaluate", None), ("lmc", None)):
        seconds = job_work(paper, rule, method, bound=True).seconds(res)
        expected = min(res["max_runtime"], math.ceil(seconds / 60 * res["runtime_margin"] + res["runtime_overhead"]))
        assert rule_minutes(paper, rule, method) == expected
        assert job_work(paper, rule, method, bound=False).seconds(res) < seconds
    capped = copy.deepcopy(paper)
    capped["resources"]["max_runtime"] = 60
    assert rule_minutes(capped, "train", "dpo") == 60


def test_decoding_is_bound_by_memory_in_small_batches_and_by_compute_in_large_ones(paper):
    res, shape = paper["resources"], model_shape(paper)
    peak, bw = res["gpu_peak_tflops"] * 1e12, res["gpu_memory_tb_s"] * 1e12 * res["decode_bandwidth_utilisation"]
    one = sampling(shape, 100, 1000, batch=1)
    assert one.seconds(res) == pytest.approx(one.decode_bytes / bw)
    # batch 1: the weights (8 GB in bf16) read once per token, ~4 ms a token on an H100 at 60% of its bandwidth
    assert 3e-3 < one.seconds(res) / 1000 < 5e-3
    huge = Work(decode=one.decode, decode_bytes=one.decode_bytes / 1e4)
    assert huge.seconds(res) == pytest.approx(one.decode / (peak * res["prefill_utilisation"]))


def test_online_grpo_pays_for_its_sampling(paper):
    res = paper["resources"]
    online = job_work(paper, "train", "online_grpo")
    assert online.decode > 0 and online.decode_bytes > 0
    assert job_work(paper, "train", "sft").decode == 0
    spec = MethodSpec.from_config(paper, "online_grpo")
    # a step's 32 completions of up to 4,096 tokens, decoded together: ~4,096 steps of reading the weights
    per_step = online.decode_bytes / spec.steps
    weights = 2 * model_shape(paper).linear_params
    assert per_step > 4000 * weights
    assert online.seconds(res) > Work(train=online.train, train_token_flops=online.train_token_flops).seconds(res)


def test_rows_are_read_from_the_limit_the_toy_a_local_file_or_the_known_table(paper, tmp_path):
    toy = with_defaults(load(ROOT / "config" / "config.yaml", SCHEMA))
    assert source_rows({"source": "toy", "split": "test"}, toy) == (toy["toy"]["n_test"], True)
    assert source_rows({"source": "toy", "split": "train", "limit": 256}, toy) == (256, True)
    jsonl = tmp_path / "aime.jsonl"
    jsonl.write_text("".join(json.dumps({"problem": f"q{i}", "answer": i}) + "\n" for i in range(30)))
    assert source_rows({"source": str(jsonl), "split": "test"}, paper) == (30, True)
    assert source_rows({"source": str(jsonl), "split": "test", "limit": 10}, paper) == (10, True)
    assert source_rows({"source": "openai/gsm8k", "split": "test"}, paper) == (1319, True)
    assumed = paper["resources"]["test_set_rows"]
    assert source_rows({"source": "someone/unknown", "split": "test"}, paper) == (assumed, False)


def test_the_gpu_hour_table_totals_its_stages_and_an_api_teacher_costs_no_gpu(paper):
    rows = gpu_hours(paper)
    *stages, total = rows
    assert total["stage"] == "all"
    for key in ("expected_gpu_h", "bound_gpu_h", "jobs"):
        assert total[key] == pytest.approx(sum(r[key] for r in stages))
    assert stages[0]["stage"] == "rollouts (API teacher)" and stages[0]["bound_gpu_h"] == 0
    trains = [r for r in stages if r["stage"].startswith("train ")]
    assert [r["stage"][6:] for r in trains] == list(paper["methods"])
    assert all(0 < r["expected_gpu_h"] < r["bound_gpu_h"] for r in stages[1:])


def test_the_documented_gpu_hour_table_is_the_cost_model_s(paper):
    """docs/CLUSTER.md's table under "GPU-hours" is what `lossgeom cost --configfile config/paper.yaml` prints."""
    from lossgeom.stage_costs import gpu_hours_markdown

    cluster = (ROOT / "docs" / "CLUSTER.md").read_text()
    assert gpu_hours_markdown(paper) in cluster


def test_lossgeom_cost_prints_the_table_and_refuses_a_bad_config_in_one_line(paper, tmp_path, capsys):
    from lossgeom.cli import main
    from lossgeom.stage_costs import gpu_hours_markdown

    assert main(["cost", "--configfile", str(ROOT / "config" / "paper.yaml")]) == 0
    assert capsys.readouterr().out == gpu_hours_markdown(paper)
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "config" / "paper.yaml").read_text() + "\nresources:\n  gpu_peak_tflops: -3\n")
    assert main(["cost", "--configfile", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gpu_peak_tflops" in err[0], err


def test_the_table_names_the_sources_whose_rows_it_assumed(paper):
    from lossgeom.stage_costs import gpu_hours_markdown

    assert "ASSUMED (" not in gpu_hours_markdown(paper)  # every paper source is counted or known
    config = copy.deepcopy(paper)
    config["test_sets"]["gsm8k"] = {**config["test_sets"]["gsm8k"], "source": "someone/unknown"}
    assert "Rows ASSUMED (1,500 each; give a `limit`): someone/unknown." in gpu_hours_markdown(config)
