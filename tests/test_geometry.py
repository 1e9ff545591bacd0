"""Factor caches and the all-pairs suite against dense numpy/scipy; tables; figures."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.linalg as sl
import torch
from conftest import tiny_qwen3
from safetensors.torch import save_file

from lossgeom import geometry as G
from lossgeom.lora import lowrank as lr
from lossgeom.lora.adapters import AdapterMismatchError, load_adapter

TOL = 1e-8
SHAPES = {"q_proj": (12, 8), "k_proj": (6, 8), "v_proj": (6, 8), "o_proj": (8, 12)}  # (d_out, d_in)
K = 3


def write_adapter(path, factors, *, r, alpha=8.0, base="tiny/base", rank_pattern=None):
    """factors: (layer, module) -> (B (d_out, r), A (r, d_in)) as numpy."""
    t = {}
    for (layer, m), (B, A) in factors.items():
        p = f"base_model.model.model.layers.{layer}.self_attn.{m}"
        t[f"{p}.lora_A.weight"] = torch.tensor(A, dtype=torch.float64)
        t[f"{p}.lora_B.weight"] = torch.tensor(B, dtype=torch.float64)
    path.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(
        json.dumps(
            {
                "peft_type": "LORA",
                "r": r,
                "lora_alpha": alpha,
                "target_modules": sorted(SHAPES),
                "base_model_name_or_path": base,
                "rank_pattern": rank_pattern or {},
            }
        )
    )
    return path


def random_factors(rng, r=4, layers=2, shared=None, mix=0.0):
    out = {}
    for layer in range(layers):
        for m, (d_out, d_in) in SHAPES.items():
            B, A = rng.standard_normal((d_out, r)), rng.standard_normal((r, d_in))
            if shared is not None:  # correlated with a shared update
                B = (1 - mix) * B + mix * shared[(layer, m)][0]
                A = (1 - mix) * A + mix * shared[(layer, m)][1]
            out[(layer, m)] = (B, A)
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Six adapters: methods a, b, c x seeds 1, 2 (a and b correlated); ranks differ for c."""
    tmp = tmp_path_factory.mktemp("adapters")
    rng = np.random.default_rng(0)
    base = random_factors(rng)
    dirs = []
    for method, mix, r in (("a", 0.8, 4), ("b", 0.6, 4), ("c", 0.0, 5)):
        for seed in (1, 2):
            f = random_factors(rng, r=r, shared=base if r == 4 else None, mix=mix)
            dirs.append(write_adapter(tmp / method / f"seed{seed}", f, r=r))
    return dirs


def dense_deltas(d):
    ad = load_adapter(d)
    return {n: m.scale * m.B @ m.A for n, m in ad.modules.items()}


def test_factor_cache_matches_dense_svd(world):
    cache = G.build_factor_cache(load_adapter(world[0]), top_k=K)
    for name, W in dense_deltas(world[0]).items():
        m = cache.modules[name]
        U, S, Vt = np.linalg.svd(W, full_matrices=False)
        np.testing.assert_allclose(m.S, S[: m.rank], rtol=TOL, atol=1e-12)
        assert m.U.shape == (W.shape[0], K) and m.V.shape == (W.shape[1], K)
        np.testing.assert_allclose(m.U.T @ m.U, np.eye(K), atol=1e-12)
        np.testing.assert_allclose(np.abs(np.sum(m.U * U[:, :K], 0)), 1.0, atol=TOL)
        np.testing.assert_allclose(np.abs(np.sum(m.V * Vt[:K].T, 0)), 1.0, atol=TOL)
        assert m.norm == pytest.approx(np.linalg.norm(W), rel=TOL)
        assert m.effective_rank == pytest.approx(lr.effective_rank(S))
        assert m.stable_rank == pytest.approx(np.linalg.norm(W) ** 2 / S[0] ** 2, rel=TOL)
    assert cache.summary()["n_householder_fallback"] == 0


