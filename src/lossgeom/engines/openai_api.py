r"""The ``openai`` backend: rollouts from any OpenAI-compatible chat endpoint (DeepSeek's API, a
self-hosted ``vllm serve``), with bounded concurrency, retries and a journal that survives a kill.

- One request per (prompt, sample): ``messages = [{"role": "user", "content": prompt_text(question)}]``
  (the server applies its own chat template), ``n = 1``, ``seed = seed * 1_000_003 + request index``
  (endpoints that ignore seeds are not reproducible, and the source column says which endpoint it was).
- Retries: the ``openai`` client's own (exponential backoff with jitter, ``Retry-After`` honoured, on
  connection errors, timeouts, 408, 409, 429 and 5xx), ``max_retries`` times per request. A request still
  failing then, or answered malformed (no choices, no content, a page that is not JSON), fails for good
  (:class:`RequestFailed`): its reason is journalled, the job goes on, and it is asked once more after all
  the others; a prompt with a request that failed both times is left out whole (a partial group would
  change its group statistics) and counted in a warning. Past ``max_failed_fraction`` of the requests the
  job stops with one line summing up the reasons, keeping what came back. A refusal of the request itself
  (400 naming a setting, 401, 403, 404) stops it at once: every request would meet it.
- Concurrency: at most ``max_concurrency`` requests in flight (threads; the client is thread-safe), the
  provider's published limit; fewer while the endpoint answers 429 (:mod:`.api_limits`: halved on a 429,
  grown back one at a time).
- Journal: every completed request is appended to a JSONL file outside the job's output (flushed and
  fsynced), under a header holding the fingerprint of everything that determines the answers (endpoint,
  model, the request settings ``logprobs``, ``thinking``, ``reasoning_effort`` and ``completion``,
  sampling, template, problems). A rerun after a kill or a preemption re-requests only what is
  not in the journal; a journal of another fingerprint is discarded; a torn last line is ignored.
- The API key is read from the environment variable the config names (``api_key_env``); it is never
  written to logs, results, the journal or the config dump, and error messages name the variable only.
- Log-probabilities: requested only when ``logprobs`` is on (default off: DeepSeek's reasoning models
  refuse the parameter with a 400, which stops the job with one line naming the setting); an endpoint
  that returns none gives ``None``.

Reasoning (thinking) models. The request carries, besides the above, ``max_tokens`` =
``generation.openai.max_tokens``, else ``rollouts.max_new_tokens`` (for a thinking model the budget
covers the reasoning *and* the answer: DeepSeek's docs say so of its reasoning models; with
``completion: answer`` the budget may exceed what the student trains on), ``temperature`` and ``top_p`` (always sent; DeepSeek
documents that thinking mode ignores ``temperature`` without an error), and per setting:

- ``thinking``: ``None`` sends nothing (the endpoint's default; DeepSeek's V4 models think by default);
  ``True``/``False`` send ``"thinking": {"type": "enabled"|"disabled"}``, DeepSeek's documented switch,
  through the client's ``extra_body`` (it is not an OpenAI parameter). An OpenAI endpoint would refuse
  it: leave it ``None`` there.
- ``reasoning_effort``: ``None`` sends nothing; a string is sent as ``"reasoning_effort"`` (OpenAI's
  parameter; DeepSeek reads it too: ``low``/``high``/``max``, other values mapped onto those).

The answer comes in ``message.content``, the reasoning apart from it in ``message.reasoning_content``
(DeepSeek; ``message.reasoning`` on recent vLLM and OpenRouter, read when the former is absent).
A rollout's ``completion`` (``Completion.text``) is built as ``completion`` says: ``"answer"``, the
content only; ``"reasoning+answer"`` (the default: the paper distils the teacher's chains of thought),
``THINK_FORMAT`` = ``"<think>\n{reasoning}\n</think>\n\n{answer}"``, the layout of Qwen3's and
DeepSeek-R1's chat templates (reasoning stripped of surrounding newlines, answer of leading ones),
or the answer alone when there is no reasoning; a reasoning cut by the token limit before any answer
is ``"<think>\n{reasoning}"``, left open (a prefix of what the model would have written, and a
``<think>`` never closed holds no answer for the graders). Each completion's ``meta`` records the
reasoning and the content as returned, the served model (``response.model``), the
``system_fingerprint`` and the token usage (``ROLLOUT_META`` of :mod:`lossgeom.data.rollouts`);
:func:`lossgeom.data.rollouts.served_models` summarises a table's served models for the report.

Finish reasons: ``length`` is ``"length"``; ``stop`` (and ``eos``, ``end_turn``, none given) is
``"stop"``; any other (``content_filter``, DeepSeek's ``insufficient_system_resource``, ...) means
the model did not end the answer itself, so it is ``"length"`` too (training drops it or trains it
without EOS, never teaches an EOS after a cut answer); the endpoint's own word stays in
``meta["endpoint_finish_reason"]`` and the job logs how many there were.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Mapping

from tqdm.auto import tqdm

from .api_journal import Journal
from .api_limits import InFlight
from .engine import Completion, GenerationError, Sampling


class RequestFailed(GenerationError):
    """One request failed for good and says nothing of the others: past the client's retries (5xx, 429,
    timeouts, a dropped connection) or answered malformed (no choices, no content). The job goes on, keeps
    the reason in the journal, asks again at the end, and stops only past ``max_failed_fraction``. A
    refusal of the request itself (400, 401, 403, 404) is a plain :class:`GenerationError`: every request
    would meet it, so the job stops at once."""


log = logging.getLogger(__name__)

COMPLETION_MODES = ("answer", "reasoning+answer")
THINK_FORMAT = "<think>\n{reasoning}\n</think>\n\n{answer}"
# the endpoint's finish reasons for an answer the model ended itself; "length" and anything else
# (content_filter, insufficient_system_resource, ...) is an answer it did not end: "length"
ENDED = frozenset({"stop", "eos", "end_turn", None})
# request settings a 400 may name, with the change that stops the endpoint refusing it
REFUSABLE = {"logprobs": "logprobs: false", "reasoning_effort": "reasoning_effort: null", "thinking": "thinking: null"}


def build_completion(reasoning: str | None, answer: str | None, mode: str, truncated: bool = False) -> str:
    """A rollout's completion text from a reasoning model's two parts, as the module docstring states:
    ``mode == "answer"``: the answer; ``"reasoning+answer"``: ``THINK_FORMAT``, the answer alone when
    there is no reasoning, and an open ``<think>`` block when the limit cut the reasoning (``truncated``
    and no answer)."""
    answer = answer or ""
    if mode == "answer" or not reasoning:
        return answer
    reasoning = reasoning.strip("\n")
    if truncated and not answer.strip():
        return f"<think>\n{reasoning}"
    return THINK_FORMAT.format(reasoning=reasoning, answer=answer.lstrip("\n"))


def finish_reason(raw: str | None) -> str:
    """The table's finish reason for the endpoint's (see the module docstring)."""
    return "stop" if raw in ENDED else "length"


def _reasoning(message) -> str | None:
    """The reasoning a message carries apart from its content: ``reasoning_content`` (DeepSeek), else
    ``reasoning`` (recent vLLM, OpenRouter); ``None`` when there is none."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(message, name, None)
        if isinstance(value, str):
            return value
    return None


