"""End-to-end tests of lossgeom.behaviour.sampled_stats.behaviour_statistics on synthetic parquet inputs.

The inputs are built here in the samples-table format of lossgeom.behaviour.sampled (SAMPLE_COLUMNS): a
base (its own temperature-1 samples, ``logp_base == logp``) and adapters ``{method}/seed{seed}`` (3
methods x 2 seeds and one single-seed method with more samples per item), each with its own samples and
the base's temperature-1 samples re-scored under it (``source == "base"``), rows shuffled; held-out
cross-entropy tables (id, ce, n_tokens; rows shuffled, some items tied with the base) and a geometry
``adapters.tsv``. Every written table is read back and checked against a recomputation straight from
the raw frames:

* pass@k: brute force over every k-subset of an item's samples (itertools.combinations), pandas
  groupby per item; the sign test vs the base with scipy.stats.binomtest on the per-item differences;
  Holm's step-down adjustment written out here; ``seed_floor`` = |seed a - seed b| (NaN for one seed
  and the base); intervals contain the value, lie in [0, 1], and equal the percentile bootstrap of the
  documented resampling (``numpy.random.default_rng(seed).integers`` over the base's items);
* kl: per-item means of ``logp - logp_base`` (forward, own rows) and ``logp_base - logp`` (reverse,
  the base's rows), totals over tokens, tokens per sample, samples per item;
* forgetting: mean per-item difference to the base aligned by id, counts, binomtest, Holm;
* pairwise: per measure every pair of models (pass@k: all; KL and forgetting: adapters), C(m, 2) rows,
  the means, the differences, the sign test and Holm within each measure;
* forgetting_vs_kl: scipy.stats.spearmanr across adapters (and against the adapters.tsv norms);
* a pass@k temperature of 0.7 beside the temperature-1 KL draws; the error cases; the file set
  without held-out data; byte-identical tables for a fixed seed.
"""

from __future__ import annotations

from itertools import combinations
from math import comb
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from lossgeom.behaviour.sampled import SAMPLE_COLUMNS
from lossgeom.behaviour.sampled_stats import behaviour_statistics

BASE = "base"
ADAPTERS = ["sft/seed1", "sft/seed2", "dpo/seed3", "dpo/seed4", "kto/seed1", "kto/seed7", "grpo/seed5"]
TWO_SEEDS = {"sft": ["sft/seed1", "sft/seed2"], "dpo": ["dpo/seed3", "dpo/seed4"], "kto": ["kto/seed1", "kto/seed7"]}
SINGLE = "grpo/seed5"
N_ITEMS, N_SAMPLES, N_SINGLE, N_HELDOUT = 20, 4, 5, 30
KS = [1, 2, 3, 4]
N_BOOT, SEED = 400, 3
TABLES = {"pass_at_k.tsv", "kl.tsv", "pairwise.tsv", "forgetting.tsv", "forgetting_vs_kl.tsv"}


# -- synthetic study ------------------------------------------------------------------------------


def _draws(rng, p_item, temperature, n, source="self", kl=True):
    rows = []
    for i, p in enumerate(p_item):
        for j in range(n):
            nt = int(rng.integers(1, 40))
            rows.append(
                {
                    "test_set": "toy",
                    "id": f"q{i}",
                    "source": source,
                    "temperature": temperature,
                    "sample": j,
                    "completion": f"c{i}-{j}",
                    "token_ids": rng.integers(0, 50, nt).tolist(),
                    "n_tokens": nt,
                    "finish_reason": "stop",
                    "correct": float(rng.uniform() < p),
                    "logp": -rng.uniform(0.5, 3.0) * nt if kl else np.nan,
                    "logp_base": np.nan,
                    "logp_sampler": np.nan,
                }
            )
    out = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    if kl:  # the decode path's log-probabilities: the scoring path's plus a small per-token bias and noise
        bias = rng.uniform(-2e-3, 2e-3)
        out["logp_sampler"] = out["logp"] + out["n_tokens"] * (bias + rng.normal(0, 1e-3, len(out)))
    return out