def test_householder_fallback_for_rank_deficient_factor(tmp_path):
    rng = np.random.default_rng(1)
    f = random_factors(rng)
    B, A = f[(0, "q_proj")]
    B[:, 1] = B[:, 0]  # rank-deficient B: CholeskyQR cannot be used
    f[(1, "k_proj")] = (np.zeros((6, 4)), f[(1, "k_proj")][1])  # zero update
    d = write_adapter(tmp_path / "x", f, r=4)
    cache = G.build_factor_cache(load_adapter(d), top_k=K)
    assert cache.summary()["n_householder_fallback"] == 2
    W = dense_deltas(d)["layers.0.self_attn.q_proj"]
    m = cache.modules["layers.0.self_attn.q_proj"]
    np.testing.assert_allclose(m.S, np.linalg.svd(W, compute_uv=False)[:4], atol=1e-10)
    assert m.numerical_rank == 3
    U = np.linalg.svd(W)[0][:, :3]
    np.testing.assert_allclose(lr.principal_angles(m.U[:, :3], U), 0.0, atol=1e-7)
    assert cache.modules["layers.1.self_attn.k_proj"].numerical_rank == 0


def test_cache_save_load_round_trip(world, tmp_path):
    cache = G.factor_cache_for_dir(world[0], tmp_path / "c.safetensors", top_k=K, label="a/seed1")
    again = G.load_factor_cache(tmp_path / "c.safetensors", expected_fingerprint=cache.fingerprint)
    assert again.label == "a/seed1" and again.top_k == K and list(again.modules) == list(cache.modules)
    for name, m in cache.modules.items():
        n = again.modules[name]
        for a in ("B", "A", "S", "U", "V"):
            np.testing.assert_array_equal(getattr(m, a), getattr(n, a))
        assert (n.scale, n.layer, n.numerical_rank) == (m.scale, m.layer, m.numerical_rank)
    with pytest.raises(G.FactorCacheError, match="stale"):
        G.load_factor_cache(tmp_path / "c.safetensors", expected_fingerprint="0" * 64)
    (tmp_path / "junk.safetensors").write_bytes(b"nope")
    with pytest.raises(G.FactorCacheError, match="cannot read"):
        G.load_factor_cache(tmp_path / "junk.safetensors")
    reused = G.factor_cache_for_dir(world[0], tmp_path / "c.safetensors", top_k=K, label="a/seed1")
    np.testing.assert_array_equal(reused.modules[name].U, cache.modules[name].U)


@pytest.fixture(scope="module")
def geo(world):
    caches = {G.label_for_dir(d): G.build_factor_cache(load_adapter(d), top_k=K) for d in world}
    return G.pairwise_geometry(caches, top_k=K), caches


def test_pairwise_matches_dense(world, geo):
    geo, _ = geo
    assert geo.labels == ["a/seed1", "a/seed2", "b/seed1", "b/seed2", "c/seed1", "c/seed2"]
    dense = [dense_deltas(d) for d in world]
    names = geo.module_names
    for p, (i, j) in enumerate(geo.pairs):
        for mi, name in enumerate(names):
            Wi, Wj = dense[i][name], dense[j][name]
            assert geo.inner[mi, i, j] == pytest.approx(np.sum(Wi * Wj), rel=TOL, abs=1e-10)
            Ui, _, Vti = np.linalg.svd(Wi)
            Uj, _, Vtj = np.linalg.svd(Wj)
            ref_l = np.sort(sl.subspace_angles(Ui[:, :K], Uj[:, :K]))
            ref_r = np.sort(sl.subspace_angles(Vti[:K].T, Vtj[:K].T))
            np.testing.assert_allclose(geo.angles["left"][mi, p], ref_l, atol=TOL)
            np.testing.assert_allclose(geo.angles["right"][mi, p], ref_r, atol=TOL)
            assert geo.agreement["left"][mi, p] == pytest.approx(abs(Ui[:, 0] @ Uj[:, 0]), abs=TOL)
            assert geo.agreement["right"][mi, p] == pytest.approx(abs(Vti[0] @ Vtj[0]), abs=TOL)
    # global and per-layer cosines: all modules (of the layer) stacked into one vector
    flat = [np.concatenate([d[n].ravel() for n in names]) for d in dense]
    cos = G.PairGeometry.cosine_of(geo.inner_global())
    for i in range(6):
        for j in range(6):
            c = flat[i] @ flat[j] / np.linalg.norm(flat[i]) / np.linalg.norm(flat[j])
            assert cos[i, j] == pytest.approx(c, abs=TOL)
    pl = G.per_layer_table(geo)
    row = pl[(pl.pair_a == "a/seed1") & (pl.pair_b == "b/seed2") & (pl.layer == 1)].iloc[0]
    l1 = [n for n in names if n.startswith("layers.1.")]
    x = np.concatenate([dense[0][n].ravel() for n in l1])
    y = np.concatenate([dense[3][n].ravel() for n in l1])
    c = x @ y / np.linalg.norm(x) / np.linalg.norm(y)
    assert row.cosine == pytest.approx(c, abs=TOL)
    # orthogonal fraction = explicit projection residual = sqrt(1 - cos^2)
    resid = y - (x @ y) / (x @ x) * x
    assert row.orthogonal_fraction == pytest.approx(np.linalg.norm(resid) / np.linalg.norm(y), abs=TOL)
    assert row.orthogonal_fraction == pytest.approx(np.sqrt(1 - c * c), abs=1e-12)
    assert row.norm_ratio == pytest.approx(np.linalg.norm(y) / np.linalg.norm(x), rel=TOL)


