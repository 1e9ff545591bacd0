"""Every cache proves its content (issue 31): the factor caches (safetensors) and the base-SVD caches (npz)
carry a digest of their arrays, checked on every read. A damaged, foreign or older-format file is rebuilt
with one WARNING line naming it and why, never trusted and never a traceback.

The references are the numbers computed without any cache (``build_factor_cache`` on the adapter,
``base_spectrum`` without ``cache_dir``; the trajectory's tables written without ``cache_dir``), and the
damage is done to the bytes on disk: one flipped bit inside an array's payload (found from the file's own
layout, its header left intact), zero bytes, a truncated file, garbage, a file of older code.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file
from test_geometry import random_factors, write_adapter
from test_geometry_spectrum import _peft_model
from test_geometry_trajectory import _study

from lossgeom.fsutil import arrays_digest
from lossgeom.geometry import build_factor_cache, factor_cache_for_dir, load_adapter, pairwise_geometry
from lossgeom.geometry.factors import CACHE_VERSION, FactorCacheError, load_factor_cache
from lossgeom.geometry.spectrum import BaseSVD, base_spectrum, spectrum_stats, top_singular
from lossgeom.geometry.trajectory import TRAJECTORY_TABLES, write_trajectory
from lossgeom.lora.adapters import canonical_module_name

K = 3
FACTORS_LOG = "lossgeom.geometry.factors"
SPECTRUM_LOG = "lossgeom.geometry.spectrum"


# ---- the bytes on disk ------------------------------------------------------------------------------


def _flip(path: Path, offset: int, bit: int = 6) -> None:
    """Flip one bit of the byte at ``offset``."""
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def _flip_middle_float(path: Path, payload: tuple[int, int]) -> None:
    """Flip an exponent bit (bit 6 of byte 6, little-endian) of the middle float64 of a payload ``(start,
    end)``: a large change of one value."""
    start, end = payload
    _flip(path, start + 8 * ((end - start) // 16) + 6)


def _safetensors_payload(path: Path, tensor: str) -> tuple[int, int]:
    """Byte range of ``tensor``'s data: the header's length is the first 8 bytes (little-endian), then the
    JSON header, then the data, each tensor at its ``data_offsets`` from there."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    start, end = json.loads(raw[8 : 8 + n])[tensor]["data_offsets"]
    return 8 + n + start, 8 + n + end


def _npz_payload(path: Path, name: str) -> tuple[int, int]:
    """Byte range of array ``name``'s data in an (uncompressed) npz: the zip member's local header (30
    bytes, its name and extra field), then the .npy header, then the data."""
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(f"{name}.npy")
    assert info.compress_type == zipfile.ZIP_STORED
    raw = path.read_bytes()
    o = info.header_offset
    n_name, n_extra = struct.unpack("<HH", raw[o + 26 : o + 30])
    start = o + 30 + n_name + n_extra
    f = io.BytesIO(raw[start : start + info.file_size])
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    read_header[version](f)
    return start + f.tell(), start + info.file_size


def _damage(path: Path, kind: str) -> None:
    """Damage of the kinds that need no knowledge of the format."""
    raw = path.read_bytes()
    if kind == "zero-bytes":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(len(raw)))
    else:
        raise ValueError(kind)


def _warnings(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logger and r.levelno == logging.WARNING]


# ---- factor caches ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    """Two rank-4 adapters of two layers x four attention projections (test_geometry's helpers)."""
    tmp = tmp_path_factory.mktemp("adapters")
    rng = np.random.default_rng(3)
    return [write_adapter(tmp / "a" / f"seed{s}", random_factors(rng), r=4) for s in (1, 2)]


def _assert_same_cache(got, want):
    """Every array, name and setting of two factor caches exactly equal."""
    assert list(got.groups) == list(want.groups) and list(got.modules) == list(want.modules)
    assert (got.top_k, got.target_modules, got.base_model_name_or_path) == (
        want.top_k,
        want.target_modules,
        want.base_model_name_or_path,
    )
    for key, g in want.groups.items():
        h = got.groups[key]
        assert h.names == g.names
        for a in ("layers", "B", "A", "scales", "S", "U", "V", "numerical_rank", "householder"):
            np.testing.assert_array_equal(getattr(h, a), getattr(g, a), err_msg=a)