def response_meta(response, choice) -> dict:
    """The ``ROLLOUT_META`` fields of one chat completion (``None`` where the endpoint gives nothing)."""
    usage = getattr(response, "usage", None)
    details = getattr(usage, "completion_tokens_details", None)
    return {
        "reasoning": _reasoning(choice.message),
        "content": choice.message.content,
        "served_model": getattr(response, "model", None),
        "system_fingerprint": getattr(response, "system_fingerprint", None),
        "prompt_tokens": getattr(usage, "prompt_tokens", None),
        # DeepSeek's usage.prompt_cache_hit_tokens, else OpenAI's usage.prompt_tokens_details.cached_tokens
        "cached_prompt_tokens": _first_not_none(
            getattr(usage, "prompt_cache_hit_tokens", None),
            getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", None),
        ),
        "completion_tokens": getattr(usage, "completion_tokens", None),
        "reasoning_tokens": getattr(details, "reasoning_tokens", None),
    }


def _first_not_none(*values):
    return next((v for v in values if v is not None), None)


class ApiProgress:
    """What a person reads in the job's log over a run of days: every ``every_s`` seconds (and at the end)
    one line with the requests done of the total, the tokens used (prompt, cached, completion, of which
    reasoning), this run's rate, the time left at it, and the cost at ``prices`` (USD per million tokens:
    ``prompt``, ``cached_prompt``, ``completion``; none given: no cost). Requests from the journal count as
    done (and their tokens and cost as spent), not in the rate. Thread-safe; ``clock`` for tests."""

    def __init__(self, total: int, done: list[Mapping], prices: Mapping | None, every_s: float, clock=None):
        import time

        self.total, self.prices, self.every_s = total, prices, float(every_s)
        self.clock = clock or time.monotonic
        self.start = self.last = self.clock()
        self.earlier, self.now = len(done), 0
        self.tokens = {"prompt": 0, "cached_prompt": 0, "completion": 0, "reasoning": 0}
        self.lock = threading.Lock()
        for rec in done:
            self._count(rec)

    def _count(self, rec: Mapping) -> None:
        meta = rec.get("meta") or {}
        for key in self.tokens:
            self.tokens[key] += int(meta.get(f"{key}_tokens") or 0)

    def add(self, rec: Mapping) -> None:
        """One request completed in this run; logs a progress line when ``every_s`` has passed."""
        with self.lock:
            self.now += 1
            self._count(rec)
            due = self.clock() - self.last >= self.every_s
            if due:
                self.last = self.clock()
                line = self.line()
        if due:
            log.info("%s", line)

    def cost(self) -> float | None:
        """USD spent so far at ``prices`` (a cache hit at ``cached_prompt``, else at ``prompt``)."""
        if not self.prices:
            return None
        t, p = self.tokens, self.prices
        cached = min(t["cached_prompt"], t["prompt"])
        return (
            cached * p.get("cached_prompt", p["prompt"])
            + (t["prompt"] - cached) * p["prompt"]
            + t["completion"] * p["completion"]
        ) / 1e6

    def line(self) -> str:
        done = self.earlier + self.now
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.now / elapsed
        left = (self.total - done) / rate if rate > 0 else float("inf")
        t = self.tokens
        parts = [
            f"api teacher: {done:,} of {self.total:,} requests ({100 * done / max(self.total, 1):.1f}%)",
            f"tokens: {t['prompt']:,} prompt ({t['cached_prompt']:,} cached), {t['completion']:,} completion "
            f"({t['reasoning']:,} reasoning)",
            f"{rate * 60:.1f} requests/min this run",
            f"{_hours(left)} left at that rate",
        ]
        cost = self.cost()
        parts.append(f"${cost:,.2f} at the configured prices" if cost is not None else "cost: no prices configured")
        return "; ".join(parts)