def test_identical_and_gauge_transformed_adapters(world, tmp_path):
    ad = load_adapter(world[0])
    rng = np.random.default_rng(5)
    f = {}
    for name, m in ad.modules.items():
        Gm = rng.standard_normal((4, 4)) + 4 * np.eye(4)
        layer, mod = int(name.split(".")[1]), name.split(".")[-1]
        # alpha 8 -> 20 (scale 2 -> 5): B rescaled by 2/5 keeps the same dW
        f[(layer, mod)] = (m.B @ Gm * (2.0 / 5.0), np.linalg.solve(Gm, m.A))
    d2 = write_adapter(tmp_path / "gauge", f, r=4, alpha=20.0)
    caches = {
        "x/seed1": G.build_factor_cache(ad, K),
        "x/seed2": G.build_factor_cache(load_adapter(d2), K),
        "y": G.build_factor_cache(load_adapter(world[0]), K),
    }
    geo = G.pairwise_geometry(caches, top_k=K)
    np.testing.assert_allclose(G.PairGeometry.cosine_of(geo.inner_global()), 1.0, atol=1e-12)
    for side in ("left", "right"):
        assert np.nanmax(geo.angles[side]) < 1e-7  # sine formula keeps near-zero angles near zero
    assert geo.n_sine_recomputed > 0
    sq = G.square_matrices(geo)
    np.testing.assert_allclose(sq["orthogonal_fraction_global"].to_numpy(), 0.0, atol=1e-7)
    np.testing.assert_allclose(sq["norm_ratio"].to_numpy(), 1.0, rtol=1e-12)


def test_pairwise_rejects_incompatible(world, tmp_path):
    rng = np.random.default_rng(2)
    other = write_adapter(tmp_path / "o", random_factors(rng), r=4, base="other/base")
    with pytest.raises(AdapterMismatchError, match="different base models"):
        G.compare_adapter_dirs([world[0], other], tmp_path / "out", top_k=K)
    assert not (tmp_path / "out" / "cosine_global.tsv").exists()
    with pytest.raises(ValueError, match="duplicate labels"):
        G.compare_adapter_dirs([world[0], world[0]], tmp_path / "out", top_k=K)


