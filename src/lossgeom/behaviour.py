"""The behaviour jobs: what each delta does (accuracy, connectivity, representations).

Expensive work on one model is one job (``evaluate_model``, ``extract_activations``); on a pair, one
job (``connectivity_sweep``); the cheap aggregates read their outputs (``accuracy_statistics``,
``connectivity_summary``, ``cka_tables``). Models are named ``base`` or ``{method}/seed{seed}``.

File formats:

    evaluation parquet   test_set, id, correct (0/1; NaN where the gold is unparsable), extracted,
                         completion, gold_ok, answer_ce, solution_ce (nats/token)
    sweep tsv            pair_a, pair_b, alpha, metric (answer_ce | solution_ce | accuracy), value
    activations npz      acts float32 (n_layers, n_probes, hidden), ids (n_probes,), pooling
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .fsutil import atomic_path, write_table
from .modeling import load_model, load_tokenizer
from .problemsets import count_unparsable_gold, load_problems

log = logging.getLogger(__name__)

LMC_METRICS = {"answer_ce": False, "solution_ce": False, "accuracy": True}  # metric -> higher is better


def model_with_adapter(base: str, adapter: Path | None, dtype: str, trust_remote_code: bool):
    """The base model, with ``adapter`` merged into its weights when given (a merged model is what
    the paper evaluates and probes; merging also makes generation as fast as the base)."""
    model = load_model(base, dtype, trust_remote_code)
    if adapter is None:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def load_test_set(spec: dict, toy_dir: Path | None, name: str) -> pd.DataFrame:
    problems = load_problems(spec, toy_dir)
    bad = count_unparsable_gold(problems)
    if bad:
        log.warning("test set %s: %d of %d gold answers are not plain numbers (graded by %s; unparsable ones are reported)",
                    name, bad, len(problems), spec.get("grader", "exact"))
    return problems


def evaluate_model(
    base: str, adapter: Path | None, test_sets: dict, toy_dir: Path | None, out: Path, *, template: str,
    max_new_tokens: int, batch_size: int, dtype: str = "float32", trust_remote_code: bool = False,
) -> pd.DataFrame:
    """Greedy pass@1 and cross-entropies of one model on every test set; writes the evaluation parquet."""
    from .evaluation import cross_entropies, greedy_pass_at_1

    model = model_with_adapter(base, adapter, dtype, trust_remote_code)
    tokenizer = load_tokenizer(base, trust_remote_code)
    frames = []
    for name, spec in test_sets.items():
        problems = load_test_set(spec, toy_dir, name)
        graded = greedy_pass_at_1(model, tokenizer, problems, grader=spec.get("grader", "exact"), template=template,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size, desc=f"evaluate {name}")
        ce = cross_entropies(model, tokenizer, problems, template=template, batch_size=batch_size)
        frames.append(graded.merge(ce, on="id").assign(test_set=name))
        log.info("%s on %s: pass@1 %.3f over %d items (%d unparsable gold)", adapter or "base", name,
                 graded["correct"].mean(), graded["gold_ok"].sum(), (~graded["gold_ok"]).sum())
    df = pd.concat(frames, ignore_index=True)
    df = df[["test_set", "id", "correct", "extracted", "completion", "gold_ok", "answer_ce", "solution_ce"]]
    write_table(df, out)
    return df


def accuracy_statistics(evaluations: dict[str, Path], out_dir: Path, *, n_boot: int, mid_p: bool, seed: int = 0) -> None:
    """Per test set: accuracy with bootstrap CIs, exact McNemar for every pair with Holm correction,
    Cochran's Q. Writes ``accuracy.tsv``, ``pairwise.tsv``, ``cochran.json`` into ``out_dir``."""
    from .stats import accuracy_table, cochran_summary, pairwise_tests

    frames = {m: pd.read_parquet(p) for m, p in evaluations.items()}
    test_sets = list(dict.fromkeys(t for df in frames.values() for t in df["test_set"]))
    acc, pairs, cochran = [], [], {}
    for t in test_sets:
        per_model = {m: df[df["test_set"] == t].set_index("id") for m, df in frames.items()}
        first = next(iter(per_model.values()))
        gold_ok = first["gold_ok"].astype(bool)
        unparsable = int((~gold_ok).sum())
        if gold_ok.sum() == 0:
            raise ValueError(f"test set {t!r}: no item has a parsable gold answer ({len(gold_ok)} items)")
        correct = pd.DataFrame({m: df.loc[gold_ok.index[gold_ok], "correct"].astype(int) for m, df in per_model.items()})
        a = accuracy_table(correct, n_boot=n_boot, seed=seed).reset_index()
        a.insert(0, "test_set", t)
        a["n_unparsable_gold"] = unparsable
        acc.append(a)
        p = pairwise_tests(correct, mid_p=mid_p)
        p.insert(0, "test_set", t)
        pairs.append(p)
        cochran[t] = {**cochran_summary(correct), "n_unparsable_gold": unparsable}
    write_table(pd.concat(acc, ignore_index=True), out_dir / "accuracy.tsv")
    write_table(pd.concat(pairs, ignore_index=True), out_dir / "pairwise.tsv")
    with atomic_path(out_dir / "cochran.json") as tmp:
        tmp.write_text(json.dumps(cochran, indent=2, default=float))


