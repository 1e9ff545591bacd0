"""What each delta costs and buys, over every model of the study: pass@k, the KL to the base in both
directions, forgetting, their paired comparisons, and whether forgetting tracks the KL.

Inputs: each model's samples table (:mod:`.sampled`) and held-out cross-entropies (:mod:`.heldout`),
keyed by model name (``"base"`` and adapter labels ``"{method}/seed{seed}"``); optionally the
geometry's ``adapters.tsv`` (each delta's Frobenius norm, the contrast RL's Razor reports).

Tables written to ``out_dir`` (estimators: :mod:`.estimators`; intervals and tests: :mod:`.paired`,
percentile bootstrap over items with one resample matrix per item set, exact sign tests, Holm):

* ``pass_at_k.tsv`` -- per model and k: pass@k, its interval, the base's value, the difference to the
  base with its paired interval and sign test (Holm over the models at that k), and ``seed_floor``;
* ``kl.tsv`` -- per adapter, direction (``forward``: KL(adapter || base) on the adapter's samples;
  ``reverse``: KL(base || adapter) on the base's) and unit (``sequence``: nats per completion;
  ``token``: nats per sampled token): value, interval, ``seed_floor``, ``path_floor`` (the larger of the
  adapter's and the base's KL against itself through the engine's decode and scoring paths: what the
  numerics alone could make of a KL, :func:`~.estimators.path_gap`), tokens per sample;
* ``forgetting.tsv`` -- per adapter: held-out cross-entropy (nats/token), the base's, the difference
  (the forgetting) with its paired interval and sign test against the base (Holm over adapters);
* ``pairwise.tsv`` -- every pair of models per measure (``pass@k``: every model; ``kl_forward``,
  ``kl_reverse`` (per-sequence, per item), ``forgetting`` (per item): the adapters), columns
  ``measure`` then :data:`.paired.PAIRED_COLUMNS`;
* ``forgetting_vs_kl.tsv`` -- across the adapters, Spearman's rho of forgetting against each KL
  measure (and the delta's norm) with its Fisher-z interval (:func:`.paired.spearman_interval`).

``seed_floor`` is the noise floor of a difference between two methods: the mean absolute difference
of the statistic between the method's own adapters of different seeds (another LoRA init and data
order); NaN for a method with one seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..fsutil import atomic_files, read_parquet_or, read_tsv_or, write_table
from ..labels import Label, mean_pair_difference
from .estimators import kl_sequence, kl_token, path_gap, per_item_log_ratio, per_item_pass_at_k
from .paired import (
    mean_interval,
    paired_tests,
    ratio_interval,
    resample_indices,
    sign_test,
    spearman_interval,
)
from .sampled import SAMPLES_READ, SAMPLES_WHAT, kl_draws
from .stats import holm

BASE = "base"
HELDOUT_READ, HELDOUT_WHAT = ("id", "ce"), "a held-out table of 'lossgeom evaluate --forgetting'"
KL_MEASURES = [("forward", "sequence"), ("forward", "token"), ("reverse", "sequence"), ("reverse", "token")]


def _method_seed(model: str) -> tuple[str, float]:
    """The ``method`` and ``seed`` columns of ``model``'s rows: the base's own name and no seed (NaN); an
    adapter label's method and init seed (:meth:`Label.parse`: any other name stops)."""
    if model == BASE:
        return BASE, np.nan
    label = Label.parse(model)
    return label.method, label.init_seed


def seed_floor(values: pd.Series) -> pd.Series:
    """Per model (index), the mean |difference| of ``values`` between its method's adapters of different
    init seeds (:func:`lossgeom.labels.mean_pair_difference`; NaN for the base and a one-seed method)."""
    labels = [Label.try_parse(m) for m in values.index]
    vals = values.to_numpy()
    return pd.Series(
        [np.nan if lab is None else mean_pair_difference(vals, labels, lab.method, "seed") for lab in labels],
        index=values.index,
    )