def build_study(root: Path, pass_temperature: float = 1.0, rng_seed: int = 0):
    """Samples, held-out and adapters.tsv files; returns (sample paths, raw samples, heldout paths, raw
    heldout, adapters path)."""
    rng = np.random.default_rng(rng_seed)
    root.mkdir(parents=True, exist_ok=True)
    p_base = rng.uniform(0.05, 0.95, N_ITEMS)
    base = _draws(rng, p_base, 1.0, N_SAMPLES)
    base["logp_base"] = base["logp"]
    if pass_temperature != 1.0:
        base = pd.concat([_draws(rng, p_base, pass_temperature, N_SAMPLES, kl=False), base], ignore_index=True)
    raw = {BASE: base}
    for model in ADAPTERS:
        n = N_SINGLE if model == SINGLE else N_SAMPLES
        p = np.clip(p_base + rng.normal(0, 0.25, N_ITEMS), 0, 1)
        own = _draws(rng, p, 1.0, n)
        own["logp_base"] = own["logp"] - rng.normal(0.3, 1.0, len(own)) * np.sqrt(own["n_tokens"])
        parts = [own]
        if pass_temperature != 1.0:
            parts.append(_draws(rng, np.clip(p + 0.2, 0, 1), pass_temperature, n, kl=False))
        rev = base[base["temperature"] == 1.0].assign(source="base", logp_sampler=np.nan)
        rev["logp"] = rev["logp_base"] - rng.normal(0.4, 1.0, len(rev)) * np.sqrt(rev["n_tokens"])
        parts.append(rev)
        t = pd.concat(parts, ignore_index=True)
        raw[model] = t.iloc[rng.permutation(len(t))].reset_index(drop=True)  # row order must not matter
    paths = {}
    for model, t in raw.items():
        paths[model] = root / "samples" / f"{model.replace('/', '_')}.parquet"
        paths[model].parent.mkdir(parents=True, exist_ok=True)
        t.to_parquet(paths[model], index=False)
    hids = [f"h{i}" for i in range(N_HELDOUT)]
    ce_base = rng.uniform(1.0, 3.0, N_HELDOUT)
    held = {BASE: pd.DataFrame({"id": hids, "ce": ce_base, "n_tokens": rng.integers(5, 50, N_HELDOUT)})}
    for j, model in enumerate(ADAPTERS):
        ce = ce_base + rng.normal(0.05 * j, 0.1, N_HELDOUT)
        held[model] = pd.DataFrame({"id": hids, "ce": ce, "n_tokens": held[BASE]["n_tokens"]})
    for j, model in enumerate(ADAPTERS):  # some items tied with the base exactly
        tied = rng.choice(N_HELDOUT, 3 + j % 3, replace=False)
        held[model].loc[tied, "ce"] = ce_base[tied]
        held[model] = held[model].iloc[rng.permutation(N_HELDOUT)].reset_index(drop=True)
    hpaths = {}
    for model, h in held.items():
        hpaths[model] = root / "heldout" / f"{model.replace('/', '_')}.parquet"
        hpaths[model].parent.mkdir(parents=True, exist_ok=True)
        h.to_parquet(hpaths[model], index=False)
    adapters = root / "adapters.tsv"
    norms = pd.DataFrame(
        {"label": ADAPTERS + ["other/seed9"], "norm": rng.uniform(1, 10, len(ADAPTERS) + 1), "rank": 8}
    )
    norms.iloc[rng.permutation(len(norms))].to_csv(adapters, sep="\t", index=False)
    return paths, raw, hpaths, held, adapters


def run_stats(study, out: Path, heldout=True, **kw):
    paths, _, hpaths, _, adapters = study
    args = dict(ks=KS, temperature=1.0, n_boot=N_BOOT, seed=SEED, confidence=0.95)
    args.update(kw)
    extra = {"heldout": hpaths, "adapters_table": adapters} if heldout else {}
    behaviour_statistics(paths, out, **args, **extra)
    return {p.name: pd.read_csv(p, sep="\t") for p in sorted(out.iterdir())}


# -- references -----------------------------------------------------------------------------------


def brute_pass_at_k(correct: list[float], k: int) -> float:
    subsets = list(combinations(range(len(correct)), k))
    assert len(subsets) == comb(len(correct), k)
    return float(np.mean([any(correct[i] for i in s) for s in subsets]))


