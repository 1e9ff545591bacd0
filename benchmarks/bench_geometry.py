"""Benchmark of the weight-space geometry suite at the paper's scale, on CPU.

Writes 12 synthetic LoRA adapters with Qwen3-4B's attention shapes (36 layers; q_proj 2560->4096,
k_proj / v_proj 2560->1024, o_proj 4096->2560; rank 32, alpha 64; float32 as PEFT saves them) as
real PEFT directories ({method}/seed{seed}, 6 methods x 2 seeds) in a temporary directory, then
measures, side by side in one run:

1. plain loading: every tensor of the 12 safetensors files read into memory (float32, no checks);
   and the project's loader (lossgeom.lora.adapters.load_adapter: validation + float64);
2. the full suite: lossgeom.geometry.compare_adapter_dirs (load + factor caches + all pairs +
   writing every table; no figures), end to end; then the same stages timed one by one;
3. a dense baseline: form each delta dW = s B A (d_out x d_in) and take its SVD with numpy, plus
   the dense pairwise inner products and principal angles. It would take hours, so one module of
   each shape is timed and scaled: time(q) + 2 time(k) [v has k's shape] + time(o), per layer,
   x 36 layers x 12 adapters for the SVDs; x 36 x 66 pairs for the inner products and angles.

Targets (issue 4): suite >= 100x faster than dense; suite <= 2x plain loading.

The all-pairs Gram matrices are dense float64 BLAS work (sum over modules of (d_out + d_in) x
(n r)^2 / 2 multiply-adds, 54 G at this scale); the script also times that BLAS kernel alone and
prints the floor it puts under the suite.

Environment: ``--blas-threads N`` sets OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS
before numpy is imported (default: leave the environment as it is). On a machine whose cores are
busy with other jobs, OpenBLAS's own threading can make small and medium products several times
slower than one thread; compare both settings. ``--no-hugepage`` sets NUMPY_MADVISE_HUGEPAGE=0
(see its help).

    python benchmarks/bench_geometry.py [--adapters 12] [--layers 36] [--rank 32] [--repeat 2]
                                        [--blas-threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # thread settings must precede the first numpy import
    for i, a in enumerate(sys.argv):
        v = (
            a.split("=", 1)[1]
            if a.startswith("--blas-threads=")
            else (sys.argv[i + 1] if a == "--blas-threads" and i + 1 < len(sys.argv) else None)
        )
        if v:
            for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = v
    if "--no-hugepage" in sys.argv:
        os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"

import numpy as np  # noqa: E402
import scipy.linalg as sl  # noqa: E402

SHAPES = {"q_proj": (4096, 2560), "k_proj": (1024, 2560), "v_proj": (1024, 2560), "o_proj": (2560, 4096)}
METHODS = ("sft", "rft", "dft", "rift", "grpo", "dpo")


def write_adapters(root: Path, n: int, layers: int, r: int, seed: int = 0) -> list[Path]:
    """n PEFT adapter directories; adapters of one method share a component (so angles vary)."""
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    dirs = []
    shared = {}
    for a in range(n):
        method, s = METHODS[(a // 2) % len(METHODS)] + ("" if a < 2 * len(METHODS) else str(a)), 42 + 81 * (a % 2)
        tensors = {}
        for layer in range(layers):
            for mod, (d_out, d_in) in SHAPES.items():
                key = (method, layer, mod)
                if key not in shared or a % 2 == 0:
                    shared[key] = torch.randn(d_out, r, generator=g) * 1e-3
                p = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
                tensors[f"{p}.lora_A.weight"] = torch.randn(r, d_in, generator=g) / d_in**0.5
                tensors[f"{p}.lora_B.weight"] = shared[key] + 0.5e-3 * torch.randn(d_out, r, generator=g)
        d = root / method / f"seed{s}"
        d.mkdir(parents=True)
        save_file(tensors, str(d / "adapter_model.safetensors"))
        (d / "adapter_config.json").write_text(
            json.dumps(
                {
                    "peft_type": "LORA",
                    "base_model_name_or_path": "Qwen/Qwen3-4B-Instruct-2507",
                    "r": r,
                    "lora_alpha": 2 * r,
                    "lora_dropout": 0.0,
                    "target_modules": sorted(SHAPES),
                    "use_rslora": False,
                    "rank_pattern": {},
                    "alpha_pattern": {},
                    "bias": "none",
                    "task_type": "CAUSAL_LM",
                }
            )
        )
        dirs.append(d)
    return dirs


def plain_load(dirs: list[Path]) -> list:
    """Read every tensor of every file into memory (float32 numpy arrays), nothing else. All stay
    resident until the timing ends, as the suite needs them all at once."""
    from safetensors import safe_open

    arrays = []
    for d in dirs:
        with safe_open(str(d / "adapter_model.safetensors"), framework="np") as f:
            arrays.extend(f.get_tensor(k) for k in f.keys())
    return arrays


def gram_floor(layers: int, n: int, r: int) -> dict:
    """FLOPs of the all-pairs factor Grams and the time they take at a measured float64 syrk rate."""
    from scipy.linalg.blas import dsyrk

    rows = layers * sum(d_out + d_in for d_out, d_in in SHAPES.values())
    flop = rows * (n * r) * (n * r + 1)  # syrk: n r (n r + 1) / 2 multiply-adds per row, 2 flops each
    x = np.random.default_rng(0).standard_normal((4096, n * r))
    dsyrk(1.0, x.T, trans=0)
    t = time.perf_counter()
    for _ in range(5):
        dsyrk(1.0, x.T, trans=0)
    rate = 5 * 4096 * (n * r) * (n * r + 1) / (time.perf_counter() - t)
    return {"gflop": flop / 1e9, "gflops": rate / 1e9, "seconds": flop / rate}


def best_of(fn, repeat: int) -> tuple[float, list[float]]:
    """Best and all wall times of ``repeat`` calls; each result is dropped only after its timing."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
        del result
    return min(times), times


