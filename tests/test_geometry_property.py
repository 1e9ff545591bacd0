"""Property test: every output of ``pairwise_geometry`` against a dense float64 reference.

Cases are drawn by a seeded generator: 2-16 adapters, ranks 1-16 mixed across adapters and across
modules (``rank_pattern``), rsLoRA on some adapters, several layers, and module shapes that include
square ones whose width equals the stacked rank ``n * r`` (where shape-keyed scratch buffers once
aliased the stacked B and A factors and corrupted the cosines). The reference forms every delta
``scale * B @ A`` densely from the generated factors (the scale computed here from the PEFT rule,
not by the package) and takes cosines of flattened deltas, SVDs with numpy and principal angles with
``scipy.linalg.subspace_angles``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.linalg as sl
import torch
from safetensors.torch import save_file

from lossgeom import geometry as G
from lossgeom.lora.adapters import load_adapter

MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")
N_CASES = 40
N_FAST = 8  # the first cases run in the fast loop (scripts/test.sh --fast); the rest are marked heavy
COS_TOL = 1e-9
ANGLE_TOL = 1e-7  # radians; subspaces of a dense SVD are themselves accurate to ~eps / gap


def _write(path, factors, *, r, alpha, rslora, rank_pattern):
    """factors: (layer, module) -> (B (d_out, r_m), A (r_m, d_in)); written as a PEFT adapter."""
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
                "use_rslora": rslora,
                "target_modules": list(MODULES),
                "base_model_name_or_path": "prop/base",
                "rank_pattern": rank_pattern,
            }
        )
    )


def draw_case(rng: np.random.Generator, case: int) -> dict:
    """One random world: adapter ranks per module, module shapes, scales, layers."""
    n = int(rng.integers(2, 17))
    layers = int(rng.integers(1, 4))
    default_r = [int(rng.integers(1, 17)) for _ in range(n)]
    # Per adapter, some modules get another rank through rank_pattern.
    patterns = []
    for i in range(n):
        pat = {m: int(rng.integers(1, 17)) for m in MODULES if rng.random() < 0.3}
        patterns.append(pat)
    ranks = {m: [patterns[i].get(m, default_r[i]) for i in range(n)] for m in MODULES}
    shapes = {}
    # Every other case makes one module square with width = stacked rank (the aliasing shape);
    # the rest draw shapes freely, squares included.
    square_m = MODULES[case % 4] if case % 2 == 0 else None
    for m in MODULES:
        if m == square_m:
            d = sum(ranks[m])
            shapes[m] = (d, d)
        else:
            d_out = int(rng.integers(2, 49))
            d_in = d_out if rng.random() < 0.3 else int(rng.integers(2, 49))
            shapes[m] = (d_out, d_in)
    rslora = [bool(rng.random() < 0.3) for _ in range(n)]
    alpha = [float(rng.choice([1.0, 8.0, 16.0, 64.0])) for _ in range(n)]
    return dict(
        n=n,
        layers=layers,
        default_r=default_r,
        patterns=patterns,
        ranks=ranks,
        shapes=shapes,
        rslora=rslora,
        alpha=alpha,
        top_k=int(rng.integers(1, 12)),
    )


def build_case(tmp_path, rng, spec):
    """Write the adapters; return their dirs and the dense deltas {(layer, module): W} per adapter."""
    dirs, dense = [], []
    for i in range(spec["n"]):
        factors, W = {}, {}
        for layer in range(spec["layers"]):
            for m in MODULES:
                d_out, d_in = spec["shapes"][m]
                r = spec["ranks"][m][i]
                B, A = rng.standard_normal((d_out, r)), rng.standard_normal((r, d_in))
                factors[(layer, m)] = (B, A)
                s = spec["alpha"][i] / (math.sqrt(r) if spec["rslora"][i] else r)
                W[(layer, m)] = s * B @ A
        d = tmp_path / f"m{i % 3}" / f"seed{i}"
        _write(
            d,
            factors,
            r=spec["default_r"][i],
            alpha=spec["alpha"][i],
            rslora=spec["rslora"][i],
            rank_pattern=spec["patterns"][i],
        )
        dirs.append(d)
        dense.append(W)
    return dirs, dense


def _cos(x, y):
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def check_against_dense(geo, dense, top_k):
    """Assert every output of ``geo`` equals the dense reference."""
    n = len(dense)
    keys = [(int(name.split(".")[1]), name.split(".")[-1]) for name in geo.module_names]
    assert sorted(keys) == sorted(dense[0])
    # per-module inner products and cosines
    cos_mod = G.PairGeometry.cosine_of(geo.inner)
    for mi, key in enumerate(keys):
        for i in range(n):
            for j in range(n):
                x, y = dense[i][key].ravel(), dense[j][key].ravel()
                ref = x @ y
                scale = np.linalg.norm(x) * np.linalg.norm(y)
                assert abs(geo.inner[mi, i, j] - ref) <= COS_TOL * scale, (key, i, j)
                assert cos_mod[mi, i, j] == pytest.approx(_cos(x, y), abs=COS_TOL), (key, i, j)
    # global and per-layer cosines, norms
    flat = [np.concatenate([d[k].ravel() for k in keys]) for d in dense]
    cos_g = G.PairGeometry.cosine_of(geo.inner_global())
    ref_g = np.array([[_cos(flat[i], flat[j]) for j in range(n)] for i in range(n)])
    np.testing.assert_allclose(cos_g, ref_g, atol=COS_TOL, rtol=0)
    np.testing.assert_allclose(geo.norms(), [np.linalg.norm(f) for f in flat], rtol=COS_TOL)
    cos_l = G.PairGeometry.cosine_of(geo.inner_by_layer())
    for li, layer in enumerate(geo.layers()):
        lk = [k for k in keys if k[0] == layer]
        fl = [np.concatenate([d[k].ravel() for k in lk]) for d in dense]
        ref_l = np.array([[_cos(fl[i], fl[j]) for j in range(n)] for i in range(n)])
        np.testing.assert_allclose(cos_l[li], ref_l, atol=COS_TOL, rtol=0)
    # principal angles and top-1 agreement, per module and pair
    svd = [{k: np.linalg.svd(d[k], full_matrices=False) for k in keys} for d in dense]
    for p, (i, j) in enumerate(geo.pairs):
        for mi, key in enumerate(keys):
            Ui, Si, Vti = svd[i][key]
            Uj, Sj, Vtj = svd[j][key]
            ri = int(np.sum(Si > 1e-10 * Si[0]))
            rj = int(np.sum(Sj > 1e-10 * Sj[0]))
            k = min(top_k, ri, rj)
            for side, (Qi, Qj) in (("left", (Ui, Uj)), ("right", (Vti.T, Vtj.T))):
                assert geo.k_used[side][mi, p] == k, (side, key, i, j)
                ref = np.sort(sl.subspace_angles(Qi[:, :k], Qj[:, :k]))
                got = geo.angles[side][mi, p]
                np.testing.assert_allclose(got[:k], ref, atol=ANGLE_TOL, rtol=0, err_msg=f"{side} {key} {i},{j}")
                assert np.all(np.isnan(got[k:]))
                agree = abs(Qi[:, 0] @ Qj[:, 0])
                assert geo.agreement[side][mi, p] == pytest.approx(agree, abs=ANGLE_TOL), (side, key, i, j)


@pytest.mark.parametrize(
    "case", [c if c < N_FAST else pytest.param(c, marks=pytest.mark.heavy) for c in range(N_CASES)]
)
def test_pairwise_geometry_matches_dense(tmp_path, case):
    rng = np.random.default_rng(1000 + case)
    spec = draw_case(rng, case)
    dirs, dense = build_case(tmp_path, rng, spec)
    caches = {f"a{i}": G.build_factor_cache(load_adapter(d), top_k=spec["top_k"]) for i, d in enumerate(dirs)}
    geo = G.pairwise_geometry(caches, top_k=spec["top_k"])
    check_against_dense(geo, dense, spec["top_k"])


def test_square_module_with_width_equal_to_stacked_rank(tmp_path):
    """The reported case: 8 adapters of rank 8, square 64 x 64 q_proj and o_proj, written to
    ``cosine_global.tsv`` through the CLI's own path, against the dense cosine."""
    rng = np.random.default_rng(14)
    shapes = {"q_proj": (64, 64), "k_proj": (32, 64), "v_proj": (32, 64), "o_proj": (64, 64)}
    shared = {
        (layer, m): (rng.standard_normal((s[0], 8)), rng.standard_normal((8, s[1])))
        for layer in range(2)
        for m, s in shapes.items()
    }
    dirs, flat = [], []
    for i in range(8):
        factors = {}
        mix = 0.2 + 0.1 * i  # a spread of true cosines, none of them +-1
        for key, (B0, A0) in shared.items():
            B = mix * B0 + (1 - mix) * rng.standard_normal(B0.shape)
            A = mix * A0 + (1 - mix) * rng.standard_normal(A0.shape)
            factors[key] = (B, A)
        d = tmp_path / ("sft", "rft", "dft", "rift")[i // 2] / f"seed{(42, 123)[i % 2]}"
        _write(d, factors, r=8, alpha=16.0, rslora=False, rank_pattern={})
        dirs.append(d)
        flat.append(np.concatenate([(2.0 * B @ A).ravel() for _, (B, A) in sorted(factors.items())]))
    G.compare_adapter_dirs(dirs, tmp_path / "geo", top_k=4, progress=False)
    got = pd.read_csv(tmp_path / "geo" / "cosine_global.tsv", sep="\t", index_col=0)
    ref = np.array([[_cos(x, y) for y in flat] for x in flat])
    np.testing.assert_allclose(got.to_numpy(), ref, atol=1e-9, rtol=0)
    assert np.abs(ref[~np.eye(8, dtype=bool)]).max() < 0.99  # the bug wrote exact +-1 here