def ref_pass(raw: dict[str, pd.DataFrame], temperature: float) -> dict[int, pd.DataFrame]:
    """{k: DataFrame index item (sorted), column per model}."""
    out = {}
    for k in KS:
        cols = {}
        for model, t in raw.items():
            own = t[(t["source"] == "self") & (t["temperature"] == temperature)]
            cols[model] = own.groupby("id")["correct"].apply(lambda c: brute_pass_at_k(c.tolist(), k))
        out[k] = pd.DataFrame(cols).sort_index()
    return out


def ref_per_item_kl(t: pd.DataFrame, direction: str) -> pd.DataFrame:
    rows = t[(t["source"] == ("self" if direction == "forward" else "base")) & (t["temperature"] == 1.0)]
    sign = 1.0 if direction == "forward" else -1.0
    lr = sign * (rows["logp"] - rows["logp_base"])
    g = rows.assign(lr=lr).groupby("id")
    return pd.DataFrame({"mean": g["lr"].mean(), "sum": g["lr"].sum(), "tokens": g["n_tokens"].sum(), "n": g.size()})


def holm_by_hand(p) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    m = len(p)
    order = sorted(range(m), key=lambda i: (p[i], i))
    out = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def sign_p(d) -> tuple[int, int, float]:
    d = np.asarray(d, dtype=float)
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    return pos, neg, (1.0 if pos + neg == 0 else sps.binomtest(pos, pos + neg, 0.5).pvalue)


def close(a, b):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=2e-9, atol=1e-9)


def seed_floor_ref(values: dict[str, float], model: str) -> float:
    for models in TWO_SEEDS.values():
        if model in models:
            return abs(values[models[0]] - values[models[1]])
    return np.nan


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    s = build_study(root / "in")
    return s, run_stats(s, root / "out")


@pytest.fixture(scope="module")
def study_t07(tmp_path_factory):
    root = tmp_path_factory.mktemp("study07")
    s = build_study(root / "in", pass_temperature=0.7, rng_seed=1)
    return s, run_stats(s, root / "out", temperature=0.7)


# -- the synthetic inputs are what they claim -----------------------------------------------------


def test_synthetic_inputs_have_the_samples_format(study):
    (paths, raw, hpaths, held, _), _ = study
    for model, path in paths.items():
        t = pd.read_parquet(path)
        assert list(t.columns) == SAMPLE_COLUMNS
        assert set(t["id"]) == {f"q{i}" for i in range(N_ITEMS)}
    base = raw[BASE]
    assert set(base["source"]) == {"self"} and (base["logp"] == base["logp_base"]).all()
    for model in ADAPTERS:
        rev = raw[model][raw[model]["source"] == "base"].sort_values(["id", "sample"]).reset_index(drop=True)
        b = base.sort_values(["id", "sample"]).reset_index(drop=True)
        assert (rev["logp_base"] == b["logp"]).all() and (rev["n_tokens"] == b["n_tokens"]).all()
        assert not (rev["logp"] == b["logp"]).all()


# -- pass@k ---------------------------------------------------------------------------------------


def _check_pass_at_k(table: pd.DataFrame, raw, temperature):
    ref = ref_pass(raw, temperature)
    models = [BASE] + ADAPTERS
    assert len(table) == len(models) * len(KS)
    assert table["model"].tolist() == [m for _ in KS for m in models]
    for k in KS:
        at = table[table["k"] == k].set_index("model")
        v = ref[k]
        values = {m: v[m].mean() for m in models}
        close(at.loc[models, "value"], [values[m] for m in models])
        close(at["base"], values[BASE])
        assert (at["n_items"] == N_ITEMS).all()
        assert at.loc[SINGLE, "n_samples"] == N_SINGLE and at.loc[BASE, "n_samples"] == N_SAMPLES
        ps = []
        for m in ADAPTERS:
            d = (v[m] - v[BASE]).to_numpy()
            close(at.loc[m, "diff"], d.mean())
            close(at.loc[m, "diff"], values[m] - values[BASE])
            ps.append(sign_p(d)[2])
        close(at.loc[ADAPTERS, "p"], ps)
        close(at.loc[ADAPTERS, "p_holm"], holm_by_hand(ps))
        assert at.loc[[BASE], ["diff", "diff_ci_low", "diff_ci_high", "p", "p_holm"]].isna().all().all()
        for m in models:
            assert at.loc[m, "method"] == m.split("/")[0]
            ref_floor = seed_floor_ref(values, m)
            if np.isnan(ref_floor):
                assert np.isnan(at.loc[m, "seed_floor"])
            else:
                close(at.loc[m, "seed_floor"], ref_floor)
        assert (at["ci_low"] <= at["value"] + 1e-12).all() and (at["value"] <= at["ci_high"] + 1e-12).all()
        assert (at["ci_low"] >= 0).all() and (at["ci_high"] <= 1).all()
        a = at.loc[ADAPTERS]
        assert (a["diff_ci_low"] <= a["diff"] + 1e-12).all() and (a["diff"] <= a["diff_ci_high"] + 1e-12).all()
    return ref


