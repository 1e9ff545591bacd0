"""Tests of lossgeom.geometry.spectrum against dense float64 references and PEFT's own intruder detector."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import scipy.linalg as sl
import torch
from conftest import tiny_qwen3

from lossgeom.geometry import build_factor_cache, load_adapter
from lossgeom.geometry.spectrum import (
    MODULE_STATS,
    base_spectrum,
    base_svd,
    random_delta,
    spectrum_stats,
    spectrum_summary,
    top_singular,
    write_base_spectrum,
)
from lossgeom.lora.adapters import AdapterMismatchError, canonical_module_name

# (d_out, d_in, r): square, tall, wide, rank 1, rank above k, a module narrower than k
SHAPES = [(64, 64, 8), (96, 40, 4), (40, 96, 16), (128, 128, 1), (200, 150, 32), (30, 12, 4), (8, 8, 2)]


def _module(rng, d_out, d_in, r, delta_scale):
    """A base weight with a decaying spectrum (as trained weights have) and LoRA factors."""
    q = min(d_out, d_in)
    U, _ = np.linalg.qr(rng.standard_normal((d_out, q)))
    V, _ = np.linalg.qr(rng.standard_normal((d_in, q)))
    W = (U * (3.0 * 0.9 ** np.arange(q))) @ V.T
    B, A = rng.standard_normal((d_out, r)) * delta_scale, rng.standard_normal((r, d_in)) / np.sqrt(d_in)
    return W, B, A


def _dense_stats(W, dW, k, threshold):
    """The statistics from dense SVDs of W and W + dW alone (numpy and scipy, not the module's code)."""
    U0, S0, V0t = np.linalg.svd(W, full_matrices=False)
    U1, S1, V1t = np.linalg.svd(W + dW, full_matrices=False)
    max_cos = np.abs(U1[:, :k].T @ U0).max(axis=1)
    left = np.degrees(sl.subspace_angles(U0[:, :k], U1[:, :k]))
    right = np.degrees(sl.subspace_angles(V0t[:k].T, V1t[:k].T))
    rel = S1[:k] / S0[:k] - 1
    return {
        "intruders": int((max_cos < threshold).sum()),
        "min_max_cos": max_cos.min(),
        "rotation_left_deg": left.mean(),
        "rotation_left_max_deg": left.max(),
        "rotation_right_deg": right.mean(),
        "rotation_right_max_deg": right.max(),
        "sv_change": np.abs(rel).mean(),
        "sv_change_top1": rel[0],
    }, max_cos


@pytest.mark.parametrize("d_out, d_in, r", SHAPES)
@pytest.mark.parametrize("k", [1, 5, 10])
def test_top_singular_matches_a_dense_svd(d_out, d_in, r, k):
    rng = np.random.default_rng(d_out * 1000 + d_in + r)
    W, B, A = _module(rng, d_out, d_in, r, 0.3)
    k = min(k, d_out, d_in)
    U, S, V = top_singular(W, B, A, 2.0, k)
    Ud, Sd, Vdt = np.linalg.svd(W + 2.0 * B @ A, full_matrices=False)
    np.testing.assert_allclose(S, Sd[:k], rtol=1e-11)
    assert U.shape == (d_out, k) and V.shape == (d_in, k)
    # each singular vector up to sign (the spectrum's gaps are wide: 10% between neighbours)
    np.testing.assert_allclose(np.abs(np.sum(U * Ud[:, :k], axis=0)), 1.0, atol=1e-9)
    np.testing.assert_allclose(np.abs(np.sum(V * Vdt[:k].T, axis=0)), 1.0, atol=1e-9)


@pytest.mark.parametrize("d_out, d_in, r", SHAPES)
@pytest.mark.parametrize("delta_scale", [0.05, 1.0, 5.0])
def test_statistics_match_dense_float64(d_out, d_in, r, delta_scale):
    """Small to large deltas: no intruders, some, most of the top-k."""
    rng = np.random.default_rng(d_out + 7 * d_in + r)
    W, B, A = _module(rng, d_out, d_in, r, delta_scale)
    k = min(10, d_out, d_in)
    got = spectrum_stats(base_svd(W, k), *top_singular(W, B, A, 1.0, k), 0.5)
    want, max_cos = _dense_stats(W, B @ A, k, 0.5)
    assert set(got) == set(MODULE_STATS)
    assert np.min(np.abs(max_cos - 0.5)) > 1e-6  # no vector at the threshold: the count is well defined
    assert got["intruders"] == want["intruders"]
    for key in MODULE_STATS[1:]:
        assert got[key] == pytest.approx(want[key], rel=1e-7, abs=1e-7), key


def test_intruder_counts_span_none_to_all_of_the_top_k():
    rng = np.random.default_rng(3)
    counts = []
    for scale in (0.01, 1.0, 20.0):
        W, B, A = _module(rng, 64, 64, 16, scale)
        counts.append(spectrum_stats(base_svd(W, 10), *top_singular(W, B, A, 1.0, 10), 0.5)["intruders"])
    assert counts[0] == 0 and 0 < counts[1] and counts[2] >= 8, counts


def test_base_svd_is_cached_by_content(tmp_path):
    rng = np.random.default_rng(0)
    W = rng.standard_normal((20, 12))
    first = base_svd(W, 12, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1
    (path,) = tmp_path.iterdir()
    stamp = path.stat().st_mtime_ns
    again = base_svd(W.copy(), 5, tmp_path)  # read back, not recomputed: the same bytes, fewer right vectors
    assert path.stat().st_mtime_ns == stamp
    assert np.array_equal(first.U, again.U) and np.array_equal(first.S, again.S)
    assert np.array_equal(first.V[:, :5], again.V)
    base_svd(W + 1e-12, 12, tmp_path)  # another weight: its own file
    assert len(list(tmp_path.iterdir())) == 2
    np.testing.assert_allclose((first.U * first.S) @ first.V.T, W, atol=1e-12)  # q = 12: the whole SVD
    U, S, Vt = np.linalg.svd(W, full_matrices=False)
    np.testing.assert_allclose(np.abs(np.sum(first.U * U, axis=0)), 1.0, atol=1e-12)


def test_random_delta_has_the_singular_values_it_is_given():
    rng = np.random.default_rng(1)
    S = np.array([3.0, 1.0, 0.5, 0.0])
    B, A = random_delta(S, (30, 20), rng)
    np.testing.assert_allclose(np.linalg.svd(B @ A, compute_uv=False)[:4], S, atol=1e-12)
    Q = B[:, :3] / S[:3]
    np.testing.assert_allclose(Q.T @ Q, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(A @ A.T, np.eye(4), atol=1e-12)
    # a rank above min(d_out, d_in): the zero padding of the delta's spectrum is dropped
    B, A = random_delta(np.array([2.0, 1.0, 0.0, 0.0, 0.0]), (3, 4), rng)
    assert B.shape == (3, 3) and A.shape == (3, 4)
    np.testing.assert_allclose(np.linalg.svd(B @ A, compute_uv=False), [2.0, 1.0, 0.0], atol=1e-12)


# ---- adapters: the study's entry point against PEFT's detector ------------------------------------


def _peft_model(seed: int, b_scale: float):
    from peft import LoraConfig, get_peft_model

    model = tiny_qwen3(hidden_size=48, head_dim=16)
    torch.manual_seed(seed)
    pm = get_peft_model(
        model,
        LoraConfig(
            r=8, lora_alpha=16, init_lora_weights=False, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        ),
    )
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.mul_(b_scale)
    return pm


@pytest.mark.parametrize("b_scale", [1.0, 30.0])
def test_intruders_agree_with_peft_reduce_intruder_dimension(tmp_path, b_scale):
    """PEFT's reduce_intruder_dimension (top_k 10, threshold 0.5, left singular vectors of W and W + dW)
    logs each layer's intruder count; ours, from the saved adapter and the base weights, must agree."""
    from peft.tuners.lora.intruders import reduce_intruder_dimension

    pm = _peft_model(1, b_scale)
    pm.save_pretrained(tmp_path / "m" / "seed1")
    base = {
        n.removeprefix("base_model.model.").removesuffix(".base_layer"): m.weight.detach().double().numpy()
        for n, m in pm.named_modules()
        if n.endswith("base_layer")
    }
    lines = []
    reduce_intruder_dimension(pm, top_k=10, threshold_epsilon=0.5, logging_sink=lines.append)
    peft_counts = {}
    for line in lines:
        m = re.match(r"base_model\.model\.(.+): (?:No intruders|Intruders: (\d+))$", line)
        if m:
            peft_counts[m.group(1)] = int(m.group(2) or 0)
    assert len(peft_counts) == 8
    cache = build_factor_cache(load_adapter(tmp_path / "m" / "seed1"), top_k=1, label="m/seed1")
    got = base_spectrum({"m/seed1": cache}, base, top_k=10, threshold=0.5)
    ours = dict(zip(got["module"], got["intruders"]))
    # the same modules: PEFT logs model.layers.N..., the canonical name is layers.N...
    assert {canonical_module_name(k): n for k, n in peft_counts.items()} == ours
    if b_scale > 1:
        assert sum(peft_counts.values()) > 0  # the comparison covers modules with intruders


@pytest.mark.heavy
def test_base_spectrum_writes_tables_with_floors_and_chance(tmp_path):
    dirs = {}
    for label, seed in (("m/seed1", 1), ("m/seed2", 2), ("m/seed1data7", 3)):
        pm = _peft_model(seed, 10.0)
        pm.save_pretrained(tmp_path / label)
        dirs[label] = tmp_path / label
    base = {
        n.removeprefix("base_model.model.").removesuffix(".base_layer"): m.weight.detach().double().numpy()
        for n, m in pm.named_modules()
        if n.endswith("base_layer")
    }
    caches = {l: build_factor_cache(load_adapter(d), top_k=1, label=l) for l, d in dirs.items()}
    summary = write_base_spectrum(caches, base, tmp_path / "out", top_k=10, threshold=0.5, seed=0)
    modules = pd.read_csv(tmp_path / "out" / "modules.tsv", sep="\t")
    assert len(modules) == 3 * 8 and {f"chance_{s}" for s in MODULE_STATS} <= set(modules.columns)
    # the chance level is reproducible: one generator per (seed, label, module), whatever the order (to
    # rounding: BLAS sums in an order that may follow the arrays' alignment)
    again = base_spectrum(dict(reversed(list(caches.items()))), base, top_k=10, threshold=0.5, seed=0)
    merged = modules.merge(again, on=["label", "module"], suffixes=("", "_again"))
    np.testing.assert_allclose(merged["chance_rotation_left_deg"], merged["chance_rotation_left_deg_again"], rtol=1e-8)
    rot = summary[summary["statistic"] == "rotation_left_deg"].set_index("label")
    med = modules.groupby("label")["rotation_left_deg"].median()
    assert rot["value"].to_dict() == pytest.approx(med.to_dict())
    # the floors are the |differences| of the values: data order (seed1 vs seed1data7), init (seed1 vs seed2)
    v = rot["value"]
    assert rot.loc["m/seed1", "data_floor"] == pytest.approx(abs(v["m/seed1"] - v["m/seed1data7"]))
    assert rot.loc["m/seed1", "seed_floor"] == pytest.approx(
        np.mean([abs(v["m/seed1"] - v["m/seed2"]), abs(v["m/seed2"] - v["m/seed1data7"])])
    )
    intr = summary[summary["statistic"] == "intruders"].set_index("label")
    assert intr["value"].to_dict() == modules.groupby("label")["intruders"].sum().astype(float).to_dict()


def test_a_base_weight_of_another_shape_is_named(tmp_path):
    pm = _peft_model(1, 1.0)
    pm.save_pretrained(tmp_path / "m" / "seed1")
    cache = build_factor_cache(load_adapter(tmp_path / "m" / "seed1"), top_k=1, label="m/seed1")
    name = next(iter(cache.modules))
    with pytest.raises(AdapterMismatchError, match=re.escape(name)):
        base_spectrum({"m/seed1": cache}, {name: np.zeros((3, 3))})
    with pytest.raises(AdapterMismatchError, match="none of the base weights"):
        base_spectrum({"m/seed1": cache}, {"lm_head": np.zeros((3, 3))})


def test_summary_of_a_hand_built_modules_table():
    rows = []
    for label, value in (("a/seed1", 1.0), ("a/seed1data2", 1.5), ("a/seed3", 4.0), ("b/seed1", 2.0)):
        for module, extra in (("q", 0.0), ("k", 2.0), ("v", 4.0)):
            stats = {s: value + extra for s in MODULE_STATS}
            rows.append({"label": label, "module": module, **stats, **{f"chance_{s}": 2.0 for s in MODULE_STATS}})
    s = spectrum_summary(pd.DataFrame(rows))
    rot = s[s["statistic"] == "rotation_left_deg"].set_index("label")
    assert rot.loc["a/seed1", "value"] == 3.0 and rot.loc["a/seed1", "chance"] == 2.0
    assert rot.loc["a/seed1", "ratio_to_chance"] == 1.5
    assert rot.loc["a/seed1", "data_floor"] == 0.5  # |3 - 3.5|
    assert rot.loc["a/seed1", "seed_floor"] == pytest.approx((3.0 + 2.5) / 2)  # |3 - 6|, |3.5 - 6|
    assert np.isnan(rot.loc["b/seed1", "data_floor"]) and np.isnan(rot.loc["b/seed1", "seed_floor"])
    intr = s[s["statistic"] == "intruders"].set_index("label")
    assert intr.loc["a/seed1", "value"] == 3 * 1.0 + 6.0  # summed over modules