def _check_rebuilt(adapters, path: Path, caplog, reason: str):
    """Read ``path`` through factor_cache_for_dir: the numbers of a cache built without any file, one WARNING
    naming the file and ``reason``, and a good file left behind (read again without a word)."""
    want = build_factor_cache(load_adapter(adapters[0]), top_k=K)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        got = factor_cache_for_dir(adapters[0], path, top_k=K, label="a/seed1")
    _assert_same_cache(got, want)
    other = build_factor_cache(load_adapter(adapters[1]), top_k=K)
    geo, ref = (pairwise_geometry({"x": c, "y": other}, top_k=K) for c in (got, want))
    np.testing.assert_array_equal(geo.inner, ref.inner)
    for side in ("left", "right"):
        np.testing.assert_array_equal(geo.angles[side], ref.angles[side])
    (line,) = _warnings(caplog, FACTORS_LOG)
    assert str(path) in line and reason in line and "rebuilding" in line and "\n" not in line
    load_factor_cache(path)  # the rebuilt file checks out
    caplog.clear()
    with caplog.at_level(logging.INFO):
        _assert_same_cache(factor_cache_for_dir(adapters[0], path, top_k=K), want)
    assert not _warnings(caplog, FACTORS_LOG)


@pytest.mark.parametrize("tensor", ["g0.U", "g0.V", "g0.S", "g1.B", "g1.A", "g0.scales"])
def test_a_flipped_bit_in_a_factor_cache_payload_is_rebuilt(adapters, tmp_path, caplog, tensor):
    path = tmp_path / "a_seed1.safetensors"
    factor_cache_for_dir(adapters[0], path, top_k=K)
    raw = path.read_bytes()
    _flip_middle_float(path, _safetensors_payload(path, tensor))
    n = 8 + struct.unpack("<Q", raw[:8])[0]
    assert path.read_bytes()[:n] == raw[:n] and path.read_bytes() != raw  # the header intact, the data not
    with pytest.raises(FactorCacheError, match="digest mismatch"):
        load_factor_cache(path)
    _check_rebuilt(adapters, path, caplog, "content digest mismatch")


def test_a_flipped_bit_in_a_factor_cache_s_metadata_is_rebuilt(adapters, tmp_path, caplog):
    """The digest covers the metadata too: a module's name changed by one bit ('q' -> 'p') in the header."""
    path = tmp_path / "a_seed1.safetensors"
    factor_cache_for_dir(adapters[0], path, top_k=K)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    _flip(path, 8 + raw[8 : 8 + n].index(b"q_proj"), bit=0)
    _check_rebuilt(adapters, path, caplog, "content digest mismatch")


@pytest.mark.parametrize("kind", ["zero-bytes", "truncated", "garbage"])
def test_an_unreadable_factor_cache_is_rebuilt(adapters, tmp_path, caplog, kind):
    path = tmp_path / "a_seed1.safetensors"
    factor_cache_for_dir(adapters[0], path, top_k=K)
    _damage(path, kind)
    _check_rebuilt(adapters, path, caplog, "cannot read factor cache")


def _rewrite_metadata(path: Path, edit) -> None:
    """Write the file again with the same tensors and ``edit(metadata)`` (as other code would have)."""
    with safe_open(str(path), framework="np") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(path), metadata=edit(meta))


@pytest.mark.parametrize(
    "edit, reason",
    [
        # exactly what the code before the digest wrote: version 1, no digest
        (lambda m: {**{k: v for k, v in m.items() if k != "digest"}, "version": "1"}, "version='1'"),
        (lambda m: {k: v for k, v in m.items() if k != "digest"}, "no content digest (written by older code)"),
        (lambda m: {**m, "format": "something.else"}, "format='something.else'"),
    ],
    ids=["version-1", "no-digest", "other-format"],
)
def test_a_factor_cache_of_older_or_other_code_is_rebuilt(adapters, tmp_path, caplog, edit, reason):
    path = tmp_path / "a_seed1.safetensors"
    factor_cache_for_dir(adapters[0], path, top_k=K)
    _rewrite_metadata(path, edit)
    _check_rebuilt(adapters, path, caplog, reason)
    with safe_open(str(path), framework="np") as f:
        assert f.metadata()["version"] == str(CACHE_VERSION) and len(f.metadata()["digest"]) == 64


