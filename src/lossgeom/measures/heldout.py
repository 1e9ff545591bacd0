"""Forgetting: each model's cross-entropy on held-out text the study never trains on (measured when
``forgetting.source`` is set). Its statistics (each adapter minus the base, and whether forgetting tracks the
KL to the base and the delta's norm) are the samples measure's (:mod:`.samples`), which read these tables.

Per model (``results/heldout/{model}.parquet``: id, ce (nats/token), n_tokens):
:func:`lossgeom.behaviour.heldout.heldout_ce` on :func:`~lossgeom.behaviour.heldout.load_heldout`'s items.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..settings import POSITIVE_INT, Settings, setting
from .base import Measure, ModelJob

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ForgettingSettings(Settings):
    """``forgetting``: cross-entropy on held-out text the study never trains on, each model minus the base,
    per item (measured in each model's evaluation job; lossgeom.behaviour.heldout)."""

    source: str | None = setting(
        None,
        {"type": ["string", "null"]},
        '"toy" (a held-out split of the toy world in `style`), a local .txt (paragraphs) / .jsonl / .json / '
        ".parquet / .csv file, a saved dataset directory, or a Hugging Face dataset name; null: not measured",
    )
    subset: str | None = setting(
        None, {"type": ["string", "null"]}, "the dataset's configuration (e.g. wikitext-2-raw-v1)"
    )
    split: str | None = setting(
        None, {"type": ["string", "null"]}, "the split read (null: heldout for the toy, else test)"
    )
    text_field: str = setting("text", {"type": "string"}, "the text column (scored)")
    prompt_field: str | None = setting(
        None,
        {"type": ["string", "null"]},
        "a prompt column: the text is then scored after the chat-formatted prompt, as a completion; null: plain text",
    )
    style: str = setting(
        "direct", {"enum": ["terse", "verbose", "direct"]}, "toy: the solution style of the held-out text"
    )
    min_chars: int = setting(1, POSITIVE_INT, "shorter texts (headings, blank lines) are skipped")
    limit: int = setting(200, POSITIVE_INT, "the first items kept")
    max_length: int = setting(512, {"type": "integer", "minimum": 2}, "tokens per item scored (longer are cut)")


class Heldout(Measure):
    name = "heldout"
    section = "forgetting"
    Settings = ForgettingSettings
    output = "heldout/{model}.parquet"
    order = 30

    def enabled(self, settings):
        return settings["source"] is not None

    def sources(self, settings, test_sets):
        return [{"source": "toy"}] if settings["source"] == "toy" else []

    def input_files(self, settings):
        source = settings["source"]
        return [source] if source not in (None, "toy") and Path(source).exists() else []

    def prepare(self, job: ModelJob):
        from ..behaviour.heldout import load_heldout

        return load_heldout(job.settings[self.name], job.toy_dir)

    def measure(self, job: ModelJob, engine, prepared):
        from ..behaviour.heldout import heldout_ce
        from ..engines.engine import AdapterDir

        adapter = AdapterDir(Path(job.adapter)) if job.adapter is not None else None
        max_length = job.settings[self.name]["max_length"]
        table = heldout_ce(engine, prepared, template=job.template, max_length=max_length, adapter=adapter)
        log.info("%s: held-out cross-entropy %.4f nats/token over %d items", job.name, table["ce"].mean(), len(table))
        return table


MEASURE = Heldout()
