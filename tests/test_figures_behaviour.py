"""Each figure writer produces non-empty .png and .pdf files, atomically, from small frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lossgeom.behaviour.cka import cka_matrix
from lossgeom.behaviour.stats import accuracy_table, pairwise_tests
from lossgeom.cli import main
from lossgeom.errors import InputError
from lossgeom.figures.accuracy import plot_accuracy, plot_pairwise_pvalues
from lossgeom.figures.connectivity import plot_lmc
from lossgeom.figures.representations import plot_cka_heatmap, plot_cka_profiles

MODELS = ["SFT", "RFT", "DFT", "DPO"]


@pytest.fixture(scope="module")
def correct():
    rng = np.random.default_rng(0)
    acc = [0.87, 0.88, 0.87, 0.935]
    return pd.DataFrame((rng.uniform(size=(300, 4)) < acc).astype(int), columns=MODELS)


@pytest.fixture(scope="module")
def cka_df():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(4, 12, 6))
    acts = {m: base + s * rng.normal(size=base.shape) for m, s in zip(MODELS, [0, 0.1, 0.5, 2.0])}
    return cka_matrix(acts)


def _check(paths, tmp_path):
    png, pdf = paths
    assert png.suffix == ".png" and pdf == png.with_suffix(".pdf")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    assert png.stat().st_size > 1000 and pdf.stat().st_size > 1000
    # no temporary files left behind
    assert not [p for p in png.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.heavy
def test_accuracy_and_pvalues(tmp_path, correct):
    _check(plot_accuracy(accuracy_table(correct, n_boot=200), tmp_path / "acc.png"), tmp_path)
    _check(plot_pairwise_pvalues(pairwise_tests(correct), tmp_path / "sub" / "p.png"), tmp_path)


def test_lmc(tmp_path):
    alphas = np.linspace(0, 1, 6)
    rows = [
        {"pair": pair, "alpha": a, "metric": metric, "value": v0 + (v1 - v0) * a + bump * a * (1 - a)}
        for pair, v0, v1, bump in [("RIFT→DPO", 3.8, 8.6, 10.0), ("SFT→GRPO", 2.1, 4.9, 0.0)]
        for metric in ["answer_ce", "answer_ce_per_token"]
        for a in alphas
    ]
    out = plot_lmc(pd.DataFrame(rows), tmp_path / "lmc.png", ylabels={"answer_ce": "answer CE (nats)"})
    _check(out, tmp_path)
    bad = pd.DataFrame(rows).assign(alpha=lambda d: d.alpha * 2)
    with pytest.raises(InputError, match="alpha"):
        plot_lmc(bad, tmp_path / "bad.png")


@pytest.mark.heavy
def test_cka_figures(tmp_path, cka_df):
    _check(plot_cka_profiles(cka_df, "SFT", tmp_path / "prof.png"), tmp_path)
    _check(plot_cka_heatmap(cka_df, 2, tmp_path / "heat.png", column="cka_debiased"), tmp_path)
    with pytest.raises(InputError, match="no pair involving reference model 'nobody'"):
        plot_cka_profiles(cka_df, "nobody", tmp_path / "x.png")


def test_rejects_non_png_path(tmp_path, cka_df):
    with pytest.raises(InputError, match=".png"):
        plot_cka_heatmap(cka_df, 0, tmp_path / "heat.pdf")


def test_accuracy_grouped_by_method_with_base_line(tmp_path):
    """Labels method/seed are grouped by method; the base is a reference line, not a bar."""
    t = pd.DataFrame(
        {
            "model": ["base", "sft/seed1", "dpo/seed1", "sft/seed2"],
            "n": 30,
            "accuracy": [0.1, 0.2, 0.3, 0.0],
            "ci_low": [0.03, 0.1, 0.15, 0.0],
            "ci_high": [0.25, 0.37, 0.48, 0.114],
            "ci_method": "wilson",
        }
    )
    _check(plot_accuracy(t, tmp_path / "acc.png"), tmp_path)


def test_lmc_pairs_marks_the_barrier(tmp_path):
    from lossgeom.figures.connectivity import plot_lmc_pairs

    alphas = np.linspace(0, 1, 5)
    rows = [
        {
            "pair_a": "rift/seed1",
            "pair_b": "dpo/seed1",
            "alpha": a,
            "metric": "answer_ce",
            "value": 3.8 + 4.8 * a + 3 * a * (1 - a),
        }
        for a in alphas
    ]
    rows += [
        {"pair_a": "sft/seed1", "pair_b": "sft/seed2", "alpha": a, "metric": "answer_ce", "value": 2.0} for a in alphas
    ]
    summary = pd.DataFrame(
        [
            {"pair_a": "rift/seed1", "pair_b": "dpo/seed1", "metric": "answer_ce", "barrier": 0.75},
            {"pair_a": "sft/seed1", "pair_b": "sft/seed2", "metric": "answer_ce", "barrier": 0.0},
        ]
    )
    _check(plot_lmc_pairs(pd.DataFrame(rows), summary, tmp_path / "pairs.png"), tmp_path)
    with pytest.raises(InputError, match="no metric"):
        plot_lmc_pairs(pd.DataFrame(rows), summary, tmp_path / "x.png", metric="accuracy")


# over ~0.5 s but not heavy: the fast loop's one test of lossgeom/figures/training.py (scripts/test.sh)
def test_training_curves_and_method_summary(tmp_path):
    from lossgeom.figures.geometry import plot_method_summary
    from lossgeom.figures.training import plot_training_curves

    paths = {}
    for label in ("sft/seed1", "dpo/seed1", "sft/seed2"):
        path = tmp_path / (label.replace("/", "_") + ".tsv")
        pd.DataFrame(
            {
                "step": [1, 2, 3],
                "loss": [3.0, 2.0, 1.5],
                "grad_norm": [1.0, 0.8, 0.7],
                "learning_rate": [1e-3, 8e-4, 1e-4],
            }
        ).to_csv(path, sep="\t", index=False)
        paths[label] = path
    _check(plot_training_curves(paths, tmp_path / "curves.png", analysis_step=2), tmp_path)
    bad = tmp_path / "bad.tsv"
    pd.DataFrame({"step": [1], "loss": [1.0]}).to_csv(bad, sep="\t", index=False)
    with pytest.raises(InputError, match="lacks column"):
        plot_training_curves({"sft/seed1": bad}, tmp_path / "bad.png")
    rows = []
    for a, b, init, data, v in (
        ("sft/seed1", "dpo/seed1", "shared", "same", 0.1),
        ("sft/seed2", "dpo/seed2", "shared", "same", 0.2),
        ("sft/seed1", "sft/seed1data5", "shared", "other", 0.97),
        ("sft/seed1", "sft/seed2", "other", "other", 0.2),
        ("sft/seed1", "dpo/seed2", "other", "other", 0.0),
    ):
        rows.append(
            {
                "pair_a": a,
                "pair_b": b,
                "method_a": a.split("/")[0],
                "method_b": b.split("/")[0],
                "init": init,
                "data_order": data,
                "metric": "cosine_global",
                "value": v,
                "random": 0.0,
            }
        )
    _check(plot_method_summary(pd.DataFrame(rows), "cosine_global", tmp_path / "summary.png"), tmp_path)


@pytest.mark.heavy
def test_figure_commands_write_the_files_their_rules_declare(tmp_path, correct):
    """accuracy-, connectivity- and representations-figures, from the tables their rules read, write
    exactly the PNGs and PDFs those rules declare (workflow/rules/behaviour.smk)."""
    models = ["base", "sft/seed1", "dpo/seed1"]
    table = correct.iloc[:, :3].set_axis(models, axis=1)
    frames = []
    for t in ("toy", "gsm8k"):  # one pair of accuracy figures per test set
        frames.append(
            (
                accuracy_table(table, n_boot=100).reset_index().assign(test_set=t),
                pairwise_tests(table).assign(test_set=t),
            )
        )
    pd.concat([f[0] for f in frames]).to_csv(tmp_path / "accuracy.tsv", sep="\t", index=False)
    pd.concat([f[1] for f in frames]).to_csv(tmp_path / "pairwise.tsv", sep="\t", index=False)
    alphas = np.linspace(0, 1, 3)
    pd.DataFrame(
        [
            {"pair_a": "sft/seed1", "pair_b": "dpo/seed1", "alpha": a, "metric": m, "value": 2 + a * (1 - a)}
            for m in ("answer_ce", "accuracy")
            for a in alphas
        ]
    ).to_csv(tmp_path / "curves.tsv", sep="\t", index=False)
    pd.DataFrame(
        [
            {"pair_a": "sft/seed1", "pair_b": "dpo/seed1", "metric": m, "barrier": 0.25}
            for m in ("answer_ce", "accuracy")
        ]
    ).to_csv(tmp_path / "summary.tsv", sep="\t", index=False)
    rng = np.random.default_rng(2)
    base = rng.normal(size=(3, 10, 4))
    cka_matrix({m: base + s * rng.normal(size=base.shape) for m, s in zip(models, (0, 0.1, 1.0))}).to_csv(
        tmp_path / "cka.tsv", sep="\t", index=False
    )
    out = tmp_path / "figures"
    out.mkdir()
    d = str(tmp_path)
    assert main(["measure-figures", "accuracy", "--tables", d, "--out", str(out)]) == 0
    assert (
        main(
            ["connectivity-figures", "--summary", f"{d}/summary.tsv", "--curves", f"{d}/curves.tsv", "--out", str(out)]
        )
        == 0
    )
    assert main(["measure-figures", "activations", "--tables", d, "--out", str(out)]) == 0
    names = [
        "accuracy_toy",
        "accuracy_gsm8k",
        "mcnemar_toy",
        "mcnemar_gsm8k",
        "lmc",
        "lmc_pairs",
        "cka_profiles",
        "cka_last_layer",
    ]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{ext}" for n in names for ext in ("png", "pdf"))
    for n in names:
        _check((out / f"{n}.png", out / f"{n}.pdf"), out)


@pytest.mark.heavy
def test_a_figure_command_that_fails_part_way_replaces_none_of_its_figures(tmp_path, correct, monkeypatch, capsys):
    """The accuracy measure's figures command writes four figures (eight files); a full disk at the third figure leaves all eight of
    the earlier run's files in place (the same inodes: none replaced) and nothing beside them (issue 31)."""
    import errno

    from matplotlib.figure import Figure

    table = correct.iloc[:, :3].set_axis(["base", "sft/seed1", "dpo/seed1"], axis=1)
    acc = pd.concat([accuracy_table(table, n_boot=100).reset_index().assign(test_set=t) for t in ("toy", "gsm8k")])
    pw = pd.concat([pairwise_tests(table).assign(test_set=t) for t in ("toy", "gsm8k")])
    acc.to_csv(tmp_path / "accuracy.tsv", sep="\t", index=False)
    pw.to_csv(tmp_path / "pairwise.tsv", sep="\t", index=False)
    out = tmp_path / "figures"
    out.mkdir()
    argv = ["measure-figures", "accuracy", "--tables", str(tmp_path)]
    assert main([*argv, "--out", str(out)]) == 0
    before = {p.name: p.stat().st_ino for p in out.iterdir()}
    assert len(before) == 8
    calls = []
    savefig = Figure.savefig

    def full_disk_at_the_fifth_file(self, fname, *args, **kw):
        calls.append(fname)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(fname))
        return savefig(self, fname, *args, **kw)

    monkeypatch.setattr(Figure, "savefig", full_disk_at_the_fifth_file)
    assert main([*argv, "--out", str(out)]) == 2
    assert "no space left" in capsys.readouterr().err
    assert len(calls) == 5
    assert {p.name: p.stat().st_ino for p in out.iterdir()} == before


