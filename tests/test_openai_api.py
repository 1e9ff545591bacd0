"""The openai backend against a scripted OpenAI-compatible server on 127.0.0.1: answers, retries on
429/5xx, one-line errors for 401 / unreachable / missing key / a refused setting, the journal across a
failed run, the API key never written anywhere, and reasoning (thinking) models: responses shaped as
DeepSeek's and OpenAI's documented chat completions (``reasoning_content``, ``system_fingerprint``,
``usage.completion_tokens_details.reasoning_tokens``, a served model other than the requested one),
the request fields each setting sends, and the meta recorded per rollout.
(tests/test_vllm_engine.py runs it against a real vllm serve.)"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lossgeom.data.rollouts import ROLLOUT_META, served_models
from lossgeom.engines.api_journal import Journal, fingerprint
from lossgeom.engines.engine import OPENAI_DEFAULTS, GenerationError, GenerationSpec, Sampling
from lossgeom.engines.openai_api import ApiTeacher, build_completion, finish_reason, response_meta
from lossgeom.generation.sampling import sample_rollouts

KEY = "sk-test-DO-NOT-LEAK-4f9a"
PROBLEMS = pd.DataFrame(
    {"id": ["p0", "p1", "p2"], "question": ["1 + 1?", "2 + 5?", "3 * 3?"], "answer": ["2", "7", "9"]}
)


ANSWERS = {"1 + 1?": "2", "2 + 5?": "7", "3 * 3?": "8"}  # the last one is wrong
REASONING = "\nThe user asks a sum. Adding: the total is what we need.\n"  # as DeepSeek returns it, newlines around


class Script:
    """What the server does: a queue of statuses to answer before succeeding, per request count, and the
    shape of its answers.

    ``style``: ``"plain"`` (a minimal OpenAI-compatible answer, as a small server gives), ``"openai"``
    (OpenAI's documented chat completion: ``refusal``, ``annotations``, ``service_tier``,
    ``system_fingerprint``, usage details) or ``"deepseek"`` (DeepSeek's: ``reasoning_content`` beside
    ``content``, ``system_fingerprint``, ``prompt_cache_*`` and ``completion_tokens_details.reasoning_tokens``).
    """

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.plan: list[int] = []  # statuses for the next requests (then 200)
        self.fail_after: int | None = None  # answer 500 to every request after this many successes
        self.logprobs = True
        self.ok = 0
        self.style = "plain"
        self.served_model: str | None = None  # None: echo the requested model
        self.reasoning: str | None = REASONING  # deepseek style only
        self.reasoning_field = "reasoning_content"  # "reasoning": recent vLLM's name
        self.content: str | None = None  # None: "work\n#### <answer>"
        self.finish_reason = "stop"
        self.refuse: str | None = None  # answer 400 to a request whose body has this field
        self.broken: dict[int, str] = {}  # seed -> "null" (content null), "no_choices" or "html": malformed 200s
        self.cap: int | None = None  # answer 429 while this many are being answered (DeepSeek's concurrency cap)
        self.delay_s = 0.0  # each answer takes this long
        self.in_flight = self.peak = self.refused = 0

    def response(self, body: dict) -> dict:
        question = body["messages"][0]["content"]
        answer = ANSWERS[question]
        text = f"work\n#### {answer}" if self.content is None else self.content
        message = {"role": "assistant", "content": text}
        model = self.served_model or body["model"]
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        extra = {}
        if self.style == "openai":
            message.update(refusal=None, annotations=[])
            usage = {
                "prompt_tokens": 19,
                "completion_tokens": 10,
                "total_tokens": 29,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            }
            extra = {"service_tier": "default", "system_fingerprint": "fp_44709d6fcb"}
        elif self.style == "deepseek":
            if self.reasoning is not None:
                message[self.reasoning_field] = self.reasoning
            usage = {
                "prompt_tokens": 12,
                "completion_tokens": 40,
                "total_tokens": 52,
                "prompt_tokens_details": {"cached_tokens": 0},  # DeepSeek's own fields below are the ones it fills
                "completion_tokens_details": {"reasoning_tokens": 30},
                "prompt_cache_hit_tokens": 8,
                "prompt_cache_miss_tokens": 4,
            }
            extra = {"system_fingerprint": "fp_8802369eaa_prod0623"}
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}
        if self.logprobs and body.get("logprobs"):
            choice["logprobs"] = {
                "content": [
                    {"token": t, "logprob": -0.25, "bytes": None, "top_logprobs": []}
                    for t in ("work", "\n", "####", " ", answer)
                ]
            }
        return {
            "id": "930c60df-bf64-41c9-a88e-3ec75f81e00e",
            "object": "chat.completion",
            "created": 1760000000,
            "model": model,
            "choices": [choice],
            "usage": usage,
            **extra,
        }


def make_handler(script: Script):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, status: int, obj: dict):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if status == 429:
                self.send_header("Retry-After", "0.05")
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            broken = script.broken.get(body.get("seed"))
            if broken is not None:
                with script.lock:
                    script.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if broken == "html":
                data = b"<html><body>502 Bad Gateway</body></html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if broken is not None:
                out = script.response(body)
                if broken == "null":
                    out["choices"][0]["message"]["content"] = None
                else:
                    out["choices"] = []
                self._send(200, out)
                return
            with script.lock:
                script.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status = script.plan.pop(0) if script.plan else 200
                if script.fail_after is not None and script.ok >= script.fail_after:
                    status = 500
                if script.refuse is not None and script.refuse in body:
                    status = 400
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    status = 401
                if status == 200 and script.cap is not None and script.in_flight >= script.cap:
                    status = 429
                    script.refused += 1
                if status == 200:
                    script.ok += 1
                    script.in_flight += 1
                    script.peak = max(script.peak, script.in_flight)
            if status == 200 and script.delay_s:
                time.sleep(script.delay_s)
            if status == 400:  # OpenAI's error body for a parameter a model does not take
                self._send(
                    400,
                    {
                        "error": {
                            "message": f"Unsupported parameter: '{script.refuse}' is not supported with this model.",
                            "type": "invalid_request_error",
                            "param": script.refuse,
                            "code": "unsupported_parameter",
                        }
                    },
                )
            elif status != 200:
                self._send(status, {"error": {"message": f"scripted {status}", "type": "x", "code": status}})
            else:
                self._send(200, script.response(body))
                with script.lock:
                    script.in_flight -= 1

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
    spec = GenerationSpec.from_dict(
        {
            "backend": "openai",
            "openai": {
                "base_url": url,
                "model": "teacher",
                "api_key_env": "LOSSGEOM_TEST_KEY",
                "max_retries": 3,
                "timeout_s": 10,
                **kw,
            },
        }
    )
    return spec.openai


SAMPLING = Sampling(max_new_tokens=16, n=2, temperature=1.0, seed=5, logprobs=True)


def run(url, journal_path, **kw):
    teacher = ApiTeacher(options(url, **kw))
    journal = Journal(
        journal_path,
        fingerprint(teacher.options, SAMPLING, "{question}", list(zip(PROBLEMS["id"], PROBLEMS["question"]))),
    )
    return sample_rollouts(
        teacher,
        PROBLEMS,
        k=2,
        temperature=1.0,
        max_new_tokens=16,
        grader="exact",
        seed=5,
        journal=journal,
        source=teacher.source,
    ), journal


@pytest.mark.heavy
def test_rollouts_from_an_endpoint(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    df, _ = run(server.url, tmp_path / "j.jsonl", logprobs=True)  # off by default: asked for here
    assert len(df) == 6 and df["sample_index"].tolist() == [0, 1] * 3
    assert df["reward"].tolist() == [1, 1, 1, 1, 0, 0]  # graded by the project's grader
    assert all(lp == [-0.25] * 5 for lp in df["logprobs"])
    assert all(len(ids) == 0 for ids in df["completion_ids"])  # chat endpoints return no token ids
    bodies = [r["body"] for r in server.requests]
    assert len(bodies) == 6 and all(b["n"] == 1 and b["temperature"] == 1.0 and b["logprobs"] for b in bodies)
    # one seed per request: seed * 1_000_003 + prompt index * k + sample index (requests run concurrently)
    sent = sorted((b["seed"] - 5 * 1_000_003, b["messages"]) for b in bodies)
    assert sent == [(i, [{"role": "user", "content": q}]) for i, q in enumerate(np.repeat(PROBLEMS["question"], 2))]


@pytest.mark.heavy
def test_retries_429_and_5xx_then_succeeds(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.plan = [429, 503, 500]
    df, _ = run(server.url, tmp_path / "j.jsonl", max_concurrency=1)
    assert len(df) == 6 and len(server.requests) == 6 + 3


@pytest.mark.heavy
def test_gives_up_after_max_retries_with_one_line(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.plan = [500] * 10
    with pytest.raises(GenerationError) as info:
        run(server.url, tmp_path / "j.jsonl", max_concurrency=1, max_retries=2)
    msg = str(info.value)
    assert "500" in msg and "after 2 retries" in msg and "\n" not in msg and KEY not in msg


@pytest.mark.heavy
def test_401_names_the_variable_not_the_key(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", "sk-wrong-key")
    with pytest.raises(GenerationError, match=r"refused the API key in \$LOSSGEOM_TEST_KEY \(401") as info:
        run(server.url, tmp_path / "j.jsonl")
    assert "sk-wrong-key" not in str(info.value)


@pytest.mark.heavy
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


@pytest.mark.heavy
def test_a_rerun_requests_only_what_the_journal_lacks(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.fail_after = 4  # the endpoint breaks after four answers
    with pytest.raises(GenerationError):
        run(server.url, tmp_path / "j.jsonl", max_concurrency=1, max_retries=0)
    journal_lines = (tmp_path / "j.jsonl").read_text().splitlines()
    assert len(journal_lines) == 1 + 4 + 1  # header + the four answers that came back + the failure, with why
    assert json.loads(journal_lines[-1]) == {
        "key": "2:0",
        "failed": f"{server.url} answered 500 after 0 retries: scripted 500",
    }
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


@pytest.mark.heavy
def test_endpoint_without_logprobs_gives_null_column(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.logprobs = False
    df, _ = run(server.url, tmp_path / "j.jsonl", logprobs=True)  # asked for, and none came back
    assert df["logprobs"].isna().all()
    df.to_parquet(tmp_path / "r.parquet")
    assert pd.read_parquet(tmp_path / "r.parquet")["logprobs"].isna().all()


@pytest.mark.heavy
def test_cli_writes_the_key_nowhere(server, tmp_path, monkeypatch, capsys, caplog):
    import logging

    from lossgeom.cli import main

    caplog.set_level(logging.DEBUG)  # every logger, the openai client's and httpx's included
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    problems = tmp_path / "p.jsonl"
    problems.write_text(
        "".join(
            json.dumps({"id": i, "question": q, "answer": a}) + "\n" for i, q, a in PROBLEMS.itertuples(index=False)
        )
    )
    gen = {
        "backend": "openai",
        "openai": {"base_url": server.url, "model": "teacher", "api_key_env": "LOSSGEOM_TEST_KEY"},
    }
    out, journal = tmp_path / "out" / "rollouts.parquet", tmp_path / "journals" / "rollouts.jsonl"
    rc = main(
        [
            "-v",
            "rollouts",
            "--model",
            "unused",
            "--problems",
            json.dumps({"source": str(problems)}),
            "--spec",
            json.dumps({"k": 2, "temperature": 1.0, "max_new_tokens": 16, "seed": 5}),
            "--generation",
            json.dumps(gen),
            "--journal",
            str(journal),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert len(pd.read_parquet(out)) == 6 and not journal.exists()  # the journal goes once the table is written
    captured = capsys.readouterr()
    assert "teacher @ " in caplog.text  # the log was captured
    for text in (captured.out, captured.err, caplog.text, out.read_bytes().decode("latin-1")):
        assert KEY not in text
    assert all(r["auth"] == f"Bearer {KEY}" for r in server.requests)  # it did reach the server


# ---- settings ------------------------------------------------------------------------------------

SCHEMA = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


def test_schema_and_defaults_name_the_same_openai_settings():
    from lossgeom.config import load_schema

    props = load_schema(SCHEMA)["properties"]["generation"]["properties"]["openai"]["properties"]
    assert set(props) == set(OPENAI_DEFAULTS) and all(p["description"] for p in props.values())
    assert OPENAI_DEFAULTS["logprobs"] is False and OPENAI_DEFAULTS["thinking"] is None
    assert OPENAI_DEFAULTS["reasoning_effort"] is None and OPENAI_DEFAULTS["completion"] == "reasoning+answer"


@pytest.mark.parametrize(
    "setting, value, named",
    [
        (
            {"completion": "both"},
            "'both'",
            "generation.openai.completion must be one of ['answer', 'reasoning+answer']",
        ),
        ({"thinking": 1}, "1", "generation.openai.thinking must be null, true or false"),
        ({"thinking": "enabled"}, "'enabled'", "generation.openai.thinking must be null, true or false"),
        ({"reasoning_effort": ""}, "''", "generation.openai.reasoning_effort must be null or a string"),
        ({"max_tokens": 0}, "0", "generation.openai.max_tokens must be null or a positive integer"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(setting, value, named, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    with pytest.raises(GenerationError) as info:
        ApiTeacher(options("http://127.0.0.1:9/v1", **setting))
    assert str(info.value) == f"{named}, got {value}"


def sample_direct(url, journal_path, problems=PROBLEMS, sampling=SAMPLING, **kw):
    """ApiTeacher.sample on its own (no grading): the completions, the teacher and the journal."""
    teacher = ApiTeacher(options(url, **kw))
    journal = Journal(
        journal_path,
        fingerprint(teacher.options, sampling, "{question}", list(zip(problems["id"], problems["question"]))),
    )
    return teacher.sample(list(problems["question"]), sampling, journal, seed_base=5), teacher, journal


BASE_BODY = {"model": "teacher", "n": 1, "temperature": 1.0, "top_p": 1.0, "max_tokens": 16}


@pytest.mark.heavy
@pytest.mark.parametrize(
    "settings, fields",
    [
        ({}, {}),  # the defaults send none of the optional fields: no logprobs, thinking, reasoning_effort
        ({"thinking": True}, {"thinking": {"type": "enabled"}}),
        ({"thinking": False}, {"thinking": {"type": "disabled"}}),
        ({"reasoning_effort": "high"}, {"reasoning_effort": "high"}),
        (
            {"thinking": True, "reasoning_effort": "max", "logprobs": True},
            {"thinking": {"type": "enabled"}, "reasoning_effort": "max", "logprobs": True},
        ),
        ({"max_tokens": 32768}, {"max_tokens": 32768}),  # a budget for the reasoning, over rollouts.max_new_tokens
    ],
)
def test_the_request_body_each_setting_sends(server, tmp_path, monkeypatch, settings, fields):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    one = PROBLEMS.iloc[:1]
    sample_direct(server.url, tmp_path / "j.jsonl", problems=one, **settings)
    assert len(server.requests) == 2
    for r in server.requests:
        body = dict(r["body"])
        seed = body.pop("seed")
        assert seed in (5 * 1_000_003, 5 * 1_000_003 + 1)
        assert body == {**BASE_BODY, "messages": [{"role": "user", "content": "1 + 1?"}], **fields}


# ---- reasoning models ----------------------------------------------------------------------------


def deepseek(server, **kw):
    """The server as DeepSeek's endpoint: a thinking model, served under a dated name."""
    server.style, server.served_model = "deepseek", "deepseek-v4-flash-2026-11-01"
    for k, v in kw.items():
        setattr(server, k, v)