def test_pass_at_k_table(study):
    (_, raw, _, _, _), tables = study
    t = tables["pass_at_k.tsv"]
    ref = _check_pass_at_k(t, raw, 1.0)
    assert np.isnan(t.loc[t["model"] == BASE, "seed"]).all()
    assert t.loc[t["model"] == "kto/seed7", "seed"].eq(7).all()
    # the test can fail: the methods differ from the base and pass@k grows with k
    assert any(t["p"].dropna() < 0.5) and (ref[4].mean() >= ref[1].mean()).all()


def test_pass_at_k_intervals_are_the_documented_paired_bootstrap(study):
    """Intervals: percentile bootstrap over items with numpy's default_rng(seed) resamples of the base's
    items (in the base's first-seen order), one matrix for every model and difference."""
    (_, raw, _, _, _), tables = study
    t = tables["pass_at_k.tsv"]
    base_self = raw[BASE][raw[BASE]["source"] == "self"]
    order = list(dict.fromkeys(base_self["id"]))
    idx = np.random.default_rng(SEED).integers(0, N_ITEMS, size=(N_BOOT, N_ITEMS))
    for k, v in ref_pass(raw, 1.0).items():
        v = v.loc[order]
        at = t[t["k"] == k].set_index("model")
        for m in [BASE, *ADAPTERS]:
            lo, hi = np.quantile(v[m].to_numpy()[idx].mean(axis=1), [0.025, 0.975])
            close(at.loc[m, ["ci_low", "ci_high"]], [lo, hi])
            if m != BASE:
                d = (v[m] - v[BASE]).to_numpy()
                lo, hi = np.quantile(d[idx].mean(axis=1), [0.025, 0.975])
                close(at.loc[m, ["diff_ci_low", "diff_ci_high"]], [lo, hi])


def test_pass_at_k_at_another_temperature_reads_only_those_rows(study_t07):
    (_, raw, _, _, _), tables = study_t07
    t = tables["pass_at_k.tsv"]
    _check_pass_at_k(t, raw, 0.7)
    wrong = ref_pass(raw, 1.0)
    at1 = t[t["k"] == 1].set_index("model")
    assert not np.allclose(at1.loc[[BASE, *ADAPTERS], "value"], wrong[1].mean().loc[[BASE, *ADAPTERS]])


# -- KL -------------------------------------------------------------------------------------------


