"""The ``openai`` backend: rollouts from any OpenAI-compatible chat endpoint (DeepSeek's API, a
self-hosted ``vllm serve``), with bounded concurrency, retries and a journal that survives a kill.

- One request per (prompt, sample): ``messages = [{"role": "user", "content": prompt_text(question)}]``
  (the server applies its own chat template), ``n = 1``, ``seed = seed * 1_000_003 + request index``
  (endpoints that ignore seeds are not reproducible, and the source column says which endpoint it was).
- Retries: the ``openai`` client's own (exponential backoff with jitter, ``Retry-After`` honoured, on
  connection errors, timeouts, 408, 409, 429 and 5xx), ``max_retries`` times per request; then the job
  stops with one line naming the endpoint and the status, keeping what came back.
- Concurrency: at most ``max_concurrency`` requests in flight (threads; the client is thread-safe).
- Journal: every completed request is appended to a JSONL file outside the job's output (flushed and
  fsynced), under a header holding the fingerprint of everything that determines the answers (endpoint,
  model, sampling, template, problems). A rerun after a kill or a preemption re-requests only what is
  not in the journal; a journal of another fingerprint is discarded; a torn last line is ignored.
- The API key is read from the environment variable the config names (``api_key_env``); it is never
  written to logs, results, the journal or the config dump, and error messages name the variable only.
- Log-probabilities: requested when ``logprobs`` is on; an endpoint that returns none gives ``None``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Mapping

from tqdm.auto import tqdm

from .engine import Completion, GenerationError, Sampling

log = logging.getLogger(__name__)

JOURNAL_FORMAT = "lossgeom.api_journal.v1"


class Journal:
    """Append-only JSONL of completed requests: a header line ``{"format", "fingerprint"}``, then one
    ``{"key": ..., "completion": {...}}`` line per request."""

    def __init__(self, path: Path | str, fingerprint: str):
        self.path, self.fingerprint = Path(path), fingerprint
        self.done: dict[str, dict] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            lines = self.path.read_text(errors="replace").splitlines()
            header = _loads(lines[0]) if lines else None
            if not header or header.get("format") != JOURNAL_FORMAT or header.get("fingerprint") != fingerprint:
                log.warning("discarding journal %s: it belongs to other requests", self.path)
                self.path.unlink()
            else:
                for line in lines[1:]:
                    rec = _loads(line)
                    if rec and "key" in rec and "completion" in rec:  # a torn last line is skipped
                        self.done[rec["key"]] = rec["completion"]
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_line({"format": JOURNAL_FORMAT, "fingerprint": fingerprint})
        elif self.path.read_bytes()[-1:] not in (b"\n", b""):
            with open(self.path, "a") as f:  # end a torn line, so the next record starts on its own
                f.write("\n")

    def _write_line(self, obj) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(obj, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def append(self, key: str, completion: dict) -> None:
        with self._lock:
            self._write_line({"key": key, "completion": completion})
            self.done[key] = completion

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _loads(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


def fingerprint(options: Mapping, sampling: Sampling, template: str, problems: list[tuple[str, str]]) -> str:
    """What the journal's answers depend on: endpoint, model, sampling, template and the problems."""
    payload = json.dumps({"base_url": options["base_url"], "model": options["model"], "logprobs": options["logprobs"],
                          "sampling": sampling.__dict__, "template": template, "problems": problems}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class ApiTeacher:
    """A chat endpoint as a rollout sampler (see the module docstring); ``options`` is
    ``generation.openai`` of the config (base_url, model, api_key_env, max_concurrency, max_retries,
    timeout_s, logprobs)."""

    def __init__(self, options: Mapping):
        try:
            import openai
        except ImportError:
            raise GenerationError("the openai backend needs the 'openai' package: pip install openai") from None
        self.options = dict(options)
        for key in ("base_url", "model"):
            if not self.options.get(key):
                raise GenerationError(f"generation.openai.{key} is not set")
        env = self.options["api_key_env"]
        key = os.environ.get(env)
        if not key:
            raise GenerationError(f"generation.openai.api_key_env names ${env}, which is not set in the environment")
        self._openai = openai
        self.client = openai.OpenAI(base_url=self.options["base_url"], api_key=key,
                                    max_retries=int(self.options["max_retries"]), timeout=float(self.options["timeout_s"]))

    @property
    def source(self) -> str:
        return f"{self.options['model']} @ {self.options['base_url']}"

    def _request(self, content: str, sampling: Sampling, seed: int) -> dict:
        kw = dict(model=self.options["model"], messages=[{"role": "user", "content": content}], n=1,
                  temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_new_tokens, seed=seed)
        if self.options["logprobs"] and sampling.logprobs:
            kw["logprobs"] = True
        try:
            r = self.client.chat.completions.create(**kw)
        except self._openai.OpenAIError as e:
            raise self._describe(e) from None
        choice = r.choices[0]
        lp = None
        content_lp = getattr(getattr(choice, "logprobs", None), "content", None)
        if content_lp:
            lp = [round(float(t.logprob), 6) for t in content_lp]
        return {"text": choice.message.content or "", "logprobs": lp, "finish_reason": choice.finish_reason or "stop"}

    def _describe(self, e) -> GenerationError:
        """One line for an API failure, naming the endpoint and never the key."""
        o, url = self._openai, self.options["base_url"]
        retries = f"after {self.options['max_retries']} retries"
        if isinstance(e, o.AuthenticationError):
            return GenerationError(f"{url} refused the API key in ${self.options['api_key_env']} (401 Unauthorized)")
        if isinstance(e, o.PermissionDeniedError):
            return GenerationError(f"{url} denied access with the key in ${self.options['api_key_env']} (403)")
        if isinstance(e, o.NotFoundError):
            return GenerationError(f"{url}: model {self.options['model']!r} or the chat endpoint was not found (404)")
        if isinstance(e, o.RateLimitError):
            return GenerationError(f"{url}: still rate-limited (429) {retries}; lower generation.openai.max_concurrency")
        if isinstance(e, o.APITimeoutError):
            return GenerationError(f"{url}: requests timed out ({self.options['timeout_s']} s) {retries}")
        if isinstance(e, o.APIConnectionError):
            return GenerationError(f"cannot reach {url} {retries} (is the server up and the URL right?)")
        if isinstance(e, o.APIStatusError):
            return GenerationError(f"{url} answered {e.status_code} {retries}: {str(e.message)[:200]}")
        return GenerationError(f"{url}: {type(e).__name__}: {str(e)[:200]}")

    def sample(self, contents: list[str], sampling: Sampling, journal: Journal, seed_base: int = 0,
               desc: str = "api rollouts") -> list[list[Completion]]:
        """``sampling.n`` completions of each user message, in order; completed requests are taken from
        ``journal`` and new ones appended to it. Token ids are not returned by chat endpoints (empty)."""
        n = sampling.n
        keys = [f"{i}:{j}" for i in range(len(contents)) for j in range(n)]
        todo = [k for k in keys if k not in journal.done]
        log.info("api teacher %s: %d of %d requests in the journal, %d to send", self.source, len(keys) - len(todo),
                 len(keys), len(todo))
        if todo:
            bar = tqdm(total=len(keys), initial=len(keys) - len(todo), desc=desc, unit="req")

            def run(key: str):
                i, j = map(int, key.split(":"))
                rec = self._request(contents[i], sampling, seed_base * 1_000_003 + i * n + j)
                journal.append(key, rec)
                bar.update(1)

            with ThreadPoolExecutor(max_workers=int(self.options["max_concurrency"])) as pool:
                futures = [pool.submit(run, k) for k in todo]
                done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                failed = [f for f in done if f.exception() is not None]
                if failed:
                    for f in pending:
                        f.cancel()
                    bar.close()
                    raise failed[0].exception()
            bar.close()
        out = []
        for i in range(len(contents)):
            out.append([Completion(journal.done[f"{i}:{j}"]["text"], [], journal.done[f"{i}:{j}"]["logprobs"],
                                   journal.done[f"{i}:{j}"]["finish_reason"]) for j in range(n)])
        return out
