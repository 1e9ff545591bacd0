"""The toy world's data: problem splits and the tokenizer, written to one directory.

Layout of ``out_dir`` (the models are trained into ``base/`` and ``teacher/`` beside it by
``lossgeom toy-model``):

    problems/{train,test,heldout}.jsonl   id, question, solution, answer, verbose_solution, terse, verbose, direct

``heldout`` is drawn after ``test`` from the same stream (so adding it changed neither): problems no
model is trained or evaluated on, whose solutions are the toy's forgetting text (``forgetting.source:
toy``). Every split's rows also hold the solution in each style (fields ``terse``, ``verbose``,
``direct``), read as any text file's fields.
    tokenizer/                                  Hugging Face tokenizer files
"""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

from ..data.prompting import prompt_string
from ..errors import InputError
from ..fsutil import atomic_dir
from ..settings import ToySettings
from .problems import STYLES, generate_splits
from .tokenizer import build_tokenizer

PROBLEM_LIMIT_KEYS = ("min_steps", "max_steps", "max_start", "max_operand", "max_double")


def build_world(spec: dict, out_dir: Path) -> dict:
    """Generate the splits and train the tokenizer from the ``toy`` config section (missing keys at
    :class:`~lossgeom.settings.ToySettings`' defaults); returns counts."""
    spec = ToySettings.filled(spec)
    limits = {k: spec[k] for k in PROBLEM_LIMIT_KEYS}
    train, rest = generate_splits(spec["seed"], spec["n_train"], spec["n_test"] + spec["n_heldout"], **limits)
    test = rest[: spec["n_test"]]
    heldout = [replace(p, id=f"toy-heldout-{i}") for i, p in enumerate(rest[spec["n_test"] :])]
    with atomic_dir(out_dir) as tmp:
        (tmp / "problems").mkdir()
        for name, split in (("train", train), ("test", test), ("heldout", heldout)):
            with open(tmp / "problems" / f"{name}.jsonl", "w") as f:
                for p in split:
                    # each style's text too, read as a text file's fields (forgetting.source: toy)
                    styles = {style: p.solution_in(style) for style in STYLES}
                    f.write(json.dumps({**asdict(p), **styles}) + "\n")
        # The BPE is learned from chat-formatted documents so the template's markers merge as in use.
        # Both solution styles are in the corpus: one tokenizer serves the student and the teacher.
        bootstrap = build_tokenizer([p.question + "\n" + p.solution for p in train], spec["tokenizer_vocab"])
        cues = [m["cue"] for m in spec["models"].values() if m.get("cue")]
        corpus = [
            prompt_string(bootstrap, p.question) + s + "<|im_end|>"
            for p in train
            for s in (p.solution, p.verbose_solution)
        ] + cues
        build_tokenizer(corpus, spec["tokenizer_vocab"]).save_pretrained(str(tmp / "tokenizer"))
    return {"train": len(train), "test": len(test), "heldout": len(heldout)}


def read_split(world_dir: Path, split: str):
    """The toy problems of ``split`` as ``Problem`` objects; a damaged file (not UTF-8, a line that is not a
    problem's JSON) stops with one :class:`~lossgeom.errors.InputError` line naming it and the line."""
    from dataclasses import fields

    from .problems import Problem

    path = Path(world_dir) / "problems" / f"{split}.jsonl"
    names = {f.name for f in fields(Problem)}  # the held-out rows' style texts are not Problem fields
    what = "not a problems file of 'lossgeom toy-world'"
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: {what} (not UTF-8 text: {e.reason} at byte {e.start})") from None
    problems = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:  # a torn or edited file: one line naming it, not the JSON parser's or the dataclass's traceback
            row = json.loads(line)
            problems.append(Problem(**{k: v for k, v in row.items() if k in names}))
        except (json.JSONDecodeError, TypeError, AttributeError) as e:
            raise InputError(f"{path}:{i}: {what} ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    return problems