# The pass@k and KL/forgetting figures (lossgeom.figures.behaviour), from the tables behaviour_statistics
# writes for a synthetic study: samples and held-out tables of the base and every adapter, built below.

# method: (true forward KL per token, pass@k logit shift); reverse KL is 1.5x forward, forgetting ~ KL
STUDY = {
    "sft": (0.30, 0.6),
    "rft": (0.20, 0.8),
    "dft": (0.10, 0.4),
    "rift": (0.15, 0.9),
    "grpo": (0.02, 0.5),
    "dpo": (0.001, 0.1),
}
SINGLE = {"sft_lr10x": (1.2, -0.4), "online_grpo": (0.01, 0.3)}
N_ITEMS, N_SAMPLES, KS, T_PASS = 40, 8, [1, 2, 4, 8], 0.6


def _draws(rng, p_item, temperature, kl_per_token=None):
    """n samples per item at ``temperature``: SAMPLE_COLUMNS less test_set/source/logp (filled by the caller)."""
    rows = []
    for i, p in enumerate(p_item):
        for j in range(N_SAMPLES):
            n = int(15 + rng.poisson(30))
            rows.append(
                {
                    "id": f"q{i}",
                    "temperature": temperature,
                    "sample": j,
                    "completion": f"answer {j}",
                    "token_ids": rng.integers(0, 50, n).tolist(),
                    "n_tokens": n,
                    "finish_reason": "stop" if rng.uniform() < 0.95 else "length",
                    "correct": float(rng.uniform() < p),
                }
            )
    return pd.DataFrame(rows)


