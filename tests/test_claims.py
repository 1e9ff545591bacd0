"""Tests of lossgeom.claims: the paper's numbers file and the verdict rules on hand-built run tables."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from lossgeom.claims.check import CHECKS, OUTPUT_COLUMNS, write_claims
from lossgeom.claims.paper import paper_claims
from lossgeom.claims.verdicts import Judged, ranges_text, replicates_text, verdict
from lossgeom.errors import InputError
from lossgeom.geometry.spectrum import MODULE_STATS, spectrum_summary
from lossgeom.geometry.tables import NOISE_FLOOR_COLUMNS
from lossgeom.labels import Label

ROLES = {"sft": "sft", "rft": "rft", "dft": "dft", "rift": "rift", "grpo": "grpo", "dpo": "dpo"}
# shared-init cosines of a run shaped like the paper's
COS = {
    ("sft", "rft"): 0.97,
    ("sft", "rift"): 0.96,
    ("rft", "rift"): 0.97,
    ("dft", "sft"): 0.55,
    ("dft", "rift"): 0.5,
    ("dft", "rft"): 0.5,
    ("dpo", "sft"): 0.05,
    ("dpo", "rft"): 0.06,
    ("dpo", "rift"): 0.04,
    ("dpo", "dft"): 0.1,
    ("grpo", "sft"): 0.74,
    ("grpo", "rft"): 0.75,
    ("grpo", "rift"): 0.73,
    ("grpo", "dft"): 0.4,
    ("grpo", "dpo"): 0.1,
}
ANGLE = {"rft": 6.7, "rift": 8.2, "grpo": 18.5, "dft": 26.7, "dpo": 54.6}
# the replicates of a run shaped like the default study's: the shared-init seed, its data-order replicate,
# another init seed
REPLICATES = ("seed42", "seed42data7", "seed123")


def _cos(a, b):
    return COS.get((a, b), COS.get((b, a)))


def _noise_floor(data_floor=0.98) -> pd.DataFrame:
    rows = []
    labels = [Label(m, 42) for m in ROLES] + [Label(m, 123) for m in ROLES] + [Label(m, 42, 7) for m in ROLES]
    for la, lb in itertools.combinations(labels, 2):
        a, b, ma, mb = str(la), str(lb), la.method, lb.method
        shared, same_data = la.init_seed == lb.init_seed, la.data_order_seed == lb.data_order_seed
        for metric in ("cosine_global", "top1_angle_left_median", "u1_agreement", "v1_agreement", "norm_ratio"):
            if ma == mb:
                v = {
                    "cosine_global": data_floor if shared else 0.2,
                    "top1_angle_left_median": 3.0,
                    "u1_agreement": 0.99 if not shared else 1.0,
                    "v1_agreement": 0.1 if not shared else 1.0,
                    "norm_ratio": 1.0,
                }[metric]
            elif shared:
                v = {
                    "cosine_global": _cos(ma, mb),
                    "top1_angle_left_median": ANGLE.get(mb if ma == "sft" else ma, 40.0),
                    "u1_agreement": 0.5,
                    "v1_agreement": 0.5,
                    "norm_ratio": 1.0,
                }[metric]
            else:
                v = 0.05
            rows.append(
                {
                    "pair_a": a,
                    "pair_b": b,
                    "method_a": ma,
                    "method_b": mb,
                    "kind": "same-method" if ma == mb else "cross-method",
                    "init": "shared" if shared else "other",
                    "data_order": "same" if same_data else "other",
                    "metric": metric,
                    "value": v,
                    "data_floor": data_floor,
                    "seed_floor": 0.2,
                    "random": 0.0,
                }
            )
    df = pd.DataFrame(rows)
    return df.reindex(columns=NOISE_FLOOR_COLUMNS)


def _write_run(tmp_path, dpo_acc=0.9, barrier_rift_dpo=2.0, data_floor=0.95):
    geo = tmp_path / "geometry"
    geo.mkdir()
    _noise_floor(data_floor).to_csv(geo / "noise_floor.tsv", sep="\t", index=False)
    pd.DataFrame(
        {
            "label": [f"{m}/{r}" for r in REPLICATES for m in ROLES],
            "norm": [2.8, 2.8, 2.0, 3.0, 2.5, 0.2] * len(REPLICATES),
            "effective_rank_mean": [4, 4, 4, 4, 3.8, 6.1] * len(REPLICATES),
        }
    ).to_csv(geo / "adapters.tsv", sep="\t", index=False)
    ev = tmp_path / "eval"
    ev.mkdir()
    models = ["base"] + [f"{m}/seed{s}" for s in (42, 123) for m in ROLES]  # data-order replicates: no evaluation
    acc = {"base": 0.2} | {
        f"{m}/seed{s}": a for s in (42, 123) for m, a in zip(ROLES, (0.6, 0.6, 0.6, 0.61, 0.6, dpo_acc))
    }
    rows = []
    for a, b in itertools.combinations(models, 2):
        p = 1.0 if abs(acc[a] - acc[b]) < 0.05 else 1e-6
        rows.append({"test_set": "toy", "model_a": a, "model_b": b, "acc_a": acc[a], "acc_b": acc[b], "p_holm": p})
    pd.DataFrame(rows).to_csv(ev / "pairwise.tsv", sep="\t", index=False)
    sweeps = [
        ("sft", "grpo", 2.0, 5.0, 0.0),
        ("grpo", "rift", 5.0, 2.2, 0.1),
        ("rift", "dpo", 3.8, 8.6, barrier_rift_dpo),
    ]
    lmc = pd.DataFrame(
        [
            {
                "pair_a": f"{a}/seed{s}",
                "pair_b": f"{b}/seed{s}",
                "metric": "answer_ce",
                "value_a": va,
                "value_b": vb,
                "barrier": bar,
            }
            for s in (42, 123)
            for a, b, va, vb, bar in sweeps
        ]
        + [  # a seed pair from each side of the shared init: the seed's adapter and its data-order replicate
            {
                "pair_a": f"sft/{r}",
                "pair_b": "sft/seed123",
                "metric": "answer_ce",
                "value_a": 2.0,
                "value_b": 2.0,
                "barrier": 0.0,
            }
            for r in ("seed42", "seed42data7")
        ]
    )
    lmc.to_csv(tmp_path / "lmc.tsv", sep="\t", index=False)
    cka = []
    for layer, s in itertools.product(range(4), (42, 123)):
        for a, b, v in (("sft", "rift", 0.995), ("sft", "grpo", 0.85), ("grpo", "dpo", 0.45), ("dft", "dpo", 0.45)):
            cka.append({"model_a": f"{a}/seed{s}", "model_b": f"{b}/seed{s}", "layer": layer, "cka": v})
    pd.DataFrame(cka).to_csv(tmp_path / "cka.tsv", sep="\t", index=False)
    return geo, ev


# base-spectrum statistics of a run shaped like the anchors' claims: (rotation deg, its chance, sv change,
# intruders) per method; a data-order replicate differs by JITTER, another init seed by 2 x JITTER
SPECTRUM = {
    "sft": (10.0, 10.0, 0.05, 2),
    "rft": (9.0, 9.0, 0.05, 1),
    "rift": (9.5, 9.5, 0.05, 3),
    "dft": (8.0, 8.0, 0.04, 0),
    "grpo": (4.0, 8.0, 0.02, 0),
    "dpo": (2.0, 4.0, 0.01, 0),
}
JITTER = 0.1


def _write_spectrum(tmp_path, spectrum=SPECTRUM):
    """base_spectrum/summary.tsv, through spectrum_summary (so its floors are the code's), from a modules
    table of two modules per adapter holding the same numbers."""
    rows = []
    for m, (rot, chance, sv, intr) in spectrum.items():
        for label, j in ((Label(m, 42), 0.0), (Label(m, 42, 7), JITTER), (Label(m, 123), 2 * JITTER)):
            for module in ("q", "k"):
                stats = {s: 0.0 for s in MODULE_STATS}
                stats.update(rotation_left_deg=rot + j, sv_change=sv + j / 100, intruders=intr / 2)
                chance_stats = dict(stats, rotation_left_deg=chance, sv_change=sv, intruders=1)
                rows.append(
                    {
                        "label": str(label),
                        "module": module,
                        **stats,
                        **{f"chance_{k}": v for k, v in chance_stats.items()},
                    }
                )
    out = tmp_path / "base_spectrum"
    out.mkdir(exist_ok=True)
    spectrum_summary(pd.DataFrame(rows)).to_csv(out / "summary.tsv", sep="\t", index=False)
    return out


# forward per-token KL and forgetting per adapter (seeds 42 and 123), shaped like RL's Razor: forgetting
# grows with the KL; online GRPO closest to the base
KL = {"sft": 0.40, "rft": 0.42, "dft": 0.30, "rift": 0.38, "grpo": 0.20, "dpo": 0.02, "online_grpo": 0.05}
FORGET = {"sft": 1.8, "rft": 1.9, "dft": 1.3, "rift": 1.7, "grpo": 0.9, "dpo": 0.1, "online_grpo": 0.2}


def _write_behaviour(tmp_path, kl=KL, forget=FORGET, floor=0.01):
    """behaviour/kl.tsv and forgetting.tsv by hand, forgetting_vs_kl.tsv through the code's own
    correlation_table (and seed floors through its seed_floor), as behaviour-stats writes them."""
    from lossgeom.behaviour.sampled_stats import correlation_table, seed_floor

    kl_rows, f_rows = [], []
    for m in kl:
        for seed, jitter in ((42, 0.0), (123, floor)):
            label = str(Label(m, seed))
            for direction in ("forward", "reverse"):
                for unit in ("sequence", "token"):
                    v = (kl[m] + jitter) * (1 if unit == "token" else 40) * (1 if direction == "forward" else 2)
                    kl_rows.append(
                        {
                            "model": label,
                            "method": m,
                            "seed": seed,
                            "direction": direction,
                            "unit": unit,
                            "value": v,
                            "ci_low": v * 0.9,
                            "ci_high": v * 1.1,
                        }
                    )
            f_rows.append({"model": label, "method": m, "seed": seed, "value": forget[m] + jitter})
    kl_t, f_t = pd.DataFrame(kl_rows), pd.DataFrame(f_rows)
    kl_t["seed_floor"] = 0.0
    for _, g in kl_t.groupby(["direction", "unit"]):
        kl_t.loc[g.index, "seed_floor"] = seed_floor(g.set_index("model")["value"]).to_numpy()
    f_t["seed_floor"] = seed_floor(f_t.set_index("model")["value"]).to_numpy()
    out = tmp_path / "behaviour"
    out.mkdir(exist_ok=True)
    kl_t.to_csv(out / "kl.tsv", sep="\t", index=False)
    f_t.to_csv(out / "forgetting.tsv", sep="\t", index=False)
    correlation_table(kl_t, f_t, None, 0.95).to_csv(out / "forgetting_vs_kl.tsv", sep="\t", index=False)
    return out


def test_paper_claims_file_is_whole_and_every_claim_has_a_check():
    df = paper_claims()
    assert set(df["claim_id"]) == set(CHECKS)
    assert (df["paper"].str.len() > 0).all() and (df["rule"].str.len() > 0).all()
    assert "0.977" in df.set_index("claim_id").loc["cluster", "paper"]  # the numbers are the paper's


def test_a_paper_shaped_run_holds_everywhere_it_can(tmp_path):
    geo, ev = _write_run(tmp_path)
    out = write_claims(
        geo,
        ev,
        tmp_path / "lmc.tsv",
        tmp_path / "cka.tsv",
        ROLES,
        42,
        tmp_path / "claims.tsv",
        _write_spectrum(tmp_path),
        _write_behaviour(tmp_path),
    )
    assert list(out.columns) == OUTPUT_COLUMNS
    got = out.set_index("claim_id")["verdict"]
    extra = ["lr10x", "online_grpo", "online_rl_forgets_less"]  # no method plays online GRPO here
    assert got[extra].tolist() == ["not run"] * 3
    assert (got.drop(extra) == "holds").all(), out[out.verdict != "holds"][["claim_id", "this_run"]]
    assert "0.97" in out.set_index("claim_id").loc["cluster", "this_run"]
    assert pd.read_csv(tmp_path / "claims.tsv", sep="\t").shape == out.shape


@pytest.mark.heavy
def test_verdicts_follow_the_numbers_and_missing_inputs_are_not_run(tmp_path):
    geo, ev = _write_run(tmp_path, dpo_acc=0.6, barrier_rift_dpo=0.0)
    out = write_claims(geo, ev, None, None, ROLES, 42, tmp_path / "claims.tsv").set_index("claim_id")
    assert out.loc["acc_dpo", "verdict"] == "fails"  # same accuracy as SFT
    for claim in (
        "lmc_rift_dpo",
        "seed_lmc",
        "cka_pattern",
        "intruders",
        "rl_rotation",
        "rl_spectrum",
        "forgetting_tracks_kl",
        "online_rl_forgets_less",
    ):
        assert out.loc[claim, "verdict"] == "not run"
    no_dpo = {k: v for k, v in ROLES.items() if k != "dpo"}
    out = write_claims(geo, ev, None, None, no_dpo, 42, tmp_path / "c2.tsv").set_index("claim_id")
    assert out.loc["dpo_orthogonal", "verdict"] == "not run"
    with pytest.raises(InputError, match="unknown role"):
        write_claims(geo, ev, None, None, {"ppo": "ppo"}, 42, tmp_path / "c3.tsv")


@pytest.mark.parametrize("floor, verdict", [(0.95, "holds"), (0.96, "fragile"), (0.961, "fails"), (0.98, "fails")])
def test_the_cluster_must_stand_above_the_data_order_floor(tmp_path, floor, verdict):
    """No tolerance: the smallest cluster cosine (0.96 here) against the mean data-order floor; on the floor
    exactly, no replicate stands clear of it (a margin of 0 is no larger than the spread, 0): fragile."""
    geo, ev = _write_run(tmp_path, data_floor=floor)
    out = write_claims(geo, ev, None, None, ROLES, 42, tmp_path / "claims.tsv").set_index("claim_id")
    assert out.loc["cluster_vs_floor", "verdict"] == verdict


def _extra_rows(cos_lr, ratio_lr, cos_online, ratio_online) -> pd.DataFrame:
    """noise_floor rows of SFT against an sft_lr10x and an online_grpo adapter (shared init, each replicate), in the
    row orders the geometry writes them (norm_ratio = ||dW_b|| / ||dW_a|| of the row's pair)."""
    rows = []
    for (m, cos, ratio, sft_first), rep in itertools.product(
        (("sft_lr10x", cos_lr, ratio_lr, True), ("online_grpo", cos_online, ratio_online, False)), REPLICATES
    ):
        a, b = f"sft/{rep}", f"{m}/{rep}"
        pa, pb, r = (a, b, ratio) if sft_first else (b, a, 1 / ratio)
        for metric, v in (
            ("cosine_global", cos),
            ("orthogonal_fraction_global", (1 - cos**2) ** 0.5),
            ("norm_ratio", r),
        ):
            rows.append(
                {
                    "pair_a": pa,
                    "pair_b": pb,
                    "method_a": Label.parse(pa).method,
                    "method_b": Label.parse(pb).method,
                    "kind": "cross-method",
                    "init": "shared",
                    "data_order": "same",
                    "metric": metric,
                    "value": v,
                    "data_floor": 0.98,
                    "seed_floor": 0.2,
                    "random": 0.0,
                }
            )
    return pd.DataFrame(rows).reindex(columns=NOISE_FLOOR_COLUMNS)


@pytest.mark.heavy
@pytest.mark.parametrize(
    "cos_lr, ratio_lr, cos_on, ratio_on, verdicts",
    [
        (0.55, 3.0, 0.025, 0.30, ("holds", "holds")),  # the paper's numbers
        (0.95, 1.1, 0.6, 0.30, ("fails", "fails")),  # 10x LR barely longer; online GRPO aligned with SFT
        (0.1, 3.0, 0.0, 1.5, ("fails", "fails")),  # 10x LR unrelated; online GRPO larger than SFT
    ],
)
def test_lr10x_and_online_grpo_rows_read_the_geometry_against_sft(
    tmp_path, cos_lr, ratio_lr, cos_on, ratio_on, verdicts
):
    geo, ev = _write_run(tmp_path)
    nf = pd.read_csv(geo / "noise_floor.tsv", sep="\t")
    pd.concat([nf, _extra_rows(cos_lr, ratio_lr, cos_on, ratio_on)]).to_csv(
        geo / "noise_floor.tsv", sep="\t", index=False
    )
    roles = {**ROLES, "lr10x": "sft_lr10x", "online_grpo": "online_grpo"}
    out = write_claims(
        geo,
        ev,
        tmp_path / "lmc.tsv",
        tmp_path / "cka.tsv",
        roles,
        42,
        tmp_path / "claims.tsv",
        _write_spectrum(tmp_path),
        _write_behaviour(tmp_path),
    ).set_index("claim_id")
    assert (out.loc["lr10x", "verdict"], out.loc["online_grpo", "verdict"]) == verdicts
    assert f"cos(SFT 10x LR, SFT) {cos_lr:.3g}; ||dW|| ratio {ratio_lr:.3g}" == out.loc["lr10x", "this_run"]
    assert (
        f"orthogonal fraction {(1 - cos_on**2) ** 0.5:.3g}, ||dW|| ratio {ratio_on:.3g}"
        in out.loc["online_grpo", "this_run"]
    )
    assert (out.drop(["lr10x", "online_grpo"])["verdict"] == "holds").all()  # the six methods' rows are untouched
    # each number as its range over the two seeds (the behaviour fixture's seed 123 is 0.01 higher)
    assert "online GRPO 0.2 to 0.21, SFT 1.8 to 1.81" in out.loc["online_rl_forgets_less", "this_run"]


def _rename_method(tables_dir, old: str, new: str) -> None:
    """Rename method ``old`` to ``new`` in every table of a run: its labels ``old/seed...`` and its
    ``method_a``/``method_b`` cells."""

    def rename(cell):
        if cell == old:
            return new
        return new + cell[len(old) :] if isinstance(cell, str) and cell.startswith(old + "/") else cell

    for path in tables_dir.rglob("*.tsv"):
        df = pd.read_csv(path, sep="\t")
        df.map(rename).to_csv(path, sep="\t", index=False)


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["sft_data", "sft_seedmix", "seed", "dataset-sft"])
def test_verdicts_do_not_depend_on_the_method_names(tmp_path, name):
    """The seed sweep's labels were split on the text "seed" and screened for "data": a method named
    with either lost its seed pairs (``seed_lmc`` not run) or crashed the job (``int("mix/")``)."""
    (tmp_path / "ref").mkdir()
    geo, ev = _write_run(tmp_path / "ref")
    want = write_claims(
        geo, ev, tmp_path / "ref" / "lmc.tsv", tmp_path / "ref" / "cka.tsv", ROLES, 42, tmp_path / "ref.tsv"
    )
    (tmp_path / "run").mkdir()
    geo, ev = _write_run(tmp_path / "run")
    _rename_method(tmp_path / "run", "sft", name)
    got = write_claims(
        geo,
        ev,
        tmp_path / "run" / "lmc.tsv",
        tmp_path / "run" / "cka.tsv",
        {**ROLES, "sft": name},
        42,
        tmp_path / "claims.tsv",
    )
    assert got["verdict"].tolist() == want["verdict"].tolist()
    assert got.set_index("claim_id").loc["seed_lmc", "verdict"] == "holds"
    assert f"{name}/seed42 -> {name}/seed123" in got.set_index("claim_id").loc["seed_lmc", "this_run"]


@pytest.mark.heavy
@pytest.mark.parametrize(
    "grpo, verdicts",
    [
        ((4.0, 8.0, 0.02, 0), ("holds", "holds", "holds")),
        # GRPO below SFT by less than the data-order floor (JITTER): not a difference
        ((10.0 - JITTER / 2, 20.0, 0.05 - JITTER / 200, 0), ("fails", "holds", "fails")),
        # less rotation than SFT, but more than its chance level: only its size keeps it small
        ((4.0, 3.8, 0.02, 0), ("holds", "fails", "holds")),
    ],
)
def test_base_spectrum_claims_read_each_difference_against_its_floor_and_chance(tmp_path, grpo, verdicts):
    geo, ev = _write_run(tmp_path)
    spec = _write_spectrum(tmp_path, {**SPECTRUM, "grpo": grpo})
    out = write_claims(geo, ev, None, None, ROLES, 42, tmp_path / "claims.tsv", spec).set_index("claim_id")
    assert tuple(out.loc[["rl_rotation", "rl_rotation_chance", "rl_spectrum"], "verdict"]) == verdicts
    assert out.loc["intruders", "verdict"] == "holds"
    assert "SFT 2, RFT 1, RIFT 3" in out.loc["intruders", "this_run"]
    assert out.loc["rl_rotation", "source"].startswith("The Path Not Taken")


def test_the_intruder_claim_fails_without_intruders(tmp_path):
    geo, ev = _write_run(tmp_path)
    spec = _write_spectrum(tmp_path, {**SPECTRUM, "rft": (9.0, 9.0, 0.05, 0)})
    out = write_claims(geo, ev, None, None, ROLES, 42, tmp_path / "claims.tsv", spec).set_index("claim_id")
    assert out.loc["intruders", "verdict"] == "fails"


@pytest.mark.heavy
@pytest.mark.parametrize(
    "forget, verdict",
    [
        (FORGET, "holds"),
        # forgetting against the KL's order: DPO forgets most, SFT least
        ({m: 2.0 - v for m, v in FORGET.items()}, "fails"),
        # forgetting unrelated to the KL (a permutation with rho near 0)
        ({"sft": 0.9, "rft": 0.2, "dft": 1.9, "rift": 0.1, "grpo": 1.8, "dpo": 1.3, "online_grpo": 1.7}, "fails"),
    ],
)
def test_forgetting_tracks_kl_reads_the_rank_correlation_s_interval(tmp_path, forget, verdict):
    geo, ev = _write_run(tmp_path)
    beh = _write_behaviour(tmp_path, forget=forget)
    out = write_claims(geo, ev, None, None, ROLES, 42, tmp_path / "claims.tsv", None, beh).set_index("claim_id")
    assert out.loc["forgetting_tracks_kl", "verdict"] == verdict
    assert "over 14 adapters" in out.loc["forgetting_tracks_kl", "this_run"]
    assert out.loc["forgetting_tracks_kl", "source"].startswith("Shenfeld et al. 2025")


@pytest.mark.heavy
@pytest.mark.parametrize(
    "online_forget, online_kl, verdict",
    [
        (0.2, 0.05, "holds"),
        (1.8 - 0.005, 0.05, "fails"),  # forgets as much as SFT, within SFT's seed floor (0.01)
        (0.2, 0.5, "fails"),  # forgets less, but further from the base in KL
    ],
)
def test_online_rl_forgets_less_needs_both_below_sft_by_more_than_its_floor(
    tmp_path, online_forget, online_kl, verdict
):
    geo, ev = _write_run(tmp_path)
    beh = _write_behaviour(
        tmp_path, kl={**KL, "online_grpo": online_kl}, forget={**FORGET, "online_grpo": online_forget}
    )
    roles = {**ROLES, "online_grpo": "online_grpo"}
    out = write_claims(geo, ev, None, None, roles, 42, tmp_path / "claims.tsv", None, beh).set_index("claim_id")
    assert out.loc["online_rl_forgets_less", "verdict"] == verdict


# ---- the verdict over replicates (lossgeom.claims.verdicts) --------------------------------------------


def _judged(*margins, interval=False):
    """Replicates named r0, r1, ... each with the margins given (one dict of condition -> margin each)."""
    return {f"r{i}": Judged("", "", "", dict(m), interval) for i, m in enumerate(margins)}


@pytest.mark.parametrize(
    "margins, want",
    [
        # every replicate meets the rule by more than the replicates spread
        (({"c": 0.05}, {"c": 0.06}, {"c": 0.04}), "holds"),
        (({"c": -0.3}, {"c": -0.25}), "fails"),
        # one replicate disagrees
        (({"c": 0.05}, {"c": -0.01}, {"c": 0.04}), "fragile"),
        # all agree, but the smallest margin (0.01) is within the spread (0.04)
        (({"c": 0.01}, {"c": 0.05}), "fragile"),
        (({"c": -0.01}, {"c": -0.05}), "fragile"),
        # on the threshold exactly: no margin at all
        (({"c": 0.0}, {"c": 0.0}), "fragile"),
        # an "and" rule fails on one violated condition, whatever the other does
        (({"a": 0.01, "b": -0.5}, {"a": 0.3, "b": -0.45}), "fails"),
        (({"a": 0.2, "b": 0.5}, {"a": 0.25, "b": 0.45}), "holds"),
        (({"a": 0.2, "b": 0.01}, {"a": 0.25, "b": 0.45}), "fragile"),
        # a margin that could not be computed settles nothing
        (({"c": float("nan")}, {"c": 0.5}), "fragile"),
        # one replicate: its spread is unknown
        (({"c": 0.5},), "inconclusive"),
        ((), "not run"),
    ],
)
def test_the_verdict_needs_every_replicate_to_agree_by_more_than_they_spread(margins, want):
    assert verdict(_judged(*margins)) == want


def test_one_replicate_settles_a_claim_read_from_a_confidence_interval():
    assert verdict(_judged({"c": 0.4}, interval=True)) == "holds"
    assert verdict(_judged({"c": -0.1}, interval=True)) == "fails"


def test_the_replicates_column_counts_them_and_gives_each_margin_and_the_spread():
    count, margins = replicates_text(_judged({"a": 0.05, "b": 1.0}, {"a": -0.01, "b": 2.0}))
    assert count == "1 of 2 hold"
    assert margins == "a: r0 +0.05, r1 -0.01; spread 0.06 | b: r0 +1, r1 +2; spread 1"


def test_each_replicate_reads_its_own_adapters(tmp_path):
    """A run whose other init seed's cluster sits below 0.9 (SFT-RFT 0.89 at seed 123): the cluster claim holds at
    seed 42 and its data-order replicate but not at seed 123, so it is fragile, not held, and the row says so."""
    geo, ev = _write_run(tmp_path)
    nf = pd.read_csv(geo / "noise_floor.tsv", sep="\t")
    at_123 = (nf.pair_a == "sft/seed123") & (nf.pair_b == "rft/seed123") & (nf.metric == "cosine_global")
    assert at_123.sum() == 1
    nf.loc[at_123, "value"] = 0.89
    nf.to_csv(geo / "noise_floor.tsv", sep="\t", index=False)
    out = write_claims(geo, ev, None, None, ROLES, 42, tmp_path / "claims.tsv").set_index("claim_id")
    row = out.loc["cluster"]
    assert row["verdict"] == "fragile"
    assert row["replicates"] == "2 of 3 hold"
    assert "seed42 +0.06, seed42data7 +0.06, seed123 -0.01; spread 0.07" in row["margins"]
    assert row["this_run"].startswith("SFT-RFT 0.89 to 0.97, SFT-RIFT 0.96,")  # each number's range
    assert out.loc["dft", "verdict"] == "holds"  # DFT's bounds still clear at seed 123 (0.55 < 0.89)


@pytest.mark.parametrize(
    "texts, want",
    [
        ({"r0": "cos 0.9, ratio 8.24", "r1": "cos 0.9, ratio 8.24"}, "cos 0.9, ratio 8.24"),
        (
            {"r0": "SFT-RFT 0.894 (p 1.2e-09)", "r1": "SFT-RFT 0.86 (p 3e-08)"},
            "SFT-RFT 0.86 to 0.894 (p 1.2e-09 to 3e-08)",
        ),
        ({"r0": "margin -0.5", "r1": "margin 0.25"}, "margin -0.5 to 0.25"),
        ({"r0": "cos 0.635/0.648", "r1": "cos 0.6/0.7"}, "cos 0.6 to 0.635/0.648 to 0.7"),
        # numbers inside names are words: other labels, or another order, list each replicate
        (
            {"seed42": "sft/seed42: 3.04", "seed123": "sft/seed123: 3.1"},
            "seed42: sft/seed42: 3.04; seed123: sft/seed123: 3.1",
        ),
        (
            {"a": "RIFT 11 < RFT 14 deg", "b": "RFT 12 < RIFT 13 deg"},
            "a: RIFT 11 < RFT 14 deg; b: RFT 12 < RIFT 13 deg",
        ),
        ({}, ""),
    ],
)
def test_a_claim_s_texts_over_replicates_give_each_number_its_range(texts, want):
    assert ranges_text(texts) == want


def test_a_damaged_or_foreign_table_is_one_input_error_naming_it(tmp_path):
    """Each table the checks read is read with the columns they need: a torn one, or one of another stage,
    stops with one line naming the file and what it should be; an absent optional one is 'not run'."""
    geo, ev = _write_run(tmp_path)
    (tmp_path / "lmc.tsv").write_bytes(b"pair_a\tpair_b\n\xff\xfe\t1\n")
    with pytest.raises(InputError, match=r"lmc\.tsv: not a summary table of 'lossgeom lmc-summary' \(.*utf-8"):
        write_claims(geo, ev, tmp_path / "lmc.tsv", None, ROLES, 42, tmp_path / "claims.tsv")
    pd.DataFrame({"model_a": ["sft/seed42"], "cka": [0.9]}).to_csv(tmp_path / "cka.tsv", sep="\t", index=False)
    with pytest.raises(
        InputError,
        match=r"cka\.tsv: not a CKA table of 'lossgeom measure-stats activations' \(no column\(s\) \['model_b', 'layer'\]",
    ):
        write_claims(geo, ev, None, tmp_path / "cka.tsv", ROLES, 42, tmp_path / "claims.tsv")
    (ev / "pairwise.tsv").unlink()  # absent: the claims that need it are not run
    out = write_claims(geo, ev, None, None, ROLES, 42, tmp_path / "claims.tsv")
    assert "not run" in set(out["verdict"])


def test_the_report_page_counts_the_verdicts_and_colours_each(tmp_path):
    geo, ev = _write_run(tmp_path, dpo_acc=0.6)
    df = write_claims(geo, ev, None, None, ROLES, 42, tmp_path / "claims.tsv", html=tmp_path / "claims.html")
    page = (tmp_path / "claims.html").read_text()
    counts = df["verdict"].value_counts()
    assert f"{counts['holds']} holds, {counts['fails']} fails, " in page and f"{counts['not run']} not run" in page
    assert page.count("<tr>") == len(df) + 1  # the head and one row per claim
    assert '<td style="background:#f8d7d7"><b>fails</b></td>' in page  # acc_dpo
    assert "||dW|| SFT 2.8, DPO 0.2: ratio 14" in page  # this run's text, escaped where needed
    assert 'title="holds if every pair&#x27;s cosine is &gt;= 0.9' in page  # the rule as the row's tooltip