def test_an_intact_cache_of_another_adapter_is_rebuilt_without_a_warning(adapters, tmp_path, caplog):
    """A stale cache (the adapter changed under the same name) is expected, not damage: INFO, not WARNING."""
    path = tmp_path / "a_seed1.safetensors"
    factor_cache_for_dir(adapters[1], path, top_k=K)
    with caplog.at_level(logging.INFO):
        got = factor_cache_for_dir(adapters[0], path, top_k=K)
    _assert_same_cache(got, build_factor_cache(load_adapter(adapters[0]), top_k=K))
    assert not _warnings(caplog, FACTORS_LOG)
    assert any("stale cache" in r.getMessage() for r in caplog.records if r.name == FACTORS_LOG)


def test_trajectory_tables_from_damaged_factor_caches_equal_those_without_caches(tmp_path, caplog):
    """The issue's trial, end to end: every factor cache under cache_dir gets one flipped bit in its U; the
    trajectory's tables are byte for byte those written without any cache, one WARNING per file."""
    study = _study(tmp_path / "adapters", np.random.default_rng(0), ["a/seed1", "a/seed2", "b/seed1"])
    write_trajectory(study, tmp_path / "none", top_k=2)
    write_trajectory(study, tmp_path / "cold", top_k=2, cache_dir=tmp_path / "cache")
    files = sorted((tmp_path / "cache").glob("*.safetensors"))
    assert len(files) == 9  # three adapters x three saved steps
    for path in files:
        _flip_middle_float(path, _safetensors_payload(path, "g0.U"))
    caplog.clear()
    with caplog.at_level(logging.INFO):
        write_trajectory(study, tmp_path / "damaged", top_k=2, cache_dir=tmp_path / "cache")
    write_trajectory(study, tmp_path / "warm", top_k=2, cache_dir=tmp_path / "cache")
    for name in TRAJECTORY_TABLES:
        want = (tmp_path / "none" / f"{name}.tsv").read_bytes()
        for run in ("cold", "damaged", "warm"):
            assert (tmp_path / run / f"{name}.tsv").read_bytes() == want, (run, name)
    lines = _warnings(caplog, FACTORS_LOG)
    assert sorted(line.split(":")[0] for line in lines) == [str(p) for p in files]


# ---- base-SVD caches ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spectrum_world(tmp_path_factory):
    """A tiny Qwen3's base weights and one random adapter (b_scale 30: intruders in some modules), and
    the base spectrum computed without any cache."""
    tmp = tmp_path_factory.mktemp("spectrum")
    pm = _peft_model(1, 30.0)
    pm.save_pretrained(tmp / "m" / "seed1")
    base = {  # by canonical module name (layers.N...), as the adapters' modules are
        canonical_module_name(n.removesuffix(".base_layer")): m.weight.detach().double().numpy()
        for n, m in pm.named_modules()
        if n.endswith("base_layer")
    }
    caches = {"m/seed1": build_factor_cache(load_adapter(tmp / "m" / "seed1"), top_k=1, label="m/seed1")}
    return caches, base, base_spectrum(caches, base, top_k=10, threshold=0.5)


def _spectrum(world, cache_dir):
    caches, base, _ = world
    return base_spectrum(caches, base, top_k=10, threshold=0.5, cache_dir=cache_dir)


def _svd_file(world, cache_dir: Path, module: str) -> Path:
    """The cache file of ``module``'s base weight (named by the weight's SHA-256 over shape and bytes)."""
    W = np.ascontiguousarray(world[1][module], dtype=np.float64)
    h = hashlib.sha256(repr(W.shape).encode())
    h.update(W.tobytes())
    return cache_dir / f"{h.hexdigest()[:32]}.npz"


def _wrong_vectors(path: Path) -> None:
    """A well-formed file, the meta entry of the right one, U's columns in reverse: only the digest knows."""
    with np.load(path) as z:
        arrays = {n: z[n] for n in z.files}
    arrays["U"] = np.ascontiguousarray(arrays["U"][:, ::-1])
    np.savez(path, **arrays)


def _older_code(path: Path) -> None:
    """The right SVD as the code before the digest wrote it: U, S, V and nothing else."""
    with np.load(path) as z:
        arrays = {n: z[n] for n in ("U", "S", "V")}
    np.savez(path, **arrays)


DAMAGE = {
    "flipped-bit": (lambda p, other: _flip_middle_float(p, _npz_payload(p, "U")), "BadZipFile"),
    "wrong-vectors": (lambda p, other: _wrong_vectors(p), "content digest mismatch"),
    "another-weight": (lambda p, other: shutil.copyfile(other, p), "the SVD of another weight"),
    "zero-bytes": (lambda p, other: _damage(p, "zero-bytes"), "unreadable"),
    "truncated": (lambda p, other: _damage(p, "truncated"), "unreadable"),
    "garbage": (lambda p, other: _damage(p, "garbage"), "unreadable"),
    "older-code": (lambda p, other: _older_code(p), "written by older or other code"),
}