def _check_kl(kl: pd.DataFrame, raw):
    assert BASE not in set(kl["model"])
    assert len(kl) == len(ADAPTERS) * 4
    assert list(kl.columns) == [
        "model", "method", "seed", "direction", "unit", "value", "ci_low", "ci_high", "seed_floor",
        "path_floor", "n_items", "n_samples", "tokens_per_sample",
    ]  # fmt: skip

    def gap(t):  # the model against itself through the two paths, by hand: (per sequence, per token)
        own = t[(t["source"] == "self") & (t["temperature"] == 1.0)]
        d = (own["logp_sampler"] - own["logp"]).to_numpy()
        return abs(d.mean()), abs(d.sum() / own["n_tokens"].sum())

    for m in ADAPTERS:
        want = np.maximum(gap(raw[m]), gap(raw[BASE]))
        rows = kl[kl["model"] == m]
        close(rows.loc[rows["unit"] == "sequence", "path_floor"].to_numpy(), want[0])
        close(rows.loc[rows["unit"] == "token", "path_floor"].to_numpy(), want[1])
        assert 0 < want[1] < 5e-3
    for direction in ("forward", "reverse"):
        values = {"sequence": {}, "token": {}}
        for m in ADAPTERS:
            per = ref_per_item_kl(raw[m], direction)
            rows = kl[(kl["model"] == m) & (kl["direction"] == direction)].set_index("unit")
            values["sequence"][m] = per["mean"].mean()
            values["token"][m] = per["sum"].sum() / per["tokens"].sum()
            close(rows.loc["sequence", "value"], values["sequence"][m])
            close(rows.loc["token", "value"], values["token"][m])
            close(rows["tokens_per_sample"], per["tokens"].sum() / per["n"].sum())
            assert (rows["n_items"] == N_ITEMS).all()
            n_expected = N_SINGLE if (m == SINGLE and direction == "forward") else N_SAMPLES
            assert (rows["n_samples"] == n_expected).all()
            assert (rows["ci_low"] <= rows["value"] + 1e-12).all() and (rows["value"] <= rows["ci_high"] + 1e-12).all()
        for unit in ("sequence", "token"):
            rows = kl[(kl["direction"] == direction) & (kl["unit"] == unit)].set_index("model")
            for m in ADAPTERS:
                ref_floor = seed_floor_ref(values[unit], m)
                if np.isnan(ref_floor):
                    assert np.isnan(rows.loc[m, "seed_floor"])
                else:
                    close(rows.loc[m, "seed_floor"], ref_floor)


def test_kl_table(study):
    (_, raw, _, _, _), tables = study
    kl = tables["kl.tsv"]
    _check_kl(kl, raw)
    # forward and reverse come from different rows: the numbers differ
    f = kl[(kl["direction"] == "forward") & (kl["unit"] == "token")]["value"].to_numpy()
    r = kl[(kl["direction"] == "reverse") & (kl["unit"] == "token")]["value"].to_numpy()
    assert not np.allclose(f, r)


def test_kl_beside_a_pass_at_k_temperature(study_t07):
    (_, raw, _, _, _), tables = study_t07
    _check_kl(tables["kl.tsv"], raw)


def test_kl_token_interval_is_the_ratio_bootstrap(study):
    (_, raw, _, _, _), tables = study
    kl = tables["kl.tsv"]
    # the KL tables take the pass@k table's item order (the base's first-seen order): one resample of the
    # shared matrix picks the same items in both
    base = raw[BASE]
    order = list(dict.fromkeys(base.loc[base["source"] == "self", "id"]))
    idx = np.random.default_rng(SEED).integers(0, N_ITEMS, size=(N_BOOT, N_ITEMS))
    for m in ("sft/seed2", SINGLE):
        per = ref_per_item_kl(raw[m], "forward").loc[order]
        rep = per["sum"].to_numpy()[idx].sum(axis=1) / per["tokens"].to_numpy()[idx].sum(axis=1)
        row = kl[(kl["model"] == m) & (kl["direction"] == "forward") & (kl["unit"] == "token")].iloc[0]
        close([row["ci_low"], row["ci_high"]], np.quantile(rep, [0.025, 0.975]))


# -- forgetting -----------------------------------------------------------------------------------


def _ref_ce(held) -> pd.DataFrame:
    return pd.DataFrame({m: h.set_index("id")["ce"] for m, h in held.items()}).sort_index()


def test_forgetting_table(study):
    (_, _, _, held, _), tables = study
    f = tables["forgetting.tsv"].set_index("model")
    assert f.index.tolist() == ADAPTERS
    ce = _ref_ce(held)
    ps, values = [], {}
    for m in ADAPTERS:
        d = (ce[m] - ce[BASE]).to_numpy()
        values[m] = d.mean()
        pos, neg, p = sign_p(d)
        assert pos + neg < N_HELDOUT  # the tied items
        assert (f.loc[m, "n_higher"], f.loc[m, "n_lower"]) == (pos, neg)
        close(f.loc[m, ["value", "ce", "ce_base", "p"]], [d.mean(), ce[m].mean(), ce[BASE].mean(), p])
        assert f.loc[m, "n_items"] == N_HELDOUT
        assert f.loc[m, "ci_low"] <= f.loc[m, "value"] <= f.loc[m, "ci_high"]
        ps.append(p)
    close(f.loc[ADAPTERS, "p_holm"], holm_by_hand(ps))
    for m in ADAPTERS:
        ref_floor = seed_floor_ref(values, m)
        assert (
            np.isnan(f.loc[m, "seed_floor"]) if np.isnan(ref_floor) else np.isclose(f.loc[m, "seed_floor"], ref_floor)
        )
    assert min(ps) < 0.05  # the later adapters forget: the test can tell