@pytest.mark.heavy
@pytest.mark.parametrize("mode", ["reasoning+answer", "answer"])
def test_a_thinking_response_keeps_reasoning_and_answer_apart(server, tmp_path, monkeypatch, mode):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    deepseek(server)
    df, _ = run(server.url, tmp_path / "j.jsonl", completion=mode, thinking=True)
    reasoning = "The user asks a sum. Adding: the total is what we need."
    expected = [
        f"<think>\n{reasoning}\n</think>\n\nwork\n#### {a}" if mode == "reasoning+answer" else f"work\n#### {a}"
        for a in np.repeat(["2", "7", "8"], 2)
    ]
    assert df["completion"].tolist() == expected
    assert (df["reasoning"] == REASONING).all()  # as returned, newlines and all
    assert df["content"].tolist() == [f"work\n#### {a}" for a in np.repeat(["2", "7", "8"], 2)]
    assert (df["served_model"] == "deepseek-v4-flash-2026-11-01").all()
    assert (df["system_fingerprint"] == "fp_8802369eaa_prod0623").all()
    assert df[["prompt_tokens", "completion_tokens", "reasoning_tokens"]].values.tolist() == [[12, 40, 30]] * 6
    assert df["cached_prompt_tokens"].tolist() == [8] * 6  # DeepSeek's prompt_cache_hit_tokens
    assert (df["finish_reason"] == "stop").all()
    assert df["reward"].tolist() == [1, 1, 1, 1, 0, 0]  # the answer is graded, not the reasoning
    assert df["logprobs"].isna().all()  # not asked for (the default)
    assert all("logprobs" not in r["body"] for r in server.requests)


