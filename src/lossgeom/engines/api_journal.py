"""The API teacher's journal: every answered request (and every request that failed for good, with why) in an
append-only JSONL file that survives a kill, under the fingerprint of everything the answers depend on.
Its reader and writer are :class:`Journal`; :func:`fingerprint` makes the header's key."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Mapping

from .engine import Sampling

log = logging.getLogger(__name__)

JOURNAL_FORMAT = "lossgeom.api_journal.v2"  # v2: records carry meta (reasoning, served model, usage)


class Journal:
    """Append-only JSONL of completed requests: a header line ``{"format", "fingerprint"}``, then one
    ``{"key": ..., "completion": {"text", "logprobs", "finish_reason", "meta"}}`` line per request
    (``meta``: the ``ROLLOUT_META`` fields and ``endpoint_finish_reason``, so a rerun restores them)."""

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

    def fail(self, key: str, reason: str) -> None:
        """Keep why ``key`` failed for good (a ``{"key", "failed"}`` line): read back, it is not done, so a
        rerun asks again; the journal keeps the reason for whoever reads it."""
        with self._lock:
            self._write_line({"key": key, "failed": reason})

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _loads(line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


# the generation.openai settings that shape a request or the record kept of its answer
FINGERPRINTED = ("base_url", "model", "logprobs", "thinking", "reasoning_effort", "completion", "max_tokens")


def fingerprint(options: Mapping, sampling: Sampling, template: str, problems: list[tuple[str, str]]) -> str:
    """What the journal's answers depend on: endpoint, model, the request settings (``FINGERPRINTED``),
    sampling, template and the problems; changing any of them re-requests everything."""
    payload = json.dumps(
        {
            **{k: options.get(k) for k in FINGERPRINTED},
            "sampling": sampling.__dict__,
            "template": template,
            "problems": problems,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