def dense_baseline(d: Path, layers: int, n_adapters: int) -> dict:
    """Time dense forming + SVD of one module per shape, dense inner products and angles; scale up."""
    from lossgeom.lora.adapters import load_adapter

    ad = load_adapter(d)
    n_pairs = n_adapters * (n_adapters - 1) // 2
    out = {}
    svd_per_layer = ip_per_layer = ang_per_layer = 0.0
    for mod in ("q_proj", "k_proj", "o_proj"):
        m = ad.modules[f"layers.0.self_attn.{mod}"]
        t = time.perf_counter()
        W = m.scale * m.B @ m.A
        U, S, Vt = np.linalg.svd(W, full_matrices=False)
        t_svd = time.perf_counter() - t
        W2 = 1.1 * W
        t = time.perf_counter()
        for _ in range(5):
            np.vdot(W, W2)
        t_ip = (time.perf_counter() - t) / 5
        t = time.perf_counter()
        for _ in range(5):
            sl.subspace_angles(U[:, :10], U[:, 1:11])
            sl.subspace_angles(Vt[:10].T, Vt[1:11].T)
        t_ang = (time.perf_counter() - t) / 5
        mult = 2 if mod == "k_proj" else 1  # v_proj has k_proj's shape
        svd_per_layer += mult * t_svd
        ip_per_layer += mult * t_ip
        ang_per_layer += mult * t_ang
        out[f"svd_{mod}_s"] = t_svd
        del W, W2, U, S, Vt
    out["svd_total_s"] = svd_per_layer * layers * n_adapters
    out["pairs_total_s"] = (ip_per_layer + ang_per_layer) * layers * n_pairs
    out["total_s"] = out["svd_total_s"] + out["pairs_total_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=int, default=12)
    ap.add_argument("--layers", type=int, default=36)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=2, help="repetitions of loading and of the suite (best is used)")
    ap.add_argument("--workdir", type=Path, default=None, help="where to write the adapters (default: a temp dir)")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense baseline")
    ap.add_argument("--blas-threads", default=None, help="BLAS threads (set before numpy is imported)")
    ap.add_argument(
        "--no-hugepage",
        action="store_true",
        help="NUMPY_MADVISE_HUGEPAGE=0: on hosts whose THP defrag is 'madvise', numpy's huge-page "
        "advice makes first touches of fresh memory several times slower",
    )
    args = ap.parse_args()

    from lossgeom.geometry import build_factor_cache, compare_adapter_dirs, label_for_dir, write_geometry
    from lossgeom.lora.adapters import load_adapter

    print(
        f"BLAS threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
        f"NUMPY_MADVISE_HUGEPAGE={os.environ.get('NUMPY_MADVISE_HUGEPAGE', 'unset')}, "
        f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}"
    )
    root = Path(tempfile.mkdtemp(prefix="bench_geometry_", dir=args.workdir))
    try:
        t = time.perf_counter()
        dirs = write_adapters(root / "adapters", args.adapters, args.layers, args.rank)
        size = sum((d / "adapter_model.safetensors").stat().st_size for d in dirs)
        print(
            f"wrote {len(dirs)} adapters ({args.layers} layers, rank {args.rank}, {size / 2**20:.0f} MiB of "
            f"safetensors) in {time.perf_counter() - t:.1f} s"
        )
        labels = [label_for_dir(d) for d in dirs]

        t_plain, all_plain = best_of(lambda: plain_load(dirs), args.repeat)
        t_load64, all_load64 = best_of(lambda: [load_adapter(d) for d in dirs], args.repeat)
        out = root / "geometry"
        t_suite, all_suite = best_of(
            lambda: compare_adapter_dirs(dirs, out, top_k=args.top_k, labels=labels, progress=False), args.repeat
        )

        # the same suite, stage by stage
        t0 = time.perf_counter()
        ads = [load_adapter(d) for d in dirs]
        t1 = time.perf_counter()
        caches = {lab: build_factor_cache(a, top_k=args.top_k, label=lab) for lab, a in zip(labels, ads)}
        t2 = time.perf_counter()
        from lossgeom.geometry import pairwise_geometry

        geo = pairwise_geometry(caches, top_k=args.top_k)
        t3 = time.perf_counter()
        write_geometry(caches, root / "geometry2", top_k=args.top_k)  # recomputes the pairs, then writes
        t4 = time.perf_counter()
        del ads, caches

        print("\n== measured (one run; best of", args.repeat, "where repeated) ==")
        print(f"plain loading, 12 files -> float32 in memory : {t_plain:8.2f} s   (runs: {_fmt(all_plain)})")
        print(f"lossgeom load_adapter (validate + float64)   : {t_load64:8.2f} s   (runs: {_fmt(all_load64)})")
        print(f"full suite compare_adapter_dirs              : {t_suite:8.2f} s   (runs: {_fmt(all_suite)})")
        print(
            f"  stages: load {t1 - t0:.2f} s | factor caches {t2 - t1:.2f} s | all pairs {t3 - t2:.2f} s | "
            f"pairs + writing tables {t4 - t3:.2f} s"
        )
        print(
            f"  {len(geo.labels)} adapters, {len(geo.pairs)} pairs, {len(geo.module_names)} modules, "
            f"sine-formula recomputations: {geo.n_sine_recomputed}"
        )

        floor = gram_floor(args.layers, args.adapters, args.rank)
        print(
            f"  BLAS floor: the all-pairs Grams are {floor['gflop']:.0f} GFLOP of float64 syrk; at the syrk rate "
            f"measured here ({floor['gflops']:.0f} GFLOP/s) that alone takes {floor['seconds']:.2f} s"
        )

        ratios = {"suite / plain loading": t_suite / t_plain, "suite / load_adapter": t_suite / t_load64}
        if not args.no_dense:
            dense = dense_baseline(dirs[0], args.layers, args.adapters)
            print("\n== dense baseline (timed on one module per shape, scaled; see docstring) ==")
            print(
                "per-module dense form+SVD: "
                + ", ".join(
                    f"{k[4:-2]} {v:.2f} s" for k, v in dense.items() if k.startswith("svd_") and k != "svd_total_s"
                )
            )
            print(f"dense SVDs, {args.adapters} adapters x {args.layers * 4} modules: {dense['svd_total_s']:10.0f} s")
            print(f"dense inner products + angles, all pairs      : {dense['pairs_total_s']:10.0f} s")
            print(
                f"dense total (estimate)                        : {dense['total_s']:10.0f} s "
                f"({dense['total_s'] / 3600:.1f} h)"
            )
            ratios["dense / suite"] = dense["total_s"] / t_suite
        print("\n== ratios ==")
        for k, v in ratios.items():
            print(f"{k:24s}: {v:8.2f}")
        print("targets: dense / suite >= 100;  suite / plain loading <= 2")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _fmt(xs):
    return ", ".join(f"{x:.2f}" for x in xs)


if __name__ == "__main__":
    main()