def _hours(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown time"
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


class ApiTeacher:
    """A chat endpoint as a rollout sampler (see the module docstring); ``options`` is
    ``generation.openai`` of the config (``OPENAI_DEFAULTS`` of :mod:`.engine`: base_url, model,
    api_key_env, max_concurrency, max_retries, timeout_s, logprobs, thinking, reasoning_effort,
    completion)."""

    def __init__(self, options: Mapping):
        try:
            import openai
        except ImportError:
            raise GenerationError("the openai backend needs the 'openai' package: pip install openai") from None
        self.options = dict(options)
        _check_options(self.options)
        env = self.options["api_key_env"]
        key = os.environ.get(env)
        if not key:
            raise GenerationError(f"generation.openai.api_key_env names ${env}, which is not set in the environment")
        self._openai = openai
        ceiling = int(self.options["max_concurrency"])
        self.gate = InFlight(ceiling)  # lowered while the endpoint answers 429 (lossgeom.engines.api_limits)
        from openai._constants import DEFAULT_CONNECTION_LIMITS

        # a connection for every request in flight (the client's default pool holds 1,000)
        limits = type(DEFAULT_CONNECTION_LIMITS)(max_connections=max(ceiling, 1000), max_keepalive_connections=ceiling)
        self.client = openai.OpenAI(
            base_url=self.options["base_url"],
            api_key=key,
            max_retries=int(self.options["max_retries"]),
            timeout=float(self.options["timeout_s"]),
            http_client=openai.DefaultHttpxClient(limits=limits, event_hooks={"response": [self.gate.on_response]}),
        )

    @property
    def source(self) -> str:
        return f"{self.options['model']} @ {self.options['base_url']}"

    def request_fields(self, sampling: Sampling, seed: int) -> dict:
        """The keyword arguments of ``chat.completions.create`` besides the messages: the body's fields,
        with ``extra_body`` for what is not an OpenAI parameter (DeepSeek's ``thinking``)."""
        o = self.options
        budget = o["max_tokens"] if o.get("max_tokens") is not None else sampling.max_new_tokens
        kw = dict(
            model=o["model"], n=1, temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=budget, seed=seed
        )
        if o["logprobs"] and sampling.logprobs:
            kw["logprobs"] = True
        if o["reasoning_effort"] is not None:
            kw["reasoning_effort"] = o["reasoning_effort"]
        if o["thinking"] is not None:
            kw["extra_body"] = {"thinking": {"type": "enabled" if o["thinking"] else "disabled"}}
        return kw

    def _request(self, content: str, sampling: Sampling, seed: int) -> dict:
        """One request; its journal record ``{"text", "logprobs", "finish_reason", "meta"}``."""
        kw = self.request_fields(sampling, seed)
        url = self.options["base_url"]
        try:
            r = self.client.chat.completions.create(messages=[{"role": "user", "content": content}], **kw)
        except self._openai.OpenAIError as e:
            raise self._describe(e, kw) from None
        except (ValueError, TypeError, AttributeError) as e:  # a body the client could not read (HTML, bad JSON)
            raise RequestFailed(
                f"{url} answered what is not a chat completion ({type(e).__name__}: {e})"[:300]
            ) from None
        if not hasattr(r, "choices"):  # e.g. an HTML error page served with status 200: the client returns text
            raise RequestFailed(f"{url} answered what is not a chat completion ({type(r).__name__}: {str(r)[:80]!r})")
        choices = r.choices
        if not isinstance(choices, list) or not choices:
            raise RequestFailed(f"{url} answered a chat completion without choices")
        choice = choices[0]
        message = getattr(choice, "message", None)
        if message is None or (getattr(message, "content", None) is None and _reasoning(message) is None):
            raise RequestFailed(
                f"{url} answered no content (finish reason {getattr(choice, 'finish_reason', None)!r}): an empty "
                "answer is not a completion to train on"
            )
        lp = None
        content_lp = getattr(getattr(choice, "logprobs", None), "content", None)
        if content_lp:
            lp = [round(float(t.logprob), 6) for t in content_lp]
        meta = response_meta(r, choice)
        finish = finish_reason(choice.finish_reason)
        text = build_completion(meta["reasoning"], meta["content"], self.options["completion"], finish == "length")
        return {
            "text": text,
            "logprobs": lp,
            "finish_reason": finish,
            "meta": {**meta, "endpoint_finish_reason": choice.finish_reason},
        }

    def _describe(self, e, sent: Mapping) -> GenerationError:
        """One line for an API failure, naming the endpoint and never the key; a 400 that names a
        setting this request sent says which setting to change."""
        o, url = self._openai, self.options["base_url"]
        retries = f"after {self.options['max_retries']} retries"
        message = _endpoint_message(e)
        if isinstance(e, o.BadRequestError):  # never retried by the client: one request, one line
            sent_fields = {*sent, *(sent.get("extra_body") or {})}
            for field_name, change in REFUSABLE.items():
                if field_name in sent_fields and field_name in message:
                    return GenerationError(
                        f"{url} refused `{field_name}` for model {self.options['model']!r} (400: "
                        f"{message[:160]}); set generation.openai.{change}"
                    )
            return GenerationError(f"{url} answered 400 Bad Request: {message[:200]}")
        if isinstance(e, o.AuthenticationError):
            return GenerationError(f"{url} refused the API key in ${self.options['api_key_env']} (401 Unauthorized)")
        if isinstance(e, o.PermissionDeniedError):
            return GenerationError(f"{url} denied access with the key in ${self.options['api_key_env']} (403)")
        if isinstance(e, o.NotFoundError):
            return GenerationError(f"{url}: model {self.options['model']!r} or the chat endpoint was not found (404)")
        # below: one request's failure, past the client's retries; the job goes on (RequestFailed)
        if isinstance(e, o.RateLimitError):
            return RequestFailed(f"{url}: still rate-limited (429) {retries}; lower generation.openai.max_concurrency")
        if isinstance(e, o.APITimeoutError):
            return RequestFailed(f"{url}: requests timed out ({self.options['timeout_s']} s) {retries}")
        if isinstance(e, o.APIConnectionError):
            return RequestFailed(f"cannot reach {url} {retries} (is the server up and the URL right?)")
        if isinstance(e, o.APIStatusError):
            return RequestFailed(f"{url} answered {e.status_code} {retries}: {message[:200]}")
        return RequestFailed(f"{url}: {type(e).__name__}: {str(e)[:200]}")

    def sample(
        self, contents: list[str], sampling: Sampling, journal: Journal, seed_base: int = 0, desc: str = "api rollouts"
    ) -> list[list[Completion]]:
        """``sampling.n`` completions of each user message, in order; completed requests are taken from
        ``journal`` and new ones appended to it. Token ids are not returned by chat endpoints (empty).
        Long because the requests, their failure accounting and the retry pass share state (failures, stop)."""
        n = sampling.n
        keys = [f"{i}:{j}" for i in range(len(contents)) for j in range(n)]
        todo = [k for k in keys if k not in journal.done]
        log.info(
            "api teacher %s: %d of %d requests in the journal, %d to send",
            self.source,
            len(keys) - len(todo),
            len(keys),
            len(todo),
        )
        seen = [journal.done[k] for k in keys if k in journal.done]
        progress = ApiProgress(len(keys), seen, self.options.get("prices"), self.options.get("progress_every_s", 300.0))
        failed: dict[str, str] = {}  # key -> why it failed for good (the latest try)
        if todo:
            allowed = int(float(self.options.get("max_failed_fraction", 0.0)) * len(keys))
            bar = tqdm(total=len(keys), initial=len(keys) - len(todo), desc=desc, unit="req")
            stop = threading.Event()  # a fatal error, or too many failures: no new request goes out
            lock = threading.Lock()

            def run(key: str):
                if stop.is_set():
                    return
                i, j = map(int, key.split(":"))
                try:
                    with self.gate:
                        rec = self._request(contents[i], sampling, seed_base * 1_000_003 + i * n + j)
                    self.gate.succeeded()
                except RequestFailed as e:
                    journal.fail(key, str(e))
                    with lock:
                        failed[key] = str(e)
                        too_many = len(failed) > allowed
                    if too_many:
                        stop.set()
                        raise GenerationError(_failure_summary(failed, len(keys), allowed, self.options)) from None
                    return
                except BaseException:
                    stop.set()
                    raise
                with lock:
                    failed.pop(key, None)
                journal.append(key, rec)
                bar.update(1)
                progress.add(rec)

            try:  # every request once, then the ones that failed for good once more, at the end
                _run_passes(run, [todo, lambda: sorted(failed, key=keys.index)], int(self.options["max_concurrency"]))
            finally:
                bar.close()
        if failed:
            log.warning(
                "api teacher: %s; the %d prompt(s) they belong to are left out whole",
                _failure_summary(failed, len(keys), None, self.options),
                len({k.split(":")[0] for k in failed}),
            )
        log.info("%s", progress.line())
        records = _whole_groups(journal, len(contents), n)
        _log_unusual_finishes([rec for recs in records for rec in recs])
        return [[_completion(rec) for rec in recs] for recs in records]


def _run_passes(run, passes: list, concurrency: int) -> None:
    """Each pass's keys through ``run`` on ``concurrency`` threads, one pass after the other (a pass is a list
    of keys, or a callable giving one when its turn comes: the failures of the passes before); the first
    error cancels the requests not yet sent and is raised."""
    for keys in passes:
        keys = keys() if callable(keys) else keys
        if not keys:
            continue
        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            futures = [pool.submit(run, k) for k in keys]
            done, pending = wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in done if f.exception() is not None]
            if errors:
                for f in pending:
                    f.cancel()
                raise errors[0]