def _synthetic_study(root, methods, seeds=(42, 123), single=None, rng_seed=0):
    """Samples and held-out parquet files of the base and of every adapter ``{method}/seed{seed}``, and an
    adapters table; returns (samples paths, heldout paths, adapters table path)."""
    from lossgeom.behaviour.sampled import SAMPLE_COLUMNS
    from lossgeom.fsutil import write_table

    rng = np.random.default_rng(rng_seed)
    logit = rng.uniform(-3.0, 1.5, N_ITEMS)
    p_base = 1.0 / (1.0 + np.exp(-logit))

    def table(kind, **cols):
        return kind.assign(test_set="toy", logp_sampler=np.nan, **cols)

    base_pass = table(_draws(rng, p_base, T_PASS), source="self", logp=np.nan, logp_base=np.nan)
    base_kl = table(_draws(rng, p_base, 1.0), source="self")
    base_kl["logp"] = base_kl["logp_base"] = -1.2 * base_kl["n_tokens"] + rng.normal(0, 2, len(base_kl))
    ce_base = 2.0 + 0.3 * rng.normal(size=60)
    heldout_ids = [f"h{i}" for i in range(60)]
    paths = {"base": root / "samples" / "base.parquet"}
    heldout = {"base": root / "heldout" / "base.parquet"}
    write_table(pd.concat([base_pass, base_kl], ignore_index=True)[SAMPLE_COLUMNS], paths["base"])
    write_table(pd.DataFrame({"id": heldout_ids, "ce": ce_base, "n_tokens": 100}), heldout["base"])
    runs = [(m, s, *v) for m, v in methods.items() for s in seeds] + [(m, 42, *v) for m, v in (single or {}).items()]
    norms = []
    for method, seed, kl_f, shift in runs:
        label = f"{method}/seed{seed}"
        kl_f = kl_f * (1 + 0.15 * rng.normal())
        p = 1.0 / (1.0 + np.exp(-(logit + shift + 0.15 * rng.normal(size=N_ITEMS))))
        own_pass = table(_draws(rng, p, T_PASS), source="self", logp=np.nan, logp_base=np.nan)
        own_kl = table(_draws(rng, p, 1.0), source="self")
        n = own_kl["n_tokens"].to_numpy(float)
        own_kl["logp_base"] = -1.2 * n + rng.normal(0, 2, len(n))
        own_kl["logp"] = own_kl["logp_base"] + kl_f * n + 0.3 * np.sqrt(n) * rng.normal(size=len(n))
        rev = base_kl.assign(source="base")
        n = rev["n_tokens"].to_numpy(float)
        rev["logp"] = rev["logp_base"] - 1.5 * kl_f * n + 0.3 * np.sqrt(n) * rng.normal(size=len(n))
        paths[label] = root / "samples" / f"{method}_seed{seed}.parquet"
        write_table(pd.concat([own_pass, own_kl, rev], ignore_index=True)[SAMPLE_COLUMNS], paths[label])
        ce = ce_base + 0.8 * kl_f + 0.02 + 0.05 * rng.normal(size=60)
        heldout[label] = root / "heldout" / f"{method}_seed{seed}.parquet"
        write_table(pd.DataFrame({"id": heldout_ids, "ce": ce, "n_tokens": 100}), heldout[label])
        norms.append({"label": label, "norm": 10 * np.sqrt(kl_f) + rng.uniform(0, 1)})
    adapters = root / "adapters.tsv"
    pd.DataFrame(norms).to_csv(adapters, sep="\t", index=False)
    return paths, heldout, adapters