# -- pairwise -------------------------------------------------------------------------------------


def test_pairwise_table(study):
    (_, raw, _, held, _), tables = study
    pw = tables["pairwise.tsv"]
    assert pw.columns[0] == "measure"
    per_measure = {f"pass@{k}": v for k, v in ref_pass(raw, 1.0).items()}
    for direction in ("forward", "reverse"):
        per_measure[f"kl_{direction}"] = pd.DataFrame(
            {m: ref_per_item_kl(raw[m], direction)["mean"] for m in ADAPTERS}
        ).sort_index()
    per_measure["forgetting"] = _ref_ce(held)[ADAPTERS]
    assert list(dict.fromkeys(pw["measure"])) == list(per_measure)
    for measure, v in per_measure.items():
        rows = pw[pw["measure"] == measure]
        models = list(v.columns)
        assert len(rows) == comb(len(models), 2)
        assert list(zip(rows["model_a"], rows["model_b"])) == list(combinations(models, 2))
        ps = []
        for _, r in rows.iterrows():
            d = (v[r["model_a"]] - v[r["model_b"]]).to_numpy()
            pos, neg, p = sign_p(d)
            close(
                [r["mean_a"], r["mean_b"], r["diff"], r["p"]],
                [v[r["model_a"]].mean(), v[r["model_b"]].mean(), d.mean(), p],
            )
            close(r["diff"], r["mean_a"] - r["mean_b"])
            assert (r["n"], r["n_a_higher"], r["n_b_higher"], r["n_tied"]) == (len(d), pos, neg, len(d) - pos - neg)
            assert r["ci_low"] <= r["diff"] + 1e-12 and r["diff"] <= r["ci_high"] + 1e-12
            ps.append(p)
        close(rows["p_holm"], holm_by_hand(ps))


def test_pairwise_pass_at_k_agrees_with_pass_at_k_table(study):
    _, tables = study
    pw, pk = tables["pairwise.tsv"], tables["pass_at_k.tsv"]
    for k in KS:
        rows = pw[(pw["measure"] == f"pass@{k}") & (pw["model_b"] == BASE)]
        assert rows.empty  # the base is the first column: it is always model_a
        rows = pw[(pw["measure"] == f"pass@{k}") & (pw["model_a"] == BASE)].set_index("model_b")
        at = pk[pk["k"] == k].set_index("model")
        close(rows.loc[ADAPTERS, "diff"], -at.loc[ADAPTERS, "diff"])
        close(rows.loc[ADAPTERS, "p"], at.loc[ADAPTERS, "p"])


# -- forgetting vs KL -----------------------------------------------------------------------------


def test_forgetting_vs_kl(study):
    (_, raw, _, held, adapters), tables = study
    c = tables["forgetting_vs_kl.tsv"].set_index("predictor")
    assert c.index.tolist() == [
        "kl_forward_sequence", "kl_forward_token", "kl_reverse_sequence", "kl_reverse_token", "delta_norm",
    ]  # fmt: skip
    assert (c["outcome"] == "forgetting").all() and (c["n"] == len(ADAPTERS)).all()
    ce = _ref_ce(held)
    forgetting = [float((ce[m] - ce[BASE]).mean()) for m in ADAPTERS]
    for direction in ("forward", "reverse"):
        for unit in ("sequence", "token"):
            per = {m: ref_per_item_kl(raw[m], direction) for m in ADAPTERS}
            x = [
                per[m]["mean"].mean() if unit == "sequence" else per[m]["sum"].sum() / per[m]["tokens"].sum()
                for m in ADAPTERS
            ]
            res = sps.spearmanr(x, forgetting)
            close(c.loc[f"kl_{direction}_{unit}", ["rho", "p"]], [res.statistic, res.pvalue])
    norms = pd.read_csv(adapters, sep="\t").set_index("label")["norm"]
    res = sps.spearmanr(norms.loc[ADAPTERS].to_numpy(), forgetting)
    close(c.loc["delta_norm", ["rho", "p"]], [res.statistic, res.pvalue])
    assert (c["ci_low"] <= c["rho"]).all() and (c["rho"] <= c["ci_high"]).all()
    assert c["rho"].abs().max() > 0  # not a constant