def _whole_groups(journal: Journal, prompts: int, n: int) -> list[list[dict]]:
    """The journal's records of each prompt's ``n`` requests, in order; ``[]`` for a prompt with a request
    that failed for good: left out whole, since a partial group would change its group statistics
    (offline GRPO's baseline, DPO's pairs), as a dropped truncated row once did."""
    keys = [[f"{i}:{j}" for j in range(n)] for i in range(prompts)]
    return [[journal.done[k] for k in ks] if all(k in journal.done for k in ks) else [] for ks in keys]


def _failure_summary(failed: Mapping[str, str], total: int, allowed: int | None, options: Mapping) -> str:
    """One line on the requests that failed for good: how many of how many, the commonest reasons, and
    (``allowed`` given: the job stops) what the setting allows and what a rerun does."""
    reasons: dict[str, int] = {}
    for why in failed.values():
        reasons[why[:120]] = reasons.get(why[:120], 0) + 1
    common = "; ".join(f"{n} x {why}" for why, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
    head = f"{len(failed)} of {total} requests failed for good ({common})"
    if allowed is None:
        return head
    return (
        f"{head}: more than generation.openai.max_failed_fraction {options.get('max_failed_fraction', 0.0)} allows "
        f"({allowed}); the journal keeps every answer received and each failure's reason, and a rerun asks only "
        "for the rest"
    )


def _endpoint_message(e) -> str:
    """What the endpoint said, without the client's ``"Error code: 400 - "`` prefix, on one line."""
    message = re.sub(r"^Error code: \d+ - ", "", str(getattr(e, "message", e)))
    return " ".join(message.split())


def _completion(rec: Mapping) -> Completion:
    """A journal record as a :class:`Completion` (chat endpoints return no token ids)."""
    return Completion(rec["text"], [], rec["logprobs"], rec["finish_reason"], dict(rec.get("meta") or {}))


def _log_unusual_finishes(records: list[Mapping]) -> None:
    """Say how many answers ended for a reason other than ``stop`` or ``length`` (kept as "length")."""
    counts: dict[str, int] = {}
    for rec in records:
        raw = (rec.get("meta") or {}).get("endpoint_finish_reason")
        if raw not in ENDED and raw != "length":
            counts[str(raw)] = counts.get(str(raw), 0) + 1
    if counts:
        log.warning(
            "api teacher: %s answer(s) ended for another reason than stop or length (%s); kept as "
            "finish_reason 'length' (not ended by the model)",
            sum(counts.values()),
            ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
        )


def _check_options(o: Mapping) -> None:
    """One line naming the generation.openai setting that is missing or of the wrong kind."""
    for key in ("base_url", "model"):
        if not o.get(key):
            raise GenerationError(f"generation.openai.{key} is not set")
    if o.get("completion") not in COMPLETION_MODES:
        raise GenerationError(
            f"generation.openai.completion must be one of {list(COMPLETION_MODES)}, got {o.get('completion')!r}"
        )
    if not (o.get("thinking") is None or isinstance(o.get("thinking"), bool)):  # 0/1 are not settings
        raise GenerationError(f"generation.openai.thinking must be null, true or false, got {o.get('thinking')!r}")
    budget = o.get("max_tokens")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise GenerationError(f"generation.openai.max_tokens must be null or a positive integer, got {budget!r}")
    effort = o.get("reasoning_effort")
    if effort is not None and not (isinstance(effort, str) and effort):
        raise GenerationError(f"generation.openai.reasoning_effort must be null or a string, got {effort!r}")