def test_write_geometry_tables_and_noise_floor(world, tmp_path):
    out = tmp_path / "geometry"
    geo = G.compare_adapter_dirs(world, out, top_k=K)
    cos = pd.read_csv(out / "cosine_global.tsv", sep="\t", index_col=0)
    assert list(cos.index) == list(cos.columns) == geo.labels
    np.testing.assert_allclose(np.diag(cos.to_numpy()), 1.0)
    np.testing.assert_allclose(cos.to_numpy(), cos.to_numpy().T, atol=1e-12)
    for name in list(G.SQUARE_METRICS) + ["long", "per_layer", "adapters", "noise_floor", "adapter_modules"]:
        assert (out / f"{name}.tsv").is_file(), name
    assert not list(out.glob(".*tmp"))  # no temporary files left
    long = pd.read_csv(out / "long.tsv", sep="\t")
    assert list(long.columns) == ["pair_a", "pair_b", "module", "layer", "side", "metric", "value"]
    g = long[(long.module == "*") & (long.layer == "*") & (long.metric == "cosine")]
    assert len(g) == 15 and g.value.to_numpy() == pytest.approx(cos.to_numpy()[np.triu_indices(6, 1)])
    med = pd.read_csv(out / "top1_angle_left_median.tsv", sep="\t", index_col=0)
    per_mod = long[
        (long.pair_a == "a/seed1")
        & (long.pair_b == "c/seed2")
        & (long.metric == "angle_top1_deg")
        & (long.side == "left")
    ]
    assert len(per_mod) == 8 and med.loc["a/seed1", "c/seed2"] == pytest.approx(np.median(per_mod.value))
    nf = pd.read_csv(out / "noise_floor.tsv", sep="\t")
    row = nf[(nf.pair_a == "a/seed1") & (nf.pair_b == "b/seed2") & (nf.metric == "cosine_global")].iloc[0]
    assert row.kind == "cross-method"
    assert row.seed_floor_a == pytest.approx(cos.loc["a/seed1", "a/seed2"])
    assert row.seed_floor_b == pytest.approx(cos.loc["b/seed1", "b/seed2"])
    assert row.random == pytest.approx(lr.expected_abs_cosine_random(2 * (12 * 8 + 2 * 6 * 8 + 8 * 12)))
    ang = nf[(nf.metric == "top1_angle_left_median")].random.unique()
    assert len(ang) == 1 and 0 < ang[0] < 90
    adapters = pd.read_csv(out / "adapters.tsv", sep="\t")
    assert list(adapters.label) == geo.labels and set(adapters.rank_max) == {4, 5}
    # the paper's ordering of similarity: correlated methods closer than the unrelated one
    assert cos.loc["a/seed1", "a/seed2"] > cos.loc["a/seed1", "c/seed1"]


def test_base_alignment(world, tmp_path):
    cache = G.build_factor_cache(load_adapter(world[0]), top_k=K)
    rng = np.random.default_rng(3)
    bw = {}
    for name, m in cache.modules.items():
        d_out, d_in = m.shape
        # W0 whose top-K left singular subspace is the delta's: fraction 1 on the left
        Qo = np.linalg.qr(np.concatenate([m.U, rng.standard_normal((d_out, d_out - K))], 1))[0]
        Qi = np.linalg.qr(rng.standard_normal((d_in, d_in)))[0]
        s = np.concatenate([[100, 90, 80], np.ones(min(d_out, d_in) - 3)])
        bw[f"model.{name}.weight"] = Qo[:, : len(s)] @ np.diag(s) @ Qi[:, : len(s)].T
    tab = G.base_alignment({"a/seed1": cache}, bw, top_k=K)
    left = tab[tab.side == "left"]
    assert len(left) == 8 and np.allclose(left.fraction, 1.0, atol=1e-10)
    assert ((tab.fraction >= -1e-12) & (tab.fraction <= 1 + 1e-12)).all()
    with pytest.raises(AdapterMismatchError, match="expected shape"):
        G.base_alignment({"a/seed1": cache}, {"layers.0.self_attn.q_proj": np.zeros((3, 3))})


@pytest.mark.heavy
def test_figures_written(world, tmp_path):
    from lossgeom.figures.geometry import plot_geometry_heatmaps, plot_layer_profiles

    out = tmp_path / "geometry"
    G.compare_adapter_dirs(world, out, top_k=K)
    paths = plot_geometry_heatmaps(out, tmp_path / "fig")
    assert len(paths) == 6 and all(p.is_file() and p.stat().st_size > 1000 for p in paths)
    png, pdf = plot_layer_profiles(out / "per_layer.tsv", "a/seed1", tmp_path / "fig" / "profile.png")
    assert png.is_file() and pdf.is_file()
    with pytest.raises(ValueError, match="not in the per-layer table"):
        plot_layer_profiles(out / "per_layer.tsv", "zzz", tmp_path / "fig" / "x.png")