def _same_items(frames: dict[str, pd.Index], what: str) -> pd.Index:
    first_model, first = next(iter(frames.items()))
    for model, ids in frames.items():
        if set(ids) != set(first):
            raise InputError(f"{what}: model {model!r} has other items than {first_model!r}; rerun its evaluation")
    return first


def pass_at_k_tables(samples: dict[str, pd.DataFrame], ks: list[int], temperature: float, idx, confidence):
    """(pass_at_k table, per-item values by k) from the samples tables at ``temperature``."""
    per_item = {}
    for model, s in samples.items():
        own = s[(s["source"] == "self") & (s["temperature"] == temperature)]
        if own.empty:
            raise InputError(
                f"pass@k: model {model!r} has no samples at temperature {temperature}; rerun its evaluation"
            )
        if not own["correct"].isin([0, 1]).all():
            raise InputError(f"pass@k: model {model!r} has a sample graded other than 0 or 1; rerun its evaluation")
        n = int(own.groupby("id").size().min())
        if n < max(ks):
            raise InputError(
                f"pass@k: model {model!r} has {n} samples of an item at temperature {temperature}, fewer than "
                f"k = {max(ks)}: lower --k (behaviour.k) to at most behaviour.n, or rerun its evaluation with more"
            )
        per_item[model] = per_item_pass_at_k(own, ks)
    items = _same_items({m: v.index for m, v in per_item.items()}, "pass@k")
    rows, by_k = [], {}
    for k in ks:
        values = pd.DataFrame({m: v.loc[items, f"pass@{k}"] for m, v in per_item.items()})
        by_k[k] = values
        vs_base = paired_tests(values, idx, [(m, BASE) for m in values.columns if m != BASE], confidence)
        vs_base = vs_base.set_index("model_a")
        for model in values.columns:
            low, high = mean_interval(values[model].to_numpy(), idx, confidence)
            method, seed = _method_seed(model)
            row = {
                "model": model,
                "method": method,
                "seed": seed,
                "k": k,
                "n_items": len(items),
                "n_samples": int(per_item[model]["n"].min()),
                "value": float(values[model].mean()),
                "ci_low": low,
                "ci_high": high,
                "base": float(values[BASE].mean()),
            }
            if model in vs_base.index:
                t = vs_base.loc[model]
                row.update(
                    diff=t["diff"], diff_ci_low=t["ci_low"], diff_ci_high=t["ci_high"], p=t["p"], p_holm=t["p_holm"]
                )
            rows.append(row)
    table = pd.DataFrame(rows)
    for col in ("diff", "diff_ci_low", "diff_ci_high", "p", "p_holm"):
        table[col] = table.get(col, np.nan)
    table["seed"] = table["seed"].astype("Int64")  # the base has none
    table["seed_floor"] = np.nan
    for k in ks:
        at_k = table["k"] == k
        table.loc[at_k, "seed_floor"] = seed_floor(table[at_k].set_index("model")["value"]).to_numpy()
    return table, by_k


KL_COLUMNS = [
    "model",
    "method",
    "seed",
    "direction",
    "unit",
    "value",
    "ci_low",
    "ci_high",
    "seed_floor",
    "path_floor",
    "n_items",
    "n_samples",
    "tokens_per_sample",
]


