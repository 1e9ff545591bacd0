"""Benchmark of the base-spectrum statistics (lossgeom.geometry.spectrum) at Qwen3-4B's attention shape, on CPU.

Holds random base weights in memory (no model is loaded): 36 layers of q_proj 2560->4096, k_proj / v_proj
2560->1024 and o_proj 4096->2560 (144 modules), each ``W ~ N(0, 1/d_in)``, float64 (about 7.5 GB at 36
layers), keyed as transformers names them (``model.layers.{i}.self_attn.{m}``). Writes ``--adapters``
random LoRA adapters (rank 32, alpha 64; ``B ~ N(0, b_std^2)``, ``A ~ N(0, 1/d_in)``; float32 as PEFT
saves them; the delta's size is printed) as real PEFT directories (``sft/seed{42+i}``) in a temporary
directory and reads them back with ``load_adapter`` + ``build_factor_cache(top_k=1)``, as the pipeline
does. Then measures, side by side in one run:

1. the base SVD once per base: ``base_svd(W, k, cache_dir)`` of every base module with an empty cache (hash
   of the weight + LAPACK ``gesdd`` + writing the ``.npz``), and again with the cache warm (hash + reading
   it; the files were just written, so mostly from the page cache); and the hashing alone;
2. the suite: ``base_spectrum`` on all adapters with the warm cache, total and per adapter. Per module and
   adapter it is the Lanczos top-``k`` of ``W + dW`` and of ``W + dW_r`` (the chance delta), the
   statistics, and (once per module for all adapters) the warm cache load. ``top_singular`` and
   ``base_svd`` are wrapped (timing and keeping the triplets for the check below; the overhead is a
   perf_counter call) to split the total into its parts;
3. the dense baseline: ``np.linalg.svd(W + dW, full_matrices=False)`` (forming ``W + dW`` included) of
   every tuned weight, and of ``W + dW_r`` with the suite's very chance delta (the suite does both), for
   the same adapters. Drawing ``dW_r`` and the statistics are not timed (both are common to the two
   ways). ``--dense-layers L`` times it on the first ``L`` layers only and scales it linearly to all;
4. the ratio dense / suite per adapter, and an accuracy check of the suite against the dense SVDs on
   every module timed densely: the max relative error of the top-``k`` singular values, the largest
   principal angle (deg) between the suite's top-``k`` left subspace and the dense one, and whether the
   suite's intruder count equals the dense one (``max_i |<u'_j, U0_i>|`` over all base left singular
   vectors below ``--threshold``, as PEFT's ``peft/tuners/lora/intruders.py`` counts), tuned and chance.

The delta's size: ``--b-std 0.007`` (the default) gives ``||dW||_F / ||W||_F`` about 0.08 and
``||dW||_2 / ||W||_2`` about 0.3-0.45, where the intruder counts are mixed (none in some modules, several
in others), so the intruder check is not trivially passed. With ``--b-std 0.02`` the delta's top singular
values exceed the base's (``||dW||_2 / ||W||_2`` about 1.1): every top vector is then an intruder, tuned
and chance alike, and Lanczos converges about 2-3x faster (the top of ``W + dW`` is the delta's, better
separated). A Gaussian base is a hard case for Lanczos: its top singular values sit at the
Marchenko-Pastur edge, close together (a real model's are more spread, and ARPACK converges faster there).

Memory: the base weights (about 7.5 GB at 36 layers) plus one module's base SVD and dense SVD at a time.
Disk: the base-SVD cache holds every base module's full ``U`` and top-``k`` ``V`` (about 5.5 GB at 36
layers) in the temporary directory (``--workdir`` chooses where it is made).

Time: the dense baseline dominates (two dense SVDs per module and adapter, each several seconds at this
shape); ``--layers 2 --dense-layers 1`` is a quick check.

Environment: ``--blas-threads N`` sets OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS before
numpy is imported (default: leave the environment as it is).

    python benchmarks/bench_base_spectrum.py [--adapters 1] [--layers 36] [--top-k 10] [--threshold 0.5]
                                             [--rank 32] [--dense-layers L] [--blas-threads N]
"""

from __future__ import annotations

import argparse
import hashlib
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

import numpy as np  # noqa: E402

SHAPES = {"q_proj": (4096, 2560), "k_proj": (1024, 2560), "v_proj": (1024, 2560), "o_proj": (2560, 4096)}


def make_base(layers: int, seed: int) -> dict[str, np.ndarray]:
    """Random base weights ``W ~ N(0, 1/d_in)``, float64, keyed ``model.layers.{i}.self_attn.{m}``."""
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(layers):
        for mod, (d_out, d_in) in SHAPES.items():
            W = rng.standard_normal((d_out, d_in))
            W *= 1.0 / np.sqrt(d_in)
            out[f"model.layers.{layer}.self_attn.{mod}"] = W
    return out