def test_top_k_above_rank_uses_whole_subspaces(world):
    caches = {G.label_for_dir(d): G.build_factor_cache(load_adapter(d), top_k=10) for d in world[3:5]}
    geo = G.pairwise_geometry(caches, top_k=10)  # ranks 4 and 5: k = 4
    assert (geo.k_used["left"] == 4).all()
    Wi, Wj = (dense_deltas(d)["layers.0.self_attn.o_proj"] for d in world[3:5])
    ref = np.sort(sl.subspace_angles(np.linalg.svd(Wi)[0][:, :4], np.linalg.svd(Wj)[0][:, :4]))
    mi = geo.module_names.index("layers.0.self_attn.o_proj")
    np.testing.assert_allclose(geo.angles["left"][mi, 0, :4], ref, atol=TOL)
    assert np.isnan(geo.angles["left"][mi, 0, 4:]).all()


def test_real_peft_adapters_end_to_end(tmp_path):
    from peft import LoraConfig, get_peft_model

    deltas, dirs = [], []
    for seed in (1, 2):
        model = tiny_qwen3()
        torch.manual_seed(seed)
        pm = get_peft_model(
            model,
            LoraConfig(
                r=4, lora_alpha=8, init_lora_weights=False, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
            ),
        )
        d = tmp_path / "toy" / f"seed{seed}"
        pm.save_pretrained(d)
        dirs.append(d)
        deltas.append(
            np.concatenate(
                [
                    m.get_delta_weight("default").detach().double().numpy().ravel()
                    for n, m in sorted(pm.named_modules(), key=lambda x: x[0])
                    if hasattr(m, "get_delta_weight") and hasattr(m, "lora_A")
                ]
            )
        )
    geo = G.compare_adapter_dirs(dirs, tmp_path / "geo", top_k=2, progress=False)
    assert geo.labels == ["toy/seed1", "toy/seed2"]
    cos = pd.read_csv(tmp_path / "geo" / "cosine_global.tsv", sep="\t", index_col=0)
    want = deltas[0] @ deltas[1] / np.linalg.norm(deltas[0]) / np.linalg.norm(deltas[1])
    assert cos.loc["toy/seed1", "toy/seed2"] == pytest.approx(want, abs=1e-6)  # PEFT computes in float32


def test_cache_of_hand_built_adapter(world):
    from lossgeom.lora.adapters import LoraAdapter

    ad = load_adapter(world[0])
    hand = LoraAdapter(
        path=ad.path,
        base_model_name_or_path=ad.base_model_name_or_path,
        target_modules=ad.target_modules,
        r=4,
        lora_alpha=8.0,
        use_rslora=False,
        rank_pattern={},
        alpha_pattern={},
        modules=dict(ad.modules),
    )  # no groups
    a, b = G.build_factor_cache(ad, K), G.build_factor_cache(hand, K)
    for name in ad.modules:
        np.testing.assert_array_equal(a.modules[name].S, b.modules[name].S)


def test_bare_replicate_directories_are_labelled_and_floor_the_shared_init_pairs(world, tmp_path):
    """``lossgeom geometry DIR ...`` without labels: a data-order replicate ``.../a/seed1data5`` is
    ``a/seed1data5`` (before: ``seed1data5``, so two methods' replicates were duplicate labels)."""
    rng = np.random.default_rng(7)
    reps = [write_adapter(tmp_path / m / "seed1data5", random_factors(rng, r=4), r=4) for m in ("a", "b")]
    dirs = [world[0], world[2], *reps]  # a/seed1, b/seed1 and their replicates
    geo = G.compare_adapter_dirs(dirs, tmp_path / "geo", top_k=K, progress=False)
    assert geo.labels == ["a/seed1", "b/seed1", "a/seed1data5", "b/seed1data5"]
    nf = pd.read_csv(tmp_path / "geo" / "noise_floor.tsv", sep="\t")
    nf = nf[nf.metric == "cosine_global"].set_index(["pair_a", "pair_b"])
    rep = nf.loc[("a/seed1", "a/seed1data5")]
    assert (rep.kind, rep.init, rep.data_order) == ("same-method", "shared", "other")
    cross = nf.loc[("a/seed1", "b/seed1")]
    assert cross.floor_kind == "data-order" and cross.n_data_pairs_a == 1 and cross.n_data_pairs_b == 1
    assert cross.floor == pytest.approx(
        (nf.loc[("a/seed1", "a/seed1data5")].value + nf.loc[("b/seed1", "b/seed1data5")].value) / 2
    )
