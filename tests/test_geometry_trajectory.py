"""Tests of lossgeom.geometry.trajectory (and PairGeometry.subset): each step's tables against the single-step
suite run on that step's adapters, paths and cross-step pairs against dense float64 deltas."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from lossgeom.geometry import build_factor_cache, compare_adapter_dirs, load_adapter, pairwise_geometry
from lossgeom.geometry.trajectory import build_trajectory, saved_steps, write_trajectory
from lossgeom.labels import Label, step_dir

SHAPES = {"q_proj": (12, 8), "k_proj": (6, 8), "v_proj": (6, 8), "o_proj": (8, 8)}  # square o_proj
STEPS, ANALYSIS = (10, 20, 30), 20


def _write(path, factors, r):
    t = {}
    for (layer, m), (B, A) in factors.items():
        p = f"base_model.model.model.layers.{layer}.self_attn.{m}"
        t[f"{p}.lora_A.weight"] = torch.tensor(A)
        t[f"{p}.lora_B.weight"] = torch.tensor(B)
    path.mkdir(parents=True, exist_ok=True)
    save_file(t, str(path / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": sorted({m for _, m in factors})}
    (path / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "tiny"}))


def _study(root, rng, labels, steps=STEPS, analysis=ANALYSIS, r=3):
    """Adapters laid out as the train rule writes them: each label's path is a random walk of factors
    (so its steps are correlated), the analysis step in the directory, the others in step{N}/."""
    dirs = {}
    shared = {
        (l, m): (rng.standard_normal((d[0], r)), rng.standard_normal((r, d[1])))
        for l in range(2)
        for m, d in SHAPES.items()
    }
    for label in labels:
        d = root / label
        f = {k: (0.7 * B + 0.3 * rng.standard_normal(B.shape), A.copy()) for k, (B, A) in shared.items()}
        for step in steps:
            f = {
                k: (B + 0.2 * rng.standard_normal(B.shape), A + 0.2 * rng.standard_normal(A.shape))
                for k, (B, A) in f.items()
            }
            _write(d if step == analysis else step_dir(d, step), f, r)
        (d / "train_info.json").write_text(json.dumps({"save_steps": list(steps), "analysis_step": analysis}))
        dirs[label] = d
    return dirs


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    labels = ["a/seed1", "a/seed2", "a/seed1data7", "b/seed1", "b/seed2", "b/seed1data7", "c/seed1"]
    dirs = _study(root, np.random.default_rng(0), labels)
    # a method with steps of its own (as online GRPO): shares no step but 20 with the others
    dirs.update(_study(root, np.random.default_rng(1), ["d/seed1", "d/seed1data7"], steps=(5, 20), analysis=20))
    return dirs


def _dense(d):
    ad = load_adapter(d)
    return np.concatenate([(m.scale * m.B @ m.A).ravel() for _, m in sorted(ad.modules.items())])


@pytest.mark.heavy
def test_each_step_equals_the_single_step_suite_on_that_step(study, tmp_path):
    write_trajectory(study, tmp_path / "traj", top_k=2, cache_dir=tmp_path / "cache")
    steps = pd.read_csv(tmp_path / "traj" / "steps.tsv", sep="\t")
    assert sorted(steps["step"].unique()) == [5, 10, 20, 30]
    for step in (5, 10, 20, 30):
        dirs = {l: saved_steps(d)[step] for l, d in study.items() if step in saved_steps(d)}
        compare_adapter_dirs(list(dirs.values()), tmp_path / f"one{step}", top_k=2, labels=list(dirs), progress=False)
        want = pd.read_csv(tmp_path / f"one{step}" / "noise_floor.tsv", sep="\t")
        got = steps[steps["step"] == step].drop(columns="step").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    at20 = steps[(steps["step"] == 20) & (steps["metric"] == "cosine_global")]
    assert len(at20) == 9 * 8 // 2  # every label has step 20
    assert at20["data_floor"].notna().all() and at20["seed_floor"].notna().any()


def test_paths_and_cross_steps_match_dense_deltas(study, tmp_path):
    write_trajectory(study, tmp_path / "traj", top_k=2)
    paths = pd.read_csv(tmp_path / "traj" / "paths.tsv", sep="\t")
    cross = pd.read_csv(tmp_path / "traj" / "cross_steps.tsv", sep="\t")
    vec = {(l, s): _dense(d) for l, ld in study.items() for s, d in saved_steps(ld).items()}
    assert len(cross) == len(vec) * (len(vec) - 1) // 2

    def cos(x, y):
        return x @ y / np.linalg.norm(x) / np.linalg.norm(y)

    # (the tables hold 10 significant digits: lossgeom.fsutil.write_table)
    for r in paths.itertuples(index=False):
        here = vec[(r.label, r.step)]
        assert r.norm == pytest.approx(np.linalg.norm(here), rel=1e-9)
        assert r.cos_to_analysis == pytest.approx(cos(here, vec[(r.label, r.analysis_step)]), abs=1e-9)
        assert r.norm_ratio_to_analysis == pytest.approx(
            np.linalg.norm(here) / np.linalg.norm(vec[(r.label, r.analysis_step)]), rel=1e-9
        )
        if np.isnan(r.previous_step):
            assert r.step == min(s for (l, s) in vec if l == r.label)
        else:
            assert r.cos_to_previous == pytest.approx(cos(here, vec[(r.label, int(r.previous_step))]), abs=1e-9)
    lab = Label.parse
    assert paths.loc[paths["label"] == "a/seed1data7", "data_seed"].iloc[0] == lab("a/seed1data7").data_order_seed
    for r in cross.sample(40, random_state=0).itertuples(index=False):
        a, b = vec[(r.label_a, r.step_a)], vec[(r.label_b, r.step_b)]
        assert r.cosine_global == pytest.approx(cos(a, b), abs=1e-9)
        assert r.norm_ratio == pytest.approx(np.linalg.norm(b) / np.linalg.norm(a), rel=1e-9)


def test_factor_caches_are_reused_across_runs(study, tmp_path):
    write_trajectory(study, tmp_path / "t1", top_k=2, cache_dir=tmp_path / "cache")
    files = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()}
    assert len(files) == sum(len(saved_steps(d)) for d in study.values())
    write_trajectory(study, tmp_path / "t2", top_k=2, cache_dir=tmp_path / "cache")
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").iterdir()} == files  # read, not rebuilt
    for name in ("paths", "steps", "cross_steps"):
        assert (tmp_path / "t1" / f"{name}.tsv").read_bytes() == (tmp_path / "t2" / f"{name}.tsv").read_bytes()


@pytest.mark.parametrize("seed", range(4))
def test_subset_equals_the_geometry_of_the_subset(seed, tmp_path):
    """Random shapes, ranks (rank-deficient included) and subsets: sliced pairs == pairs recomputed."""
    rng = np.random.default_rng(seed)
    d = int(rng.integers(4, 20))
    shapes = {"q_proj": (d, int(rng.integers(3, 20))), "o_proj": (d, d)}
    labels = [f"m{i}/seed{i}" for i in range(6)]
    dirs = {}
    for i, label in enumerate(labels):
        r = int(rng.integers(1, 5))
        f = {(0, m): (rng.standard_normal((s[0], r)), rng.standard_normal((r, s[1]))) for m, s in shapes.items()}
        if i == 2:  # a rank-deficient delta
            f = {k: (np.repeat(B[:, :1], B.shape[1], axis=1), A) for k, (B, A) in f.items()}
        _write(tmp_path / label, f, r)
        dirs[label] = tmp_path / label
    caches = {l: build_factor_cache(load_adapter(d), top_k=3, label=l) for l, d in dirs.items()}
    full = pairwise_geometry(caches, top_k=3)
    pick = list(rng.choice(labels, size=int(rng.integers(2, 6)), replace=False))
    sub = full.subset(pick, rename=[f"x{i}" for i in range(len(pick))])
    want = pairwise_geometry({l: caches[l] for l in pick}, top_k=3)
    assert sub.labels == [f"x{i}" for i in range(len(pick))]
    np.testing.assert_array_equal(sub.pairs, want.pairs)
    np.testing.assert_allclose(sub.inner, want.inner, rtol=1e-13, atol=1e-13)
    for side in ("left", "right"):
        np.testing.assert_array_equal(sub.k_used[side], want.k_used[side])
        np.testing.assert_allclose(sub.angles[side], want.angles[side], atol=1e-12)
        np.testing.assert_allclose(sub.agreement[side], want.agreement[side], atol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        full.subset(pick[:1])


def test_a_missing_saved_step_is_named(study, tmp_path):
    import shutil

    d = tmp_path / "a" / "seed1"
    shutil.copytree(study["a/seed1"], d)
    shutil.rmtree(step_dir(d, 30))
    with pytest.raises(FileNotFoundError, match=r"step 30 .* holds no adapter"):
        build_trajectory({"a/seed1": d, "b/seed1": study["b/seed1"]}, top_k=2)
    (d / "train_info.json").unlink()
    with pytest.raises(FileNotFoundError, match="no train_info.json"):
        saved_steps(d)