def write_adapters(root: Path, n: int, layers: int, r: int, b_std: float, seed: int) -> list[Path]:
    """``n`` PEFT adapter directories ``root/sft/seed{42+i}`` (float32 safetensors, alpha = 2 r)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    dirs = []
    for a in range(n):
        tensors = {}
        for layer in range(layers):
            for mod, (d_out, d_in) in SHAPES.items():
                p = f"base_model.model.model.layers.{layer}.self_attn.{mod}"
                tensors[f"{p}.lora_A.weight"] = (rng.standard_normal((r, d_in)) / np.sqrt(d_in)).astype(np.float32)
                tensors[f"{p}.lora_B.weight"] = (b_std * rng.standard_normal((d_out, r))).astype(np.float32)
        d = root / "sft" / f"seed{42 + a}"
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


class Recorder:
    """Wraps ``spectrum.top_singular`` and ``spectrum.base_svd``: times every call and keeps each
    ``top_singular`` result (``U``, ``S``) in call order, with the module it was called for."""

    def __init__(self, spectrum, names_by_id: dict[int, str]):
        self.spectrum = spectrum
        self.names_by_id = names_by_id
        self.calls: list[tuple[str | None, np.ndarray, np.ndarray, float]] = []
        self.t_base = 0.0
        self._top, self._base = spectrum.top_singular, spectrum.base_svd

    def __enter__(self):
        def top_singular(W, B, A, scale, k):
            t = time.perf_counter()
            U, S, V = self._top(W, B, A, scale, k)
            self.calls.append((self.names_by_id.get(id(W)), U, S, time.perf_counter() - t))
            return U, S, V

        def base_svd(*a, **kw):
            t = time.perf_counter()
            out = self._base(*a, **kw)
            self.t_base += time.perf_counter() - t
            return out

        self.spectrum.top_singular, self.spectrum.base_svd = top_singular, base_svd
        return self

    def __exit__(self, *exc):
        self.spectrum.top_singular, self.spectrum.base_svd = self._top, self._base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=int, default=1)
    ap.add_argument("--layers", type=int, default=36, help="layers of the base and adapters (fewer: a quick run)")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--threshold", type=float, default=0.5, help="intruder threshold on max |cos|")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--b-std", type=float, default=0.007, help="standard deviation of the LoRA B entries (see above)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random weights and of base_spectrum")
    ap.add_argument(
        "--dense-layers",
        type=int,
        default=None,
        help="time the dense baseline on this many layers and scale linearly (default: all layers)",
    )
    ap.add_argument("--workdir", type=Path, default=None, help="where to make the temp dir (default: the system's)")
    ap.add_argument("--blas-threads", default=None, help="BLAS threads (set before numpy is imported)")
    args = ap.parse_args()
    dense_layers = args.layers if args.dense_layers is None else max(1, min(args.dense_layers, args.layers))

    from lossgeom.geometry import build_factor_cache, label_for_dir, load_adapter, spectrum
    from lossgeom.lora.lowrank import principal_angles

    print(
        f"BLAS threads: OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}, "
        f"cores: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}"
    )
    n_mod = 4 * args.layers
    root = Path(tempfile.mkdtemp(prefix="bench_base_spectrum_", dir=args.workdir))
    try:
        t = time.perf_counter()
        base = make_base(args.layers, args.seed)
        gib = sum(W.nbytes for W in base.values()) / 2**30
        print(f"base: {n_mod} random float64 weights ({gib:.2f} GiB) in {time.perf_counter() - t:.1f} s")
        t = time.perf_counter()
        dirs = write_adapters(root / "adapters", args.adapters, args.layers, args.rank, args.b_std, args.seed + 1)
        caches = {}
        for d in dirs:
            label = label_for_dir(d)
            caches[label] = build_factor_cache(load_adapter(d), top_k=1, label=label)
        print(
            f"adapters: {len(dirs)} written (rank {args.rank}, alpha {2 * args.rank}, B std {args.b_std}) "
            f"and loaded in {time.perf_counter() - t:.1f} s"
        )
        name_of = {
            f"model.layers.{i}.self_attn.{m}": f"layers.{i}.self_attn.{m}" for i in range(args.layers) for m in SHAPES
        }
        mod_of = {short: short.rsplit(".", 1)[1] for short in name_of.values()}
        names_by_id = {id(W): name_of[key] for key, W in base.items()}

        # 1. the base SVD: cold cache, then warm; the hashing alone
        cache_dir = root / "base_svd"
        cold = dict.fromkeys(SHAPES, 0.0)
        warm = dict.fromkeys(SHAPES, 0.0)
        s0, fro0 = {}, {}
        for key, W in base.items():
            mod = mod_of[name_of[key]]
            t = time.perf_counter()
            b = spectrum.base_svd(W, args.top_k, cache_dir)
            cold[mod] += time.perf_counter() - t
            s0[name_of[key]], fro0[name_of[key]] = float(b.S[0]), float(np.sqrt(np.sum(b.S**2)))
            del b
        for key, W in base.items():
            t = time.perf_counter()
            b = spectrum.base_svd(W, args.top_k, cache_dir)
            warm[mod_of[name_of[key]]] += time.perf_counter() - t
            del b
        t = time.perf_counter()
        for W in base.values():
            hashlib.sha256(repr(W.shape).encode() + W.tobytes()).hexdigest()
        t_hash = time.perf_counter() - t
        cache_gib = sum(p.stat().st_size for p in cache_dir.iterdir()) / 2**30
        t_cold, t_warm = sum(cold.values()), sum(warm.values())

        rel_fro = [m.norm / fro0[n] for c in caches.values() for n, m in c.modules.items()]
        rel_2 = [m.S[0] / s0[n] for c in caches.values() for n, m in c.modules.items()]
        print(
            f"delta size: ||dW||_F / ||W||_F median {np.median(rel_fro):.3f}; "
            f"||dW||_2 / ||W||_2 median {np.median(rel_2):.3f} (range {min(rel_2):.3f} - {max(rel_2):.3f})"
        )

        # 2. the suite, warm cache
        with Recorder(spectrum, names_by_id) as rec:
            t = time.perf_counter()
            df = spectrum.base_spectrum(
                caches, base, args.top_k, args.threshold, args.seed, cache_dir=cache_dir, progress=False
            )
            t_suite = time.perf_counter() - t
        if len(rec.calls) != 2 * len(df) or any(rec.calls[2 * i][0] != n for i, n in enumerate(df["module"])):
            raise RuntimeError("the recorded top_singular calls do not line up with base_spectrum's rows")
        suite_u = {}  # (label, module, kind) -> (U, S)
        lanczos = {kind: dict.fromkeys(SHAPES, 0.0) for kind in ("tuned", "chance")}
        for i, (label, name) in enumerate(zip(df["label"], df["module"])):
            for j, kind in enumerate(("tuned", "chance")):
                _, U, S, dt = rec.calls[2 * i + j]
                suite_u[label, name, kind] = (U, S)
                lanczos[kind][mod_of[name]] += dt
        t_lanczos = sum(sum(v.values()) for v in lanczos.values())

        # 3. the dense baseline, with 4. the accuracy check against it
        dense = {kind: dict.fromkeys(SHAPES, 0.0) for kind in ("tuned", "chance")}
        rows = df.set_index(["label", "module"])
        sv_err, angle, n_checked, n_dense_mod = 0.0, 0.0, 0, 0
        mismatch = {"tuned": 0, "chance": 0}
        with_intr = {"tuned": 0, "chance": 0}
        intr = {(way, kind): 0 for way in ("suite", "dense") for kind in ("tuned", "chance")}
        for key, W in base.items():
            name = name_of[key]
            if int(name.split(".")[1]) >= dense_layers:
                continue
            n_dense_mod += 1
            mod = mod_of[name]
            b = spectrum.base_svd(W, args.top_k, cache_dir)
            for label, c in caches.items():
                m = c.modules[name]
                k = int(rows.loc[(label, name), "k"])
                Br, Ar = spectrum.random_delta(m.S, m.shape, spectrum._rng(args.seed, label, name))
                for kind, (sB, A) in (("tuned", (m.scale * m.B, m.A)), ("chance", (Br, Ar))):
                    t = time.perf_counter()
                    Ud, Sd, Vt = np.linalg.svd(W + sB @ A, full_matrices=False)
                    dense[kind][mod] += time.perf_counter() - t
                    Ud, Sd = Ud[:, :k].copy(), Sd[:k]
                    del Vt
                    Us, Ss = suite_u[label, name, kind]
                    sv_err = max(sv_err, float(np.max(np.abs(Ss - Sd) / Sd)))
                    angle = max(angle, float(np.degrees(np.max(principal_angles(Us, Ud)))))
                    n_dense = int(np.sum(np.max(np.abs(b.U.T @ Ud), axis=0) < args.threshold))
                    n_suite = int(rows.loc[(label, name), "intruders" if kind == "tuned" else "chance_intruders"])
                    intr["dense", kind] += n_dense
                    with_intr[kind] += 0 < n_dense
                    intr["suite", kind] += n_suite
                    mismatch[kind] += n_dense != n_suite
                    n_checked += 1
            del b
        scale_up = args.layers / dense_layers
        t_dense = sum(sum(v.values()) for v in dense.values()) * scale_up
    finally:
        shutil.rmtree(root, ignore_errors=True)

    n_ad = len(caches)
    per_ad = t_suite / n_ad
    dense_per_ad = t_dense / n_ad
    marginal = (t_suite - rec.t_base) / n_ad
    print(f"\n== per module shape, mean seconds per module (layers: {args.layers}; adapters: {n_ad}) ==")
    print(
        f"{'module':8s} {'d_out x d_in':>12s} {'base SVD':>9s} {'warm load':>9s} {'Lanczos':>9s} {'Lanczos':>9s}"
        f" {'dense SVD':>9s} {'dense SVD':>9s} {'dense /':>8s}"
    )
    print(
        f"{'':8s} {'':>12s} {'(cold)':>9s} {'':>9s} {'tuned':>9s} {'chance':>9s} {'tuned':>9s} {'chance':>9s} {'Lanczos':>8s}"
    )
    for mod, (d_out, d_in) in SHAPES.items():
        nl, nd = args.layers, dense_layers
        lz = (lanczos["tuned"][mod] + lanczos["chance"][mod]) / (nl * n_ad)
        dn = (dense["tuned"][mod] + dense["chance"][mod]) / (nd * n_ad)
        print(
            f"{mod:8s} {f'{d_out}x{d_in}':>12s} {cold[mod] / nl:9.3f} {warm[mod] / nl:9.3f} "
            f"{lanczos['tuned'][mod] / (nl * n_ad):9.3f} {lanczos['chance'][mod] / (nl * n_ad):9.3f} "
            f"{dense['tuned'][mod] / (nd * n_ad):9.3f} {dense['chance'][mod] / (nd * n_ad):9.3f} {dn / lz:8.1f}"
        )

    print(f"\n== measured (one run; {n_mod} modules, k={args.top_k}, {n_ad} adapter(s)) ==")
    print(f"1. base SVD, cold cache (hash + gesdd + save)  : {t_cold:9.2f} s   (cache: {cache_gib:.2f} GiB on disk)")
    print(f"   base SVD, warm cache (hash + load)          : {t_warm:9.2f} s   (of which hashing: {t_hash:.2f} s)")
    print(f"2. suite base_spectrum, warm cache, total      : {t_suite:9.2f} s")
    print(f"   per adapter (total / {n_ad})                   : {per_ad:9.2f} s")
    print(
        f"   parts: Lanczos {t_lanczos:.2f} s (tuned {sum(lanczos['tuned'].values()):.2f}, chance "
        f"{sum(lanczos['chance'].values()):.2f}) | warm cache loads {rec.t_base:.2f} s | chance delta + stats "
        f"{t_suite - t_lanczos - rec.t_base:.2f} s"
    )
    print(f"   per adapter without the cache loads         : {marginal:9.2f} s (what one more adapter costs)")
    scaled = (
        f" (timed on {dense_layers} of {args.layers} layers, scaled x{scale_up:.2f})"
        if dense_layers < args.layers
        else ""
    )
    print(f"3. dense SVDs of W + dW and W + dW_r, total   : {t_dense:9.2f} s{scaled}")
    print(f"   per adapter                                 : {dense_per_ad:9.2f} s")
    print(f"4. dense / suite, per adapter                  : {dense_per_ad / per_ad:9.2f} x")
    print(f"   dense / suite without the cache loads       : {dense_per_ad / marginal:9.2f} x")
    print(
        f"   accuracy on {n_checked} triplet sets ({n_dense_mod} modules x {n_ad} adapter(s) x tuned, chance): "
        f"max rel. error of the top-{args.top_k} singular values {sv_err:.1e}; largest principal angle "
        f"suite vs dense top-{args.top_k} left subspace {angle:.1e} deg"
    )
    print(
        f"   intruders (threshold {args.threshold}): suite tuned {intr['suite', 'tuned']} / dense "
        f"{intr['dense', 'tuned']}, suite chance {intr['suite', 'chance']} / dense {intr['dense', 'chance']}; "
        f"modules whose count differs: tuned {mismatch['tuned']}, chance {mismatch['chance']}"
        + (" (all equal)" if not any(mismatch.values()) else "")
    )
    print(
        f"   modules with at least one intruder (dense): tuned {with_intr['tuned']}, chance {with_intr['chance']} "
        f"of {n_dense_mod * n_ad}"
    )
    print()
    print(
        f"suite: {per_ad:.1f} s per adapter ({n_mod} modules, k={args.top_k}), base SVD once per base: {t_cold:.1f} s"
    )
    print(
        f"dense SVD of every tuned weight: {dense_per_ad:.1f} s per adapter; suite is {dense_per_ad / per_ad:.1f}x faster"
    )


if __name__ == "__main__":
    main()