# -- files, determinism, errors -------------------------------------------------------------------


def test_written_files(study, tmp_path):
    s, tables = study
    assert set(tables) == TABLES
    without = run_stats(s, tmp_path / "no_heldout", heldout=False)
    assert set(without) == {"pass_at_k.tsv", "kl.tsv", "pairwise.tsv"}
    assert set(without["pairwise.tsv"]["measure"]) == {f"pass@{k}" for k in KS} | {"kl_forward", "kl_reverse"}
    pd.testing.assert_frame_equal(without["kl.tsv"], tables["kl.tsv"])


@pytest.mark.heavy
def test_deterministic_and_base_position_free(study, tmp_path):
    s, _ = study
    run_stats(s, tmp_path / "a")
    paths, raw, hpaths, held, adapters = s
    # the base given last in both dicts: the same tables
    moved = (
        {**{m: paths[m] for m in ADAPTERS}, BASE: paths[BASE]},
        raw,
        {**{m: hpaths[m] for m in ADAPTERS}, BASE: hpaths[BASE]},
        held,
        adapters,
    )
    run_stats(moved, tmp_path / "b")
    run_stats(s, tmp_path / "c", seed=SEED + 1)
    for name in TABLES:
        a, b = (tmp_path / "a" / name).read_bytes(), (tmp_path / "b" / name).read_bytes()
        assert a == b, name
    # another bootstrap seed moves the intervals, not the estimates
    a, c = (
        pd.read_csv(tmp_path / "a" / "pass_at_k.tsv", sep="\t"),
        pd.read_csv(tmp_path / "c" / "pass_at_k.tsv", sep="\t"),
    )
    close(a["value"], c["value"])
    assert not np.allclose(a["ci_low"], c["ci_low"])


def _rewrite(path: Path, df: pd.DataFrame) -> None:
    df.to_parquet(path, index=False)


def test_no_base_stops(study, tmp_path):
    (paths, *_), _ = study
    with pytest.raises(ValueError, match="base"):
        behaviour_statistics({m: paths[m] for m in ADAPTERS}, tmp_path, ks=KS, temperature=1.0, n_boot=10)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("change", ["drop_item", "extra_item"])
def test_adapter_with_other_items_stops_naming_it(tmp_path, change):
    paths, raw, *_ = s = build_study(tmp_path / "in")
    t = raw["dpo/seed4"]
    if change == "drop_item":
        t = t[t["id"] != "q5"]
    else:
        t = pd.concat([t, t[t["id"] == "q5"].assign(id="q_new")], ignore_index=True)
    _rewrite(paths["dpo/seed4"], t)
    with pytest.raises(ValueError, match="'dpo/seed4'"):
        run_stats(s, tmp_path / "out")


def test_adapter_kl_rows_with_other_items_stop_naming_it(tmp_path):
    paths, raw, *_ = s = build_study(tmp_path / "in", pass_temperature=0.7)
    t = raw["kto/seed1"]
    _rewrite(paths["kto/seed1"], t[~((t["id"] == "q2") & (t["temperature"] == 1.0) & (t["source"] == "self"))])
    with pytest.raises(ValueError, match="'kto/seed1'"):
        run_stats(s, tmp_path / "out", temperature=0.7)


def test_missing_pass_temperature_stops(tmp_path):
    s = build_study(tmp_path / "in")
    with pytest.raises(ValueError, match="temperature 0.7"):
        run_stats(s, tmp_path / "out", temperature=0.7)