def kl_tables(samples: dict[str, pd.DataFrame], items: pd.Index, idx, confidence):
    """(kl table, per-item per-sequence KL frames {"kl_forward", "kl_reverse"}) of the adapters, on
    ``items`` in their order (the pass@k table's, so one resample of ``idx`` picks the same items)."""
    rows, per_seq = [], {"kl_forward": {}, "kl_reverse": {}}
    # the path floor: each model against itself through the engine's two paths (estimators.path_gap)
    gaps = {model: np.abs(path_gap(kl_draws(s, "self"))) for model, s in samples.items()}
    for model, s in samples.items():
        if model == BASE:
            continue
        floor = np.fmax(gaps[model], gaps.get(BASE, np.nan))  # (sequence, token); NaN where no engine has two paths
        draws = {"forward": kl_draws(s, "self"), "reverse": kl_draws(s, "base")}
        if any(d[["logp", "logp_base"]].isna().any().any() for d in draws.values()):
            raise InputError(f"KL: model {model!r} has a sample not scored under both models; rerun its evaluation")
        parts = {"forward": per_item_log_ratio(draws["forward"]), "reverse": per_item_log_ratio(draws["reverse"], -1.0)}
        for direction, lr in parts.items():
            if lr.empty:
                raise InputError(f"KL: model {model!r} has no temperature-1 {direction} samples; rerun its evaluation")
            if set(lr.index) != set(items):
                raise InputError(
                    f"KL: model {model!r} has {direction} samples of other items than its pass@k samples; "
                    "rerun its evaluation"
                )
            lr = lr.loc[items]
            seq = pd.Series(kl_sequence(lr["log_ratio_sum"], lr["n"]), index=items)
            per_seq[f"kl_{direction}"][model] = seq
            method, seed = _method_seed(model)
            common = {
                "model": model,
                "method": method,
                "seed": seed,
                "direction": direction,
                "n_items": len(items),
                "n_samples": int(lr["n"].min()),
                "tokens_per_sample": float(lr["tokens"].sum() / lr["n"].sum()),
            }
            low, high = mean_interval(seq.to_numpy(), idx, confidence)
            row = {**common, "unit": "sequence", "value": float(seq.mean()), "ci_low": low, "ci_high": high}
            rows.append({**row, "path_floor": float(floor[0])})
            low, high = ratio_interval(lr["log_ratio_sum"].to_numpy(), lr["tokens"].to_numpy(), idx, confidence)
            tok = float(kl_token(lr["log_ratio_sum"], lr["tokens"]))
            row = {**common, "unit": "token", "value": tok, "ci_low": low, "ci_high": high}
            rows.append({**row, "path_floor": float(floor[1])})
    table = pd.DataFrame(rows)
    table["seed_floor"] = np.nan
    for (direction, unit), g in table.groupby(["direction", "unit"], sort=False):
        table.loc[g.index, "seed_floor"] = seed_floor(g.set_index("model")["value"]).to_numpy()
    return table[KL_COLUMNS], {k: pd.DataFrame(v) for k, v in per_seq.items()}


def forgetting_table(heldout: dict[str, pd.DataFrame], n_boot: int, seed: int, confidence: float):
    """(forgetting table, per-item cross-entropies of the adapters) from the held-out tables."""
    if BASE not in heldout:
        raise InputError("forgetting needs the base's held-out cross-entropies")
    items = _same_items({m: h["id"] for m, h in heldout.items()}, "forgetting")
    if len(items) == 0:
        raise InputError("forgetting: the base's held-out table has no rows; rerun its evaluation")
    ce = pd.DataFrame({m: h.set_index("id").loc[items, "ce"] for m, h in heldout.items()})
    if ce.isna().any().any():
        raise InputError(f"forgetting: model {ce.columns[ce.isna().any()][0]!r} has a NaN held-out cross-entropy")
    idx = resample_indices(len(items), n_boot, seed)
    rows = []
    for model in [m for m in ce.columns if m != BASE]:
        d = (ce[model] - ce[BASE]).to_numpy()
        low, high = mean_interval(d, idx, confidence)
        higher, lower, _, p = sign_test(d)
        method, s = _method_seed(model)
        rows.append(
            {
                "model": model,
                "method": method,
                "seed": s,
                "n_items": len(items),
                "ce": float(ce[model].mean()),
                "ce_base": float(ce[BASE].mean()),
                "value": float(d.mean()),
                "ci_low": low,
                "ci_high": high,
                "n_higher": higher,
                "n_lower": lower,
                "p": p,
            }
        )
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p"].to_numpy())
    table["seed_floor"] = seed_floor(table.set_index("model")["value"]).to_numpy()
    return table, ce.drop(columns=BASE), idx