@pytest.mark.heavy
def test_a_reasoning_cut_by_the_limit_is_length_with_the_reasoning_kept(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    deepseek(server, content="", finish_reason="length")  # the budget ran out inside the reasoning
    df, _ = run(server.url, tmp_path / "j.jsonl")
    assert (df["finish_reason"] == "length").all()
    assert (df["reasoning"] == REASONING).all() and (df["content"] == "").all()
    # an open <think> block: a prefix of what the model would have written, with no answer in it
    assert (df["completion"] == "<think>\nThe user asks a sum. Adding: the total is what we need.").all()
    assert (df["reward"] == 0).all()


@pytest.mark.heavy
def test_an_openai_response_records_its_served_model_and_usage(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.style, server.served_model = "openai", "gpt-4o-mini-2024-07-18"
    comps, _, _ = sample_direct(server.url, tmp_path / "j.jsonl", model="gpt-4o-mini")
    c = comps[0][0]
    assert c.text == "work\n#### 2" and c.finish_reason == "stop"  # no reasoning: the answer alone
    assert {m: c.meta[m] for m in ROLLOUT_META} == {
        "reasoning": None,
        "content": "work\n#### 2",
        "served_model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_44709d6fcb",
        "prompt_tokens": 19,
        "cached_prompt_tokens": 0,  # OpenAI's usage.prompt_tokens_details.cached_tokens
        "completion_tokens": 10,
        "reasoning_tokens": 0,
    }


@pytest.mark.heavy
def test_a_plain_response_leaves_what_it_does_not_say_null(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    comps, _, _ = sample_direct(server.url, tmp_path / "j.jsonl")
    meta = comps[0][0].meta
    assert meta["served_model"] == "teacher" and meta["system_fingerprint"] is None
    assert meta["reasoning"] is None and meta["reasoning_tokens"] is None and meta["prompt_tokens"] == 1


@pytest.mark.heavy
def test_recent_vllm_reasoning_field_is_read(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    deepseek(server, reasoning_field="reasoning")  # vLLM renamed reasoning_content to reasoning
    comps, _, _ = sample_direct(server.url, tmp_path / "j.jsonl")
    assert comps[0][0].meta["reasoning"] == REASONING
    assert comps[0][0].text.startswith("<think>\nThe user asks")


@pytest.mark.heavy
@pytest.mark.parametrize("raw", ["content_filter", "insufficient_system_resource"])
def test_an_answer_the_model_did_not_end_is_length_and_says_why(server, tmp_path, monkeypatch, caplog, raw):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    deepseek(server, finish_reason=raw)
    comps, _, _ = sample_direct(server.url, tmp_path / "j.jsonl")
    assert all(c.finish_reason == "length" and c.meta["endpoint_finish_reason"] == raw for cs in comps for c in cs)
    assert f"{raw}: 6" in caplog.text


def test_finish_reasons_and_the_completion_layout():
    assert [finish_reason(r) for r in ("stop", "eos", None, "length", "content_filter", "tool_calls")] == [
        "stop",
        "stop",
        "stop",
        "length",
        "length",
        "length",
    ]
    assert build_completion("\nr\n", "\n\nA", "reasoning+answer") == "<think>\nr\n</think>\n\nA"
    assert build_completion("r", "A", "answer") == "A"
    assert build_completion(None, "A", "reasoning+answer") == build_completion("", "A", "reasoning+answer") == "A"
    assert build_completion("r", None, "reasoning+answer", truncated=True) == "<think>\nr"
    assert build_completion("r", "", "reasoning+answer") == "<think>\nr\n</think>\n\n"  # ended, with no answer
    assert build_completion("{x}", "{y}", "reasoning+answer") == "<think>\n{x}\n</think>\n\n{y}"  # braces kept


def test_response_meta_names_the_rollout_meta_columns():
    from types import SimpleNamespace as NS

    choice = NS(message=NS(content="a"))
    assert list(response_meta(NS(model="m"), choice)) == ROLLOUT_META


# ---- log-probs refused ---------------------------------------------------------------------------


@pytest.mark.heavy
def test_an_endpoint_refusing_logprobs_stops_with_one_line(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    deepseek(server, refuse="logprobs")
    with pytest.raises(GenerationError) as info:
        run(server.url, tmp_path / "j.jsonl", logprobs=True, max_concurrency=1)
    msg = str(info.value)
    assert "\n" not in msg and KEY not in msg
    assert msg.startswith(f"{server.url} refused `logprobs` for model 'teacher' (400: Unsupported parameter")
    assert msg.endswith("; set generation.openai.logprobs: false")
    assert len(server.requests) == 1  # a 400 is not retried
    server.requests = []
    df, _ = run(server.url, tmp_path / "j2.jsonl")  # logprobs off (the default): nothing to refuse
    assert len(df) == 6 and all("logprobs" not in r["body"] for r in server.requests)


@pytest.mark.heavy
def test_an_endpoint_refusing_thinking_names_the_setting(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.refuse = "thinking"  # an OpenAI endpoint does not take DeepSeek's switch
    with pytest.raises(GenerationError, match=r"refused `thinking` .*; set generation.openai.thinking: null$"):
        sample_direct(server.url, tmp_path / "j.jsonl", thinking=False, max_concurrency=1)


@pytest.mark.heavy
def test_another_400_is_one_line_without_retries(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.refuse = "seed"  # a field no setting controls: the message says what the endpoint said
    with pytest.raises(GenerationError) as info:
        sample_direct(server.url, tmp_path / "j.jsonl", max_concurrency=1)
    assert str(info.value) == (
        f"{server.url} answered 400 Bad Request: Unsupported parameter: 'seed' is not supported with this model."
    )
    assert len(server.requests) == 1


# ---- journal -------------------------------------------------------------------------------------


@pytest.mark.heavy
def test_the_journal_restores_the_meta(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    deepseek(server, finish_reason="length", content="")
    first, _, _ = sample_direct(server.url, tmp_path / "j.jsonl", thinking=True)
    lines = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert lines[0]["format"] == "lossgeom.api_journal.v2" and len(lines) == 1 + 6
    assert lines[1]["completion"]["meta"]["served_model"] == "deepseek-v4-flash-2026-11-01"
    server.fail_after, server.requests = 0, []  # the endpoint is gone: everything must come from the journal
    again, _, _ = sample_direct(server.url, tmp_path / "j.jsonl", thinking=True)
    assert server.requests == [] and again == first
    assert again[2][1].meta["reasoning"] == REASONING and again[2][1].finish_reason == "length"


@pytest.mark.parametrize(
    "setting, value",
    [
        ("thinking", True),
        ("thinking", False),
        ("reasoning_effort", "low"),
        ("completion", "answer"),
        ("logprobs", True),
        ("model", "other"),
        ("max_tokens", 32768),
    ],
)
def test_the_fingerprint_changes_with_each_request_setting(setting, value):
    def spec(**kw):
        return GenerationSpec.from_dict({"openai": {"base_url": "http://x/v1", "model": "m", **kw}}).openai

    problems = [("p0", "1 + 1?")]
    base = fingerprint(spec(), SAMPLING, "{question}", problems)
    assert fingerprint(spec(), SAMPLING, "{question}", problems) == base
    assert fingerprint(spec(**{setting: value}), SAMPLING, "{question}", problems) != base
    # settings that do not shape the answers leave it alone
    assert fingerprint(spec(max_concurrency=1, timeout_s=5, max_retries=0), SAMPLING, "{question}", problems) == base


@pytest.mark.heavy
def test_a_changed_setting_re_requests(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    deepseek(server)
    sample_direct(server.url, tmp_path / "j.jsonl", problems=PROBLEMS.iloc[:1])
    server.requests = []
    comps, _, _ = sample_direct(server.url, tmp_path / "j.jsonl", problems=PROBLEMS.iloc[:1], completion="answer")
    assert len(server.requests) == 2 and comps[0][0].text == "work\n#### 2"


# ---- served models -------------------------------------------------------------------------------


def test_served_models_summarises_models_and_fingerprints():
    df = pd.DataFrame(
        {
            "served_model": ["ds-2026-11-01"] * 3 + ["ds-2026-12-01", None],
            "system_fingerprint": ["fp_a", "fp_a", None, "fp_b", None],
        }
    )
    assert served_models(df) == (
        "ds-2026-11-01 (system_fingerprint fp_a): 2 rows; ds-2026-11-01: 1 row; "
        "ds-2026-12-01 (system_fingerprint fp_b): 1 row; not recorded: 1 row"
    )
    assert served_models(pd.DataFrame({"prompt": ["q"]})) == "not recorded"
    big = pd.DataFrame({"served_model": ["m"] * 1234, "system_fingerprint": [float("nan")] * 1234})  # parquet nulls
    assert served_models(big) == "m: 1,234 rows"


class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_progress_lines_count_requests_tokens_rate_time_left_and_cost(caplog):
    """A run of days reads as lines: 2 of 10 requests from the journal, then 3 more in 60 s."""
    from lossgeom.engines.openai_api import ApiProgress

    def rec(prompt=12, cached=8, completion=40, reasoning=30):
        return {
            "meta": {
                "prompt_tokens": prompt,
                "cached_prompt_tokens": cached,
                "completion_tokens": completion,
                "reasoning_tokens": reasoning,
            }
        }

    clock = _Clock()
    prices = {"prompt": 0.30, "cached_prompt": 0.006, "completion": 1.20}  # DeepSeek's peak deepseek-flash, 2026-11
    progress = ApiProgress(10, [rec(), rec()], prices, every_s=30, clock=clock)
    with caplog.at_level("INFO", logger="lossgeom.engines.openai_api"):
        for t in (10, 20, 60):
            clock.t = t
            progress.add(rec())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1  # one line at 60 s (every 30 s), none at 10 and 20
    assert lines[0].startswith("api teacher: 5 of 10 requests (50.0%); tokens: 60 prompt (40 cached), 200 completion")
    assert "(150 reasoning); 3.0 requests/min this run; 2 min left at that rate" in lines[0]
    expected = (40 * 0.006 + 20 * 0.30 + 200 * 1.20) / 1e6
    assert progress.cost() == pytest.approx(expected) and f"${expected:,.2f} at the configured prices" in lines[0]
    assert ApiProgress(1, [], None, 1).line().endswith("cost: no prices configured")


def test_runtime_options_are_not_params_and_reach_the_job():
    """Requests in flight, retries, timeouts and prices change how the rollouts job runs, never what it
    writes: they are left out of its params (a finished API table is never re-requested for them)."""
    from lossgeom.config import generation_runtime, generation_spec

    config = {
        "generation": {
            "backend": "openai",
            "openai": {
                "base_url": "http://x",
                "model": "m",
                "max_concurrency": 64,
                "prices": {"prompt": 1, "completion": 2},
            },
        }
    }
    assert generation_spec(config, "rollouts") == {
        "backend": "openai",
        "openai": {"base_url": "http://x", "model": "m"},
    }
    assert generation_runtime(config, "rollouts") == {"max_concurrency": 64, "prices": {"prompt": 1, "completion": 2}}


# -- a teacher that keeps going: requests that fail for good are journalled, asked again, counted (issue 30) --
SEED0 = 5 * 1_000_003  # the seed of request "0:0" in run(); "i:j" has SEED0 + 2 * i + j


@pytest.mark.heavy
@pytest.mark.parametrize("broken", ["null", "no_choices", "html"])
def test_a_request_that_fails_for_good_leaves_its_prompt_out_whole_and_the_job_goes_on(
    server, tmp_path, monkeypatch, caplog, broken
):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.broken = {SEED0 + 3: broken}  # "1:1": prompt 1's second sample, malformed every time
    df, journal = run(server.url, tmp_path / "j.jsonl", max_concurrency=2, max_retries=0, max_failed_fraction=0.2)
    assert sorted(set(df["prompt_id"])) == ["p0", "p2"] and len(df) == 4  # prompt 1 left out whole
    asked = [r["body"]["seed"] for r in server.requests]
    assert asked.count(SEED0 + 3) == 2  # once, then once more at the end
    failures = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()[1:]]
    failures = [f for f in failures if "failed" in f]
    assert [f["key"] for f in failures] == ["1:1", "1:1"] and all(server.url in f["failed"] for f in failures)
    assert "1 of 6 requests failed for good" in caplog.text and "left out whole" in caplog.text


@pytest.mark.heavy
def test_a_failure_at_first_is_asked_again_at_the_end(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.plan = [503]  # the first request fails past its (zero) retries; the endpoint then recovers
    df, _ = run(server.url, tmp_path / "j.jsonl", max_concurrency=1, max_retries=0, max_failed_fraction=0.2)
    assert len(df) == 6 and len(server.requests) == 7


@pytest.mark.heavy
def test_past_the_allowed_fraction_the_job_stops_with_a_summary(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.broken = {SEED0 + 1: "null", SEED0 + 4: "no_choices"}  # 2 of 6; 0.2 allows 1
    with pytest.raises(GenerationError) as info:
        run(server.url, tmp_path / "j.jsonl", max_concurrency=1, max_retries=0, max_failed_fraction=0.2)
    msg = str(info.value)
    assert "2 of 6 requests failed for good" in msg and "max_failed_fraction 0.2 allows (1)" in msg
    assert "answered no content" in msg and "without choices" in msg and "\n" not in msg


@pytest.mark.heavy
def test_an_html_page_with_status_200_is_named_as_such(server, tmp_path, monkeypatch):
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.broken = {SEED0: "html"}
    with pytest.raises(GenerationError, match="answered what is not a chat completion .str"):
        run(server.url, tmp_path / "j.jsonl", max_concurrency=1, max_retries=0)


@pytest.mark.heavy
def test_a_concurrency_capped_endpoint_gets_fewer_requests_in_flight(server, tmp_path, monkeypatch):
    """An endpoint that answers 429 past 4 concurrent requests (DeepSeek's way): the teacher, allowed 16, halves
    its requests in flight on the 429s and every request is answered (before, 16 went on hitting the cap)."""
    monkeypatch.setenv("LOSSGEOM_TEST_KEY", KEY)
    server.cap, server.delay_s = 4, 0.05
    teacher = ApiTeacher(options(server.url, max_concurrency=16, max_retries=10))
    contents = [q for q in ANSWERS for _ in range(10)]
    journal = Journal(tmp_path / "j.jsonl", "capped")
    out = teacher.sample(contents, Sampling(max_new_tokens=16, n=2, temperature=1.0, seed=5), journal)
    assert [len(c) for c in out] == [2] * len(contents)
    assert server.refused > 0 and teacher.gate.cuts >= 2 and teacher.gate.limit <= 8  # 16 -> 8 -> 4 at least
    assert server.peak <= 4
