"""The openai backend against a scripted OpenAI-compatible server on 127.0.0.1: answers, retries on
429/5xx, one-line errors for 401 / unreachable / missing key, the journal across a failed run, and
the API key never written anywhere. (tests/test_generation_vllm.py runs it against a real vllm serve.)"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from lossgeom.generation.engine import GenerationError, GenerationSpec, Sampling
from lossgeom.generation.openai_api import ApiTeacher, Journal, fingerprint
from lossgeom.generation.sampling import sample_rollouts

KEY = "sk-test-DO-NOT-LEAK-4f9a"
PROBLEMS = pd.DataFrame({"id": ["p0", "p1", "p2"], "question": ["1 + 1?", "2 + 5?", "3 * 3?"],
                         "answer": ["2", "7", "9"]})


class Script:
    """What the server does: a queue of statuses to answer before succeeding, per request count."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.plan: list[int] = []  # statuses for the next requests (then 200)
        self.fail_after: int | None = None  # answer 500 to every request after this many successes
        self.logprobs = True
        self.ok = 0


def make_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status = script.plan.pop(0) if script.plan else 200
                if script.fail_after is not None and script.ok >= script.fail_after:
                    status = 500
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    status = 401
                if status == 200:
                    script.ok += 1
            if status != 200:
                data = json.dumps({"error": {"message": f"scripted {status}", "type": "x", "code": status}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0.05")
                self.end_headers()
                self.wfile.write(data)
                return
            question = body["messages"][0]["content"]
            answer = {"1 + 1?": "2", "2 + 5?": "7", "3 * 3?": "8"}[question]  # the last one is wrong
            text = f"work\n#### {answer}"
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            if script.logprobs and body.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": t, "logprob": -0.25, "bytes": None, "top_logprobs": []}
                                                  for t in ("work", "\n", "####", " ", answer)]}
            data = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [choice],
                               "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def server():
    script = Script()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(script))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    script.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield script
    httpd.shutdown()
    httpd.server_close()


def options(url, **kw):
    spec = GenerationSpec.from_dict({"backend": "openai", "openai": {"base_url": url, "model": "teacher",
                                                                     "api_key_env": "LOSSGEOM_TEST_KEY",
                                                                     "max_retries": 3, "timeout_s": 10, **kw}})
    return spec.openai


SAMPLING = Sampling(max_new_tokens=16, n=2, temperature=1.0, seed=5, logprobs=True)


def run(url, journal_path, **kw):
    teacher = ApiTeacher(options(url, **kw))
    journal = Journal(journal_path, fingerprint(teacher.options, SAMPLING, "{question}",
                                                list(zip(PROBLEMS["id"], PROBLEMS["question"]))))
    return sample_rollouts(teacher, PROBLEMS, k=2, temperature=1.0, max_new_tokens=16, grader="exact", seed=5,
                           journal=journal, source=teacher.source), journal