@pytest.mark.heavy
@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_a_damaged_base_svd_cache_is_recomputed(spectrum_world, tmp_path, caplog, kind):
    damage, reason = DAMAGE[kind]
    want = spectrum_world[2]
    pd.testing.assert_frame_equal(_spectrum(spectrum_world, tmp_path), want, check_exact=True)
    # the same shape, another weight: what a file copied under another weight's name would hold
    path = _svd_file(spectrum_world, tmp_path, "layers.0.self_attn.q_proj")
    other = _svd_file(spectrum_world, tmp_path, "layers.1.self_attn.q_proj")
    assert path.is_file() and other.is_file() and len(list(tmp_path.glob("*.npz"))) == 8
    damage(path, other)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        got = _spectrum(spectrum_world, tmp_path)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    (line,) = _warnings(caplog, SPECTRUM_LOG)
    assert str(path) in line and reason in line and "recomputing" in line and "\n" not in line
    stamp = path.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO):
        pd.testing.assert_frame_equal(_spectrum(spectrum_world, tmp_path), want, check_exact=True)
    assert not _warnings(caplog, SPECTRUM_LOG) and path.stat().st_mtime_ns == stamp  # replaced by a good file


@pytest.mark.heavy
def test_intruders_from_well_formed_files_of_other_vectors_are_not_read(spectrum_world, tmp_path, caplog):
    """The issue's trial: every base-SVD file rewritten well-formed (its meta entry kept) with other,
    orthonormal left vectors; read as they are, they would turn the count of intruders into another. Each
    is recomputed, one WARNING per file, and the counts are those computed without a cache."""
    caches, base, want = spectrum_world
    _spectrum(spectrum_world, tmp_path)
    rng = np.random.default_rng(0)
    files = sorted(tmp_path.glob("*.npz"))
    for path in files:
        with np.load(path) as z:
            arrays = {n: z[n] for n in z.files}
        arrays["U"] = np.linalg.qr(rng.standard_normal(arrays["U"].shape))[0]
        np.savez(path, **arrays)
    name = "layers.0.self_attn.q_proj"
    with np.load(_svd_file(spectrum_world, tmp_path, name)) as z:
        wrong = BaseSVD(z["U"], z["S"], z["V"][:, :10])
    m = caches["m/seed1"].modules[name]
    W = base[name]
    k = min(10, len(wrong.S))
    read_as_is = spectrum_stats(wrong, *top_singular(W, m.B, m.A, m.scale, k), 0.5)["intruders"]
    row = want[want["module"] == name].iloc[0]
    assert read_as_is != row["intruders"]  # the damage matters to the number
    caplog.clear()
    with caplog.at_level(logging.INFO):
        got = _spectrum(spectrum_world, tmp_path)
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    lines = _warnings(caplog, SPECTRUM_LOG)
    assert len(lines) == len(files) == 8 and all("content digest mismatch" in line for line in lines)


def test_arrays_digest_is_sha256_of_the_documented_bytes():
    """The digest the files carry, recomputed with hashlib from its definition: each context string as JSON
    and a newline, then per name in sorted order ``[name, dtype.str, shape]`` as JSON, a newline, the bytes."""
    arrays = {"b": np.arange(6.0).reshape(2, 3).T, "a": np.array([True, False]), "c": np.zeros((2, 0))}
    h = hashlib.sha256()
    h.update(b'"ctx"\n')
    for name in ("a", "b", "c"):
        a = np.ascontiguousarray(arrays[name])
        h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode() + b"\n" + a.tobytes())
    assert arrays_digest(arrays, "ctx") == h.hexdigest()
    # one bit, a shape or a dtype changes it
    flipped = arrays["b"].copy()
    flipped.reshape(-1).view(np.uint8)[5] ^= 1  # a view of the C-ordered copy
    assert arrays_digest({**arrays, "b": flipped}, "ctx") != h.hexdigest()
    assert arrays_digest({**arrays, "b": arrays["b"].reshape(6)}, "ctx") != h.hexdigest()
    assert arrays_digest({**arrays, "a": arrays["a"].astype(np.uint8)}, "ctx") != h.hexdigest()
    assert arrays_digest(arrays, "other") != h.hexdigest()
