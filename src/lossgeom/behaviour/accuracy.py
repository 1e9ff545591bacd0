"""The accuracy jobs: greedy pass@1 and cross-entropies of one model (the base or one adapter),
and the statistics over all models (Wilson CIs by default, exact McNemar with Holm, Cochran's Q).

The evaluation job of a model also measures, on the engine it holds (one model load per job), the
model's sampled completions for pass@k and the KL to the base (:mod:`.sampled`, when ``behaviour`` is
given) and its cross-entropy on held-out text (:mod:`.heldout`, when ``forgetting`` is given); their
statistics are :mod:`.sampled_stats`'.

Evaluation parquet (one per model): test_set, id, correct (0/1; NaN where the gold is unreadable and
the item left out, ``unparsable_gold: drop``), extracted, completion, finish_reason ("stop"/"length"),
grade_note (the grader's "ok", "no answer", or why it could not grade), gold_ok, answer_ce,
solution_ce (nats/token).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from ..data.problemsets import load_test_set
from ..engines.backends import open_engine
from ..engines.engine import AdapterDir, GenerationSpec
from ..errors import InputError
from ..fsutil import atomic_files, read_parquet_or, write_table
from .activations import extract_activations, release_device_memory
from .evaluation import cross_entropies, greedy_pass_at_1
from .heldout import heldout_ce, load_heldout
from .sampled import SAMPLES_READ, SAMPLES_WHAT, sample_model
from .stats import accuracy_table, cochran_summary, pairwise_tests

log = logging.getLogger(__name__)


def evaluate_model(
    base: str,
    adapter: Path | None,
    test_sets: dict,
    toy_dir: Path | None,
    out: Path,
    *,
    template: str,
    max_new_tokens: int,
    batch_size: int,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    generation: GenerationSpec | None = None,
    answer_format: str | None = None,
    activations: dict | None = None,
    activations_out: Path | None = None,
    behaviour: dict | None = None,
    base_samples: Path | None = None,
    samples_out: Path | None = None,
    forgetting: dict | None = None,
    heldout_out: Path | None = None,
) -> pd.DataFrame:
    """Greedy pass@1 and cross-entropies of one model (the base, or ``adapter`` on it) on every test
    set, through the configured engine; writes the evaluation parquet. With ``activations`` (its probe
    set as a problem source under ``test_set``, and ``n_probe``, ``pooling``, ``batch_size``) first the
    probes' hidden states to ``activations_out`` (:func:`.activations.extract_activations`: a float32
    model of its own, freed before the engine loads). With ``behaviour`` (the filled
    section, its ``test_set`` a key of ``test_sets``) also the samples table to ``samples_out``
    (an adapter reads the base's from ``base_samples``); with ``forgetting`` (the filled section) the
    held-out cross-entropies to ``heldout_out``. Every input is read before a model loads; the
    activations are written when measured, the other tables once everything is (Snakemake removes a
    failed job's outputs).

    Long because the formatter spreads its keyword calls over lines; it is the job's one sequence on one
    engine: the activations, a loop over test sets, the held-out text, the samples.
    """
    spec = generation or GenerationSpec()
    ad = AdapterDir(Path(adapter)) if adapter is not None else None
    if behaviour and (samples_out is None or (ad is not None and base_samples is None)):
        raise InputError(
            "--behaviour needs --samples-out, and for an adapter --base-samples (the base's samples table)"
        )
    if behaviour and behaviour.get("test_set") not in test_sets:
        raise InputError(
            f"behaviour.test_set {behaviour.get('test_set')!r} is not one of the test sets {sorted(test_sets)}"
        )
    if forgetting and heldout_out is None:
        raise InputError("--forgetting needs --heldout-out, the table it writes")
    if activations and activations_out is None:
        raise InputError("--activations needs --activations-out, the npz they are written to")
    # read every input before the model is loaded: a bad path or source stops the job at once
    base_table = (
        read_parquet_or(Path(base_samples), InputError, required=SAMPLES_READ, what=SAMPLES_WHAT)
        if behaviour and ad is not None
        else None
    )
    heldout_items = load_heldout(forgetting, toy_dir) if forgetting else None
    if activations:
        extract_activations(
            base,
            adapter,
            activations["test_set"],
            toy_dir,
            activations_out,
            n_probe=activations["n_probe"],
            pooling=activations["pooling"],
            template=template,
            batch_size=activations["batch_size"],
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            answer_format=answer_format,
        )
        release_device_memory()  # the engine (vLLM: a share of the free GPU memory) loads next
    frames, loaded = [], {}
    with open_engine(spec, base, dtype=dtype, trust_remote_code=trust_remote_code, batch_size=batch_size) as engine:
        for name, ts in test_sets.items():
            problems, golds = loaded[name] = load_test_set(ts, toy_dir, name)
            graded = greedy_pass_at_1(
                engine,
                problems,
                grader=ts.get("grader", "exact"),
                template=template,
                max_new_tokens=max_new_tokens,
                adapter=ad,
                desc=f"evaluate {name}",
                golds=golds,
            )
            ce = cross_entropies(engine, problems, template=template, adapter=ad, answer_format=answer_format)
            frames.append(graded.merge(ce, on="id").assign(test_set=name))
            log.info(
                "%s on %s (%s): pass@1 %.3f over %d items (%d unparsable gold)",
                adapter or "base",
                name,
                engine.name,
                graded["correct"].mean(),
                graded["gold_ok"].sum(),
                (~graded["gold_ok"]).sum(),
            )
        if heldout_items is not None:
            heldout = heldout_ce(
                engine, heldout_items, template=template, max_length=forgetting["max_length"], adapter=ad
            )
            log.info(
                "%s: held-out cross-entropy %.4f nats/token over %d items",
                adapter or "base",
                heldout["ce"].mean(),
                len(heldout),
            )
        if behaviour:  # last: an adapter's samples end with the base's scores (a merging engine loads it once)
            name = behaviour["test_set"]
            problems, golds = loaded[name]
            limit = behaviour["limit"]
            samples = sample_model(
                engine,
                problems.iloc[:limit],
                golds[:limit],
                test_set=name,
                spec=behaviour,
                grader=test_sets[name].get("grader", "exact"),
                template=template,
                max_new_tokens=behaviour["max_new_tokens"] or max_new_tokens,
                adapter=ad,
                base_samples=base_table,
            )
    df = pd.concat(frames, ignore_index=True)
    df = df[
        [
            "test_set",
            "id",
            "correct",
            "extracted",
            "completion",
            "finish_reason",
            "grade_note",
            "gold_ok",
            "answer_ce",
            "solution_ce",
        ]
    ]
    with atomic_files() as stage:  # the model's outputs appear together or not at all
        if behaviour:
            write_table(samples, stage(samples_out))
        if heldout_items is not None:
            write_table(heldout, stage(heldout_out))
        write_table(df, stage(out))
    return df


EVALUATION_COLUMNS = ("test_set", "id", "correct", "gold_ok")  # what the statistics read of an evaluation


def _read_evaluations(evaluations: dict[str, Path]) -> dict[str, pd.DataFrame]:
    """Each model's evaluation table (``lossgeom evaluate``'s), checked: it has :data:`EVALUATION_COLUMNS`, 0/1
    in ``correct``, each item once per test set, and the first model's items, so that every file's fault is
    one line naming it."""
    what = "an evaluation table of 'lossgeom evaluate'"
    frames = {
        m: read_parquet_or(Path(p), InputError, required=EVALUATION_COLUMNS, what=what) for m, p in evaluations.items()
    }
    first_model, first = next(iter(frames.items()))
    for model, df in frames.items():
        path = evaluations[model]
        if not df.loc[df["gold_ok"].astype(bool), "correct"].isin([0, 1]).all():  # NaN where the gold is not
            raise InputError(f"{path}: 'correct' holds a value other than 0 and 1; rerun its evaluation")
        if df.duplicated(["test_set", "id"]).any():
            raise InputError(f"{path}: an item appears twice in one test set; rerun its evaluation")
        if set(zip(df["test_set"], df["id"])) != set(zip(first["test_set"], first["id"])):
            raise InputError(
                f"{path}: other test items than {evaluations[first_model]} (model {first_model!r}); evaluate "
                "every model on the same test sets"
            )
    return frames


def accuracy_statistics(
    evaluations: dict[str, Path], out_dir: Path, *, n_boot: int, mid_p: bool, seed: int = 0, ci: str = "wilson"
) -> None:
    """Per test set: accuracy with CIs (``ci``: see :func:`.stats.accuracy_table`), exact McNemar for every pair with Holm correction,
    Cochran's Q. Writes ``accuracy.tsv``, ``pairwise.tsv``, ``cochran.json`` into ``out_dir``."""
    frames = _read_evaluations(evaluations)
    test_sets = list(dict.fromkeys(t for df in frames.values() for t in df["test_set"]))
    acc, pairs, cochran = [], [], {}
    for t in test_sets:
        per_model = {m: df[df["test_set"] == t].set_index("id") for m, df in frames.items()}
        first = next(iter(per_model.values()))
        gold_ok = first["gold_ok"].astype(bool)
        unparsable = int((~gold_ok).sum())
        if gold_ok.sum() == 0:
            raise InputError(f"test set {t!r}: no item has a parsable gold answer ({len(gold_ok)} items)")
        correct = pd.DataFrame(
            {m: df.loc[gold_ok.index[gold_ok], "correct"].astype(int) for m, df in per_model.items()}
        )
        a = accuracy_table(correct, n_boot=n_boot, seed=seed, ci=ci).reset_index()
        a.insert(0, "test_set", t)
        a["n_unparsable_gold"] = unparsable
        acc.append(a)
        p = pairwise_tests(correct, mid_p=mid_p)
        p.insert(0, "test_set", t)
        pairs.append(p)
        cochran[t] = {**cochran_summary(correct), "n_unparsable_gold": unparsable}
    with atomic_files() as stage:  # all three or none (out_dir also holds the models' evaluations)
        write_table(pd.concat(acc, ignore_index=True), stage(out_dir / "accuracy.tsv"))
        write_table(pd.concat(pairs, ignore_index=True), stage(out_dir / "pairwise.tsv"))
        stage(out_dir / "cochran.json").write_text(json.dumps(cochran, indent=2, default=float))