def _stats(root, forgetting=True, **study):
    from lossgeom.behaviour.sampled_stats import behaviour_statistics

    samples, heldout, adapters = _synthetic_study(root, **study)
    extra = {"heldout": heldout, "adapters_table": adapters} if forgetting else {}
    behaviour_statistics(samples, root / "stats", ks=KS, temperature=T_PASS, n_boot=200, **extra)
    return root / "stats"


@pytest.fixture(scope="module")
def full_study(tmp_path_factory):
    """The tables of base + 6 methods x 2 seeds + 2 single-seed runs, with forgetting."""
    return _stats(tmp_path_factory.mktemp("study"), methods=STUDY, single=SINGLE)


def _check_behaviour_figures(out):
    for name in ("pass_at_k", "kl_forgetting"):
        png, pdf = out / f"{name}.png", out / f"{name}.pdf"
        _check((png, pdf), out)
        from PIL import Image

        with Image.open(png) as im:
            im.load()
            assert im.size[0] > 1500 and im.size[1] > 800
        assert png.stat().st_size > 50_000


@pytest.mark.heavy
def test_behaviour_figures_full_study(tmp_path, full_study):
    kl = pd.read_csv(full_study / "kl.tsv", sep="\t")
    assert kl["model"].nunique() == 14 and (kl[kl["unit"] == "token"]["value"] < 0.01).any()
    corr = pd.read_csv(full_study / "forgetting_vs_kl.tsv", sep="\t").set_index("predictor")
    assert np.isfinite(corr.loc["kl_forward_token", "rho"]) and "delta_norm" in corr.index
    # through the command the rule behaviour_figures runs (workflow/rules/behaviour.smk)
    assert main(["measure-figures", "samples", "--tables", str(full_study), "--out", str(tmp_path / "figs")]) == 0
    _check_behaviour_figures(tmp_path / "figs")
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(
        f"{n}.{e}" for n in ("pass_at_k", "kl_forgetting") for e in ("png", "pdf")
    )