def correlation_table(kl: pd.DataFrame, forgetting: pd.DataFrame, norms: pd.Series | None, confidence: float):
    """Spearman's rho across adapters of forgetting against each KL measure (and the delta norm)."""
    outcome = forgetting.set_index("model")["value"]
    predictors = {
        f"kl_{d}_{u}": kl[(kl["direction"] == d) & (kl["unit"] == u)].set_index("model")["value"]
        for d, u in KL_MEASURES
    }
    if norms is not None:
        predictors["delta_norm"] = norms
    rows = []
    for name, x in predictors.items():
        models = [m for m in outcome.index if m in x.index]
        rows.append(
            {
                "predictor": name,
                "outcome": "forgetting",
                **spearman_interval(x[models].to_numpy(), outcome[models].to_numpy(), confidence),
            }
        )
    return pd.DataFrame(rows, columns=["predictor", "outcome", "n", "rho", "ci_low", "ci_high", "p"])


def behaviour_statistics(
    samples: dict[str, Path],
    out_dir: Path,
    *,
    ks: list[int],
    temperature: float,
    n_boot: int,
    seed: int = 0,
    confidence: float = 0.95,
    heldout: dict[str, Path] | None = None,
    adapters_table: Path | None = None,
) -> None:
    """Read every model's tables, write the tables of the module docstring into ``out_dir`` (the
    forgetting ones only with ``heldout``). ``samples`` must include ``"base"``."""
    if BASE not in samples:
        raise InputError("behaviour statistics need the base's samples (model 'base')")
    tables = {
        m: read_parquet_or(Path(p), InputError, required=SAMPLES_READ, what=SAMPLES_WHAT) for m, p in samples.items()
    }
    models = [BASE] + [m for m in tables if m != BASE]
    tables = {m: tables[m] for m in models}
    n_items = tables[BASE]["id"].nunique()
    if n_items == 0:
        raise InputError(f"{samples[BASE]}: the base's samples table has no rows; rerun its evaluation")
    idx = resample_indices(n_items, n_boot, seed)
    passk, by_k = pass_at_k_tables(tables, ks, temperature, idx, confidence)
    kl, kl_items = kl_tables(tables, by_k[ks[0]].index, idx, confidence)
    pairs = [paired_tests(v, idx, confidence=confidence).assign(measure=f"pass@{k}") for k, v in by_k.items()]
    pairs += [paired_tests(v, idx, confidence=confidence).assign(measure=name) for name, v in kl_items.items()]
    outputs = {"pass_at_k": passk, "kl": kl}
    if heldout:
        if BASE not in heldout:
            raise InputError("forgetting needs the base's held-out cross-entropies (model 'base')")
        h = {
            m: read_parquet_or(Path(p), InputError, required=HELDOUT_READ, what=HELDOUT_WHAT)
            for m, p in heldout.items()
        }
        forgetting, ce, hidx = forgetting_table(
            {m: h[m] for m in [BASE] + [m for m in h if m != BASE]}, n_boot, seed, confidence
        )
        pairs.append(paired_tests(ce, hidx, confidence=confidence).assign(measure="forgetting"))
        norms = None
        if adapters_table is not None:
            what = "the adapters table of 'lossgeom geometry'"
            norms = read_tsv_or(adapters_table, InputError, ("label", "norm"), what).set_index("label")["norm"]
        outputs["forgetting"] = forgetting
        outputs["forgetting_vs_kl"] = correlation_table(kl, forgetting, norms, confidence)
    pairwise = pd.concat(pairs, ignore_index=True)
    outputs["pairwise"] = pairwise[["measure", *[c for c in pairwise.columns if c != "measure"]]]
    out_dir = Path(out_dir)
    with atomic_files() as stage:  # every table or none
        for name, df in outputs.items():
            write_table(df, stage(out_dir / f"{name}.tsv"))