def test_rollouts_from_an_endpoint(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    df, _ = run(server.url, tmp_path / "j.jsonl")
    assert len(df) == 6 and df["sample_index"].tolist() == [0, 1] * 3
    assert df["reward"].tolist() == [1, 1, 1, 1, 0, 0]  # graded by the project's grader
    assert all(lp == [-0.25] * 5 for lp in df["logprobs"])
    assert all(len(ids) == 0 for ids in df["completion_ids"])  # chat endpoints return no token ids
    bodies = [r["body"] for r in server.requests]
    assert len(bodies) == 6 and all(b["n"] == 1 and b["temperature"] == 1.0 and b["logprobs"] for b in bodies)
    # one seed per request: seed * 1_000_003 + prompt index * k + sample index (requests run concurrently)
    sent = sorted((b["seed"] - 5 * 1_000_003, b["messages"]) for b in bodies)
    assert sent == [(i, [{"role": "user", "content": q}]) for i, q in enumerate(np.repeat(PROBLEMS["question"], 2))]


def test_retries_429_and_5xx_then_succeeds(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.plan = [429, 503, 500]
    df, _ = run(server.url, tmp_path / "j.jsonl", max_concurrency=1)
    assert len(df) == 6 and len(server.requests) == 6 + 3


def test_gives_up_after_max_retries_with_one_line(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.plan = [500] * 10
    with pytest.raises(GenerationError) as info:
        run(server.url, tmp_path / "j.jsonl", max_concurrency=1, max_retries=2)
    msg = str(info.value)
    assert "500" in msg and "after 2 retries" in msg and "\n" not in msg and KEY not in msg


def test_401_names_the_variable_not_the_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", "sk-wrong-key")
    with pytest.raises(GenerationError, match=r"refused the API key in \$LOSSGEOM_TEST_KEY \(401") as info:
        run(server.url, tmp_path / "j.jsonl")
    assert "sk-wrong-key" not in str(info.value)


def test_unreachable_endpoint(tmp_path, monkeypatch):
    import socket

    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GenerationError, match=f"cannot reach http://127.0.0.1:{port}/v1 after 1 retries"):
        run(f"http://127.0.0.1:{port}/v1", tmp_path / "j.jsonl", max_retries=1)


def test_missing_key_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("LOSSGEOM_TEST_KEY", raising=False)
    with pytest.raises(GenerationError, match=r"\$LOSSGEOM_TEST_KEY, which is not set"):
        ApiTeacher(options("http://127.0.0.1:9/v1"))


def test_a_rerun_requests_only_what_the_journal_lacks(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.fail_after = 4  # the endpoint breaks after four answers
    with pytest.raises(GenerationError):
        run(server.url, tmp_path / "j.jsonl", max_concurrency=1, max_retries=0)
    journal_lines = (tmp_path / "j.jsonl").read_text().splitlines()
    assert len(journal_lines) == 1 + 4  # header + the four answers that came back
    with open(tmp_path / "j.jsonl", "a") as f:
        f.write('{"key": "2:1", "compl')  # a torn line, as a kill mid-write leaves it
    server.fail_after, server.requests = None, []
    df, journal = run(server.url, tmp_path / "j.jsonl", max_concurrency=1)
    assert len(server.requests) == 2  # only the two missing requests went out
    sent = {(r["body"]["messages"][0]["content"], r["body"]["seed"]) for r in server.requests}
    assert sent == {("3 * 3?", 5 * 1_000_003 + 4), ("3 * 3?", 5 * 1_000_003 + 5)}
    assert len(df) == 6 and df["reward"].tolist() == [1, 1, 1, 1, 0, 0]
    assert len(journal.done) == 6


def test_a_journal_of_other_requests_is_discarded(tmp_path):
    path = tmp_path / "j.jsonl"
    j = Journal(path, "aaaa")
    j.append("0:0", {"text": "x", "logprobs": None, "finish_reason": "stop"})
    assert Journal(path, "aaaa").done.keys() == {"0:0"}
    assert Journal(path, "bbbb").done == {}


def test_endpoint_without_logprobs_gives_null_column(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.logprobs = False
    df, _ = run(server.url, tmp_path / "j.jsonl")
    assert df["logprobs"].isna().all()
    df.to_parquet(tmp_path / "r.parquet")
    assert pd.read_parquet(tmp_path / "r.parquet")["logprobs"].isna().all()


def test_cli_writes_the_key_nowhere(server, tmp_path, monkeypatch, capsys, caplog):
    import logging

    from lossgeom.cli import main

    caplog.set_level(logging.DEBUG)  # every logger, the openai client's and httpx's included
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    problems = tmp_path / "p.jsonl"
    problems.write_text("".join(json.dumps({"id": i, "question": q, "answer": a}) + "\n"
                                for i, q, a in PROBLEMS.itertuples(index=False)))
    gen = {"backend": "openai", "openai": {"base_url": server.url, "model": "teacher", "api_key_env": "LOSSGEOM_TEST_KEY"}}
    out, journal = tmp_path / "out" / "rollouts.parquet", tmp_path / "journals" / "rollouts.jsonl"
    rc = main(["-v", "rollouts", "--model", "unused", "--problems", json.dumps({"source": str(problems)}),
               "--spec", json.dumps({"k": 2, "temperature": 1.0, "max_new_tokens": 16, "seed": 5}),
               "--generation", json.dumps(gen), "--journal", str(journal), "--out", str(out)])
    assert rc == 0
    assert len(pd.read_parquet(out)) == 6 and not journal.exists()  # the journal goes once the table is written
    captured = capsys.readouterr()
    assert "teacher @ " in caplog.text  # the log was captured
    for text in (captured.out, captured.err, caplog.text, out.read_bytes().decode("latin-1")):
        assert KEY not in text
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)  # it did reach the server