def connectivity_sweep(
    base: str, adapters: tuple[tuple[str, Path], tuple[str, Path]], test_set: dict, toy_dir: Path | None, out: Path, *,
    alphas: int, limit: int, accuracy_subset: int, template: str, max_new_tokens: int, batch_size: int,
    dtype: str = "float32", trust_remote_code: bool = False,
) -> pd.DataFrame:
    """The linear path between two adapters' deltas: at each alpha, mean answer-only CE, mean
    full-solution CE (nats/token) on the first ``limit`` test items, and greedy accuracy on the first
    ``accuracy_subset`` of them. Writes the sweep tsv."""
    from .adapters import load_adapter
    from .evaluation import cross_entropies, greedy_pass_at_1
    from .interpolation import LoraPath, alpha_grid

    (label_a, dir_a), (label_b, dir_b) = adapters
    problems = load_problems({**test_set, "limit": limit}, toy_dir)
    subset = problems.iloc[:accuracy_subset]
    tokenizer = load_tokenizer(base, trust_remote_code)
    path = LoraPath(load_model(base, dtype, trust_remote_code), load_adapter(dir_a), load_adapter(dir_b))
    rows = []
    for a in alpha_grid(alphas):
        path.set_alpha(a)
        ce = cross_entropies(path.model, tokenizer, problems, template=template, batch_size=batch_size)
        graded = greedy_pass_at_1(path.model, tokenizer, subset, grader=test_set.get("grader", "exact"), template=template,
                                  max_new_tokens=max_new_tokens, batch_size=batch_size, desc=f"alpha={a:.2f}")
        values = {"answer_ce": ce["answer_ce"].mean(), "solution_ce": ce["solution_ce"].mean(), "accuracy": graded["correct"].mean()}
        rows += [{"pair_a": label_a, "pair_b": label_b, "alpha": float(a), "metric": k, "value": float(v)} for k, v in values.items()]
    df = pd.DataFrame(rows)
    write_table(df, out)
    return df


def connectivity_summary(sweeps: list[Path], out: Path) -> pd.DataFrame:
    """One row per (pair, metric): endpoint values, extreme along the path, and the barrier."""
    from .interpolation import barrier

    curves = pd.concat([pd.read_csv(p, sep="\t") for p in sweeps], ignore_index=True)
    rows = []
    for (a, b, metric), g in curves.groupby(["pair_a", "pair_b", "metric"], sort=False):
        g = g.sort_values("alpha")
        higher = LMC_METRICS[metric]
        rows.append({
            "pair_a": a, "pair_b": b, "metric": metric,
            "value_a": g["value"].iloc[0], "value_b": g["value"].iloc[-1],
            "worst_on_path": g["value"].min() if higher else g["value"].max(),
            "barrier": barrier(g["alpha"], g["value"], higher_is_better=higher),
        })
    summary = pd.DataFrame(rows)
    write_table(summary, out)
    write_table(curves, out.with_name("curves.tsv"))
    return summary


def extract_activations(
    base: str, adapter: Path | None, test_set: dict, toy_dir: Path | None, out: Path, *, n_probe: int, pooling: str,
    template: str, batch_size: int, dtype: str = "float32", trust_remote_code: bool = False,
) -> None:
    """Pooled per-layer hidden states of one (merged) model on the probe set; writes the npz."""
    from .activations import hidden_states

    problems = load_problems({**test_set, "limit": n_probe}, toy_dir)
    model = model_with_adapter(base, adapter, dtype, trust_remote_code)
    tokenizer = load_tokenizer(base, trust_remote_code)
    acts = hidden_states(model, tokenizer, problems, template=template, pooling=pooling, batch_size=batch_size)
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, acts=acts, ids=problems["id"].to_numpy(dtype=str), pooling=np.array(pooling))


def cka_tables(activations: dict[str, Path], out: Path) -> pd.DataFrame:
    """Linear and debiased CKA of every model pair (base included), per layer; writes the table."""
    from .cka import cka_matrix

    acts, ids = {}, None
    for label, path in activations.items():
        with np.load(path) as z:
            if ids is not None and not np.array_equal(ids, z["ids"]):
                raise ValueError(f"activations {path} were taken on other probes than the first model's")
            ids = z["ids"]
            acts[label] = z["acts"].astype(np.float64)
    table = cka_matrix(acts)
    write_table(table, out)
    return table