def test_held_out_tables_without_the_base_s_stop_naming_it(study, tmp_path):
    """Regression: this was a bare ``KeyError: 'base'`` before the check could name what is missing."""
    s, _ = study
    paths, raw, hpaths, held, adapters = s
    with pytest.raises(ValueError, match="base's held-out"):
        run_stats((paths, raw, {m: hpaths[m] for m in ADAPTERS}, held, adapters), tmp_path / "out")


def test_equal_pass_at_k_of_different_sample_counts_are_ties(tmp_path):
    """Regression: with 4 samples of which 2 correct the base's pass@1 is 0.5; an adapter with 8 samples of
    which 4 correct had 1 - (1 - 1/5)(1 - 1/6)(1 - 1/7)(1 - 1/8) = 0.4999999999999999 from the product
    form, and the sign test read every item as "base higher" (p = 2 / 2**6 instead of 1). Equal values
    must be equal floats (pass_at_k is exact now), and ties."""
    rng = np.random.default_rng(5)
    n_items = 6
    frames = {}
    for model, n in ((BASE, 4), ("wide/seed1", 8)):
        rows = []
        for i in range(n_items):
            for j in range(n):
                nt = int(rng.integers(2, 20))
                rows.append(
                    {"test_set": "toy", "id": f"q{i}", "source": "self", "temperature": 1.0, "sample": j,
                     "completion": "c", "token_ids": [1] * nt, "n_tokens": nt, "finish_reason": "stop",
                     "correct": float(j % 2 == 0), "logp": -float(nt), "logp_base": -float(nt) - (model != BASE)}
                )  # fmt: skip
        frames[model] = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    frames["wide/seed1"] = pd.concat(
        [frames["wide/seed1"], frames[BASE].assign(source="base", logp=frames[BASE]["logp"] - 0.5)], ignore_index=True
    )
    paths = {}
    for model, t in frames.items():
        paths[model] = tmp_path / f"{model.replace('/', '_')}.parquet"
        t.to_parquet(paths[model], index=False)
    behaviour_statistics(paths, tmp_path / "out", ks=[1, 2, 4], temperature=1.0, n_boot=50)
    pk = pd.read_csv(tmp_path / "out" / "pass_at_k.tsv", sep="\t").set_index(["model", "k"])
    pw = pd.read_csv(tmp_path / "out" / "pairwise.tsv", sep="\t").set_index("measure")
    # brute force: pass@1 is 0.5 for both on every item: no non-zero difference
    assert brute_pass_at_k([1, 0, 1, 0], 1) == brute_pass_at_k([1, 0] * 4, 1) == 0.5
    assert abs(pk.loc[("wide/seed1", 1), "diff"]) < 1e-12
    row = pw.loc["pass@1"]
    assert (row["n_a_higher"], row["n_b_higher"], row["n_tied"]) == (0, 0, n_items)
    assert pk.loc[("wide/seed1", 1), "p"] == 1.0


def test_heldout_with_other_items_stops(tmp_path):
    s = build_study(tmp_path / "in")
    _, _, hpaths, held, _ = s
    _rewrite(hpaths["sft/seed2"], held["sft/seed2"].iloc[1:])
    with pytest.raises(ValueError, match="'sft/seed2'"):
        run_stats(s, tmp_path / "out")


@pytest.mark.parametrize(
    "where", [("sft/seed1", "self", "logp"), ("kto/seed7", "base", "logp"), ("dpo/seed3", "self", "logp_base")]
)
def test_nan_in_a_kl_row_stops(tmp_path, where):
    model, source, column = where
    paths, raw, *_ = s = build_study(tmp_path / "in")
    t = raw[model].copy()
    row = t.index[(t["source"] == source) & (t["temperature"] == 1.0)][3]
    t.loc[row, column] = np.nan
    _rewrite(paths[model], t)
    with pytest.raises(ValueError, match="KL"):
        run_stats(s, tmp_path / "out")


def test_nan_logp_at_the_pass_temperature_is_fine(study_t07):
    """The pass@k draws at another temperature carry no logp (NaN); no KL reads them."""
    (_, raw, _, _, _), tables = study_t07
    assert raw[BASE].loc[raw[BASE]["temperature"] == 0.7, "logp"].isna().all()
    assert tables["kl.tsv"]["value"].notna().all()