@pytest.mark.heavy
def test_behaviour_figures_without_forgetting_and_missing_tables(tmp_path, full_study):
    import shutil

    from lossgeom.figures.behaviour import behaviour_figures

    tables = tmp_path / "tables"
    tables.mkdir()
    for name in ("pass_at_k", "kl"):
        shutil.copy(full_study / f"{name}.tsv", tables)
    behaviour_figures(tables, tmp_path / "figs")  # forgetting not configured: panels say so
    _check_behaviour_figures(tmp_path / "figs")
    shutil.copy(full_study / "forgetting.tsv", tables)  # one of the pair without the other
    with pytest.raises(FileNotFoundError, match="forgetting_vs_kl.tsv"):
        behaviour_figures(tables, tmp_path / "figs")
    (tables / "kl.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"kl\.tsv does not exist"):
        behaviour_figures(tables, tmp_path / "figs")
    pd.read_csv(full_study / "kl.tsv", sep="\t").drop(columns="seed_floor").to_csv(
        tables / "kl.tsv", sep="\t", index=False
    )
    with pytest.raises(InputError, match=r"kl.tsv lacks column\(s\) \['seed_floor'\]"):
        behaviour_figures(tables, tmp_path / "figs")


# over ~0.5 s but not heavy: the fast loop's one test of lossgeom/figures/behaviour.py (scripts/test.sh)
def test_behaviour_figures_single_adapter_nan_rho(tmp_path):
    from lossgeom.figures.behaviour import behaviour_figures

    tables = _stats(tmp_path, methods={}, single={"sft": STUDY["sft"]})
    corr = pd.read_csv(tables / "forgetting_vs_kl.tsv", sep="\t")
    assert corr["rho"].isna().all() and (corr["n"] == 1).all()
    behaviour_figures(tables, tmp_path / "figs")
    _check_behaviour_figures(tmp_path / "figs")
