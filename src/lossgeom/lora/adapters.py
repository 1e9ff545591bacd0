"""Read standard PEFT LoRA adapter directories into float64 factors, with strict validation.

A PEFT LoRA directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` whose keys
look like ``base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`` (shape
``(r, d_in)``) and ``...lora_B.weight`` (shape ``(d_out, r)``). The update of that layer is
``dW = scale * B @ A`` with ``scale = alpha / r`` (``alpha / sqrt(r)`` with ``use_rslora``), where
``r`` and ``alpha`` honour ``rank_pattern`` and ``alpha_pattern`` exactly as PEFT resolves them.

Modules are named canonically from the first numbered block on:
``base_model.model.model.layers.3.self_attn.q_proj`` -> ``layers.3.self_attn.q_proj`` (layer 3).

Only safetensors are read (never pickles). Every problem stops with one
:class:`AdapterMismatchError` naming the directory (or adapters), the module and what was expected.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, NamedTuple, Protocol, Sequence

import numpy as np

from ..errors import InputError
from ..fsutil import file_sha256

__all__ = [
    "AdapterMismatchError",
    "UnsupportedAdapterError",
    "ModuleDelta",
    "ShapeGroup",
    "LoraAdapter",
    "load_adapter",
    "check_compatible",
    "canonical_module_name",
    "layer_of",
    "adapter_fingerprint",
    "CONFIG_NAME",
    "WEIGHTS_NAME",
]

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

# base_model.model.<path>.lora_A[.<adapter name>].weight ; PEFT strips the adapter name on save.
_KEY_RE = re.compile(r"^(?:base_model\.model\.)?(?P<path>.+?)\.lora_(?P<ab>[AB])(?:\.(?P<name>[^.]+))?\.weight$")
_NUMBERED_BLOCK_RE = re.compile(r"(?:^|\.)(?P<tail>[A-Za-z_][\w]*\.(?P<idx>\d+)\..+)$")


class AdapterMismatchError(InputError):
    """An adapter directory is malformed, unsupported, or incompatible with the others."""


class UnsupportedAdapterError(AdapterMismatchError):
    """A well-formed PEFT adapter whose update is not ``s * B @ A`` (DoRA, LoRA bias, embedding LoRA,
    full weights, another PEFT type): the geometry cannot compare it, though PEFT can still merge it."""


def canonical_module_name(path: str) -> str:
    """Short module name from the first numbered block on, e.g.
    ``model.layers.3.self_attn.q_proj`` -> ``layers.3.self_attn.q_proj``; a path without a
    numbered block is returned unchanged."""
    m = _NUMBERED_BLOCK_RE.search(path)
    return m.group("tail") if m else path


def layer_of(name: str) -> int | None:
    """Layer index of a canonical module name (first integer component), ``None`` if there is none."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


@dataclass(frozen=True)
class ModuleDelta:
    """The LoRA update of one linear layer, ``dW = scale * B @ A``.

    Attributes:
        B: ``(d_out, r)`` float64. A: ``(r, d_in)`` float64. scale: ``alpha / r`` (or
        ``alpha / sqrt(r)`` with rsLoRA). layer: layer index parsed from the name (``None`` if none).
    """

    B: np.ndarray
    A: np.ndarray
    scale: float
    layer: int | None = None

    @property
    def rank(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(d_out, d_in)`` of the dense update (never formed)."""
        return int(self.B.shape[0]), int(self.A.shape[1])


@dataclass(frozen=True)
class ShapeGroup:
    """Modules of one adapter sharing ``(d_out, d_in, r)``, stacked for batched linear algebra.

    Attributes:
        names: module names, in stacking order. B: ``(m, d_out, r)``. A: ``(m, r, d_in)``.
        scales: ``(m,)``. The :class:`ModuleDelta` of each name holds views into ``B`` and ``A``.
    """

    names: tuple[str, ...]
    B: np.ndarray
    A: np.ndarray
    scales: np.ndarray


@dataclass
class LoraAdapter:
    """A PEFT LoRA adapter read into float64 factors.

    Attributes:
        path: the adapter directory. base_model_name_or_path: from the config (``None`` if absent).
        target_modules: the config's target modules (sorted tuple, or the regex string as given).
        r, lora_alpha, use_rslora, rank_pattern, alpha_pattern: the config's values.
        modules: canonical module name -> :class:`ModuleDelta`, sorted by (layer, name).
        groups: ``(d_out, d_in, r)`` -> :class:`ShapeGroup` (views shared with ``modules``).
        config: the raw config dict.
        module_paths: canonical module name -> the module path its tensors were stored under, without
            PEFT's ``base_model.model.`` prefix (e.g. ``model.layers.3.self_attn.q_proj``).
    """

    path: Path
    base_model_name_or_path: str | None
    target_modules: tuple[str, ...] | str
    r: int
    lora_alpha: float
    use_rslora: bool
    rank_pattern: dict
    alpha_pattern: dict
    modules: dict[str, ModuleDelta]
    groups: dict[tuple[int, int, int], ShapeGroup] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    module_paths: dict[str, str] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return str(self.path)

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """Canonical module name -> ``(d_out, d_in)``."""
        return {k: m.shape for k, m in self.modules.items()}

    def ranks(self) -> dict[str, int]:
        return {k: m.rank for k, m in self.modules.items()}

    def scales(self) -> dict[str, float]:
        return {k: m.scale for k, m in self.modules.items()}


def _fail(where, msg: str, cls: type[AdapterMismatchError] = AdapterMismatchError) -> AdapterMismatchError:
    return cls(f"{where}: {msg}")


def _pattern_key(patterns: Iterable[str], key: str) -> str | None:
    """The pattern PEFT would use for module ``key`` (same rule as peft.utils.other.get_pattern_key:
    the first pattern ``p`` with ``re.match(rf"(.*\\.)?({p})$", key)``)."""
    for p in patterns:
        if re.match(rf"(.*\.)?({p})$", key):
            return p
    return None


def resolve_rank_alpha(config: dict, module_path: str) -> tuple[int, float]:
    """``(r, alpha)`` for one module as PEFT resolves them (``module_path`` without the
    ``base_model.model.`` prefix, e.g. ``model.layers.3.self_attn.q_proj``)."""
    rank_pattern = config.get("rank_pattern") or {}
    alpha_pattern = config.get("alpha_pattern") or {}
    rk = _pattern_key(rank_pattern.keys(), module_path)
    ak = _pattern_key(alpha_pattern.keys(), module_path)
    r = int(rank_pattern[rk]) if rk is not None else int(config["r"])
    alpha = float(alpha_pattern[ak]) if ak is not None else float(config["lora_alpha"])
    return r, alpha


def lora_scale(r: int, alpha: float, use_rslora: bool) -> float:
    """PEFT's scaling: ``alpha / sqrt(r)`` with rsLoRA, else ``alpha / r``."""
    return float(alpha) / (math.sqrt(r) if use_rslora else float(r))


def _read_config(path: Path) -> dict:
    cfg_path = path / CONFIG_NAME
    if not cfg_path.is_file():
        raise _fail(path, f"missing {CONFIG_NAME} (not a PEFT adapter directory)")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _fail(cfg_path, f"invalid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise _fail(cfg_path, "expected a JSON object")
    peft_type = str(cfg.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise _fail(cfg_path, f"peft_type is {peft_type!r}, expected 'LORA'", UnsupportedAdapterError)
    for k in ("r", "lora_alpha"):
        if k not in cfg:
            raise _fail(cfg_path, f"missing key {k!r}")
    if cfg.get("use_dora"):
        raise _fail(cfg_path, "use_dora=true is not supported (a DoRA update is not s*B@A)", UnsupportedAdapterError)
    if cfg.get("lora_bias"):
        raise _fail(cfg_path, "lora_bias=true is not supported (the update has a bias term)", UnsupportedAdapterError)
    return cfg


class _ModuleMeta(NamedTuple):
    """What ``load_adapter`` knows of one module before reading its factors."""

    name: str  # canonical module name
    path: str  # the module's path in the safetensors keys
    d_out: int
    d_in: int
    r: int
    scale: float
    keys: dict  # "A" / "B" -> tensor key


def _factor_keys(keys: list[str], wpath: Path) -> dict[str, dict[str, str]]:
    """module path -> {"A": key, "B": key}; a tensor that is not a plain LoRA factor stops here."""
    parts: dict[str, dict[str, str]] = {}
    for k in keys:
        m = _KEY_RE.match(k)
        if m is None:
            if "lora_embedding" in k:
                why = "embedding LoRA is not supported"
            elif "lora_magnitude_vector" in k:
                why = "DoRA magnitude vectors are not supported"
            elif ".lora_" in k:
                why = "unsupported LoRA tensor (only lora_A.weight / lora_B.weight)"
            else:
                why = "not a LoRA factor (full weights such as modules_to_save are not supported)"
            raise _fail(wpath, f"tensor {k!r}: {why}", UnsupportedAdapterError)
        parts.setdefault(m.group("path"), {})[m.group("ab")] = k
    if not parts:
        raise _fail(wpath, "no lora_A / lora_B tensors found")
    return parts


def _module_metas(parts: dict, shapes: dict, cfg: dict, wpath: Path) -> list[_ModuleMeta]:
    """Every module's shapes, rank and scale, checked against each other and the config; sorted by
    (layer, name), the order of :attr:`LoraAdapter.modules`."""
    use_rslora = bool(cfg.get("use_rslora", False))
    metas = []
    for mpath, ab in parts.items():
        name = canonical_module_name(mpath)
        for which in ("A", "B"):
            if which not in ab:
                raise _fail(wpath, f"module {name!r} has lora_{'B' if which == 'A' else 'A'} but no lora_{which}")
        sa, sb = shapes[ab["A"]], shapes[ab["B"]]
        if len(sa) != 2 or len(sb) != 2:
            raise _fail(wpath, f"module {name!r}: factors must be 2-D, got A {sa} and B {sb}")
        if sa[0] != sb[1]:
            raise _fail(
                wpath,
                f"module {name!r}: shape mismatch, lora_A {sa} is (r, d_in) and lora_B {sb} "
                f"is (d_out, r) with different r ({sa[0]} vs {sb[1]})",
            )
        r_cfg, alpha = resolve_rank_alpha(cfg, mpath)
        if sa[0] != r_cfg:
            raise _fail(
                wpath, f"module {name!r}: rank {sa[0]} in the weights but {r_cfg} from the config (r / rank_pattern)"
            )
        metas.append(_ModuleMeta(name, mpath, sb[0], sa[1], sa[0], lora_scale(sa[0], alpha, use_rslora), ab))
    names = [m.name for m in metas]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise _fail(wpath, f"module names collide after canonicalisation: {dup[:3]}")
    metas.sort(key=lambda m: (layer_of(m.name) if layer_of(m.name) is not None else -1, m.name))
    return metas


def _read_groups(f, metas: list[_ModuleMeta], bf16: bool) -> tuple[dict, dict[str, ModuleDelta]]:
    """The factors as one float64 array per shape (each module's factors are views into it, so batched
    linear algebra later needs no extra copy): (shape -> ShapeGroup, name -> ModuleDelta in ``metas``'
    order). ``f``: the open safetensors file (torch framework when ``bf16``: numpy has no bfloat16)."""
    by_shape: dict[tuple[int, int, int], list[_ModuleMeta]] = {}
    for m in metas:
        by_shape.setdefault((m.d_out, m.d_in, m.r), []).append(m)
    groups: dict[tuple[int, int, int], ShapeGroup] = {}
    deltas: dict[str, ModuleDelta] = {}
    for (d_out, d_in, r), ms in by_shape.items():
        Bg = np.empty((len(ms), d_out, r), dtype=np.float64)
        Ag = np.empty((len(ms), r, d_in), dtype=np.float64)
        for i, m in enumerate(ms):
            for which, dest in (("A", Ag), ("B", Bg)):
                t = f.get_tensor(m.keys[which])
                dest[i] = t.float().numpy() if bf16 else t  # widened to float64 on assignment
        scales = np.array([m.scale for m in ms], dtype=np.float64)
        groups[(d_out, d_in, r)] = ShapeGroup(tuple(m.name for m in ms), Bg, Ag, scales)
        for i, m in enumerate(ms):
            deltas[m.name] = ModuleDelta(B=Bg[i], A=Ag[i], scale=float(scales[i]), layer=layer_of(m.name))
    return groups, {m.name: deltas[m.name] for m in metas}


def _check_finite(groups: dict, wpath: Path) -> None:
    """Raise naming the file and the first module whose factor holds NaN or Inf (a diverged training run):
    every measure of it would be NaN, or LAPACK's "did not converge" with no module named."""
    for g in groups.values():
        for which, stack in (("lora_A", g.A), ("lora_B", g.B)):
            bad = ~np.isfinite(stack).reshape(len(g.names), -1).all(axis=1)
            if bad.any():
                name = g.names[int(np.argmax(bad))]
                raise _fail(wpath, f"module {name}: {which} holds NaN or Inf (a diverged run?)")


def zero_modules(adapter: LoraAdapter) -> list[str]:
    """The modules whose delta is exactly zero (``B = 0`` or ``A = 0``: PEFT's initialisation, untrained)."""
    out = []
    for g in adapter.groups.values():
        zero = ~(g.B.reshape(len(g.names), -1).any(axis=1) & g.A.reshape(len(g.names), -1).any(axis=1))
        out += [n for n, z in zip(g.names, zero) if z]
    return out


def load_adapter(path: str | Path) -> LoraAdapter:
    """Read a PEFT LoRA adapter directory into float64 factors.

    Args:
        path: directory with ``adapter_config.json`` and ``adapter_model.safetensors``.
    Returns:
        :class:`LoraAdapter`; factors of modules with the same ``(d_out, d_in, r)`` are stored in
        one stacked array per shape (see :class:`ShapeGroup`).
    Raises:
        AdapterMismatchError: missing files, a pickle-only adapter, a safetensors file that cannot be
        read (truncated, corrupt), a module with only A or only B, factors that are not 2-D, inner
        dimensions of A and B that differ, a rank other than the config's, or a factor holding NaN or Inf;
        :class:`UnsupportedAdapterError` (a subclass) for variants (DoRA, LoRA bias, embedding LoRA,
        extra full weights, another PEFT type).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_dir():
        raise _fail(path, "adapter directory does not exist")
    cfg = _read_config(path)
    wpath = path / WEIGHTS_NAME
    if not wpath.is_file():
        extra = (
            " (only adapter_model.bin found: pickles are not loaded; save with safetensors)"
            if (path / "adapter_model.bin").is_file()
            else ""
        )
        raise _fail(path, f"missing {WEIGHTS_NAME}{extra}")
    try:
        with safe_open(str(wpath), framework="np") as f:
            has_bf16 = any(f.get_slice(k).get_dtype() == "BF16" for k in f.keys())
    except SafetensorError as e:  # a truncated or corrupt file: name it, not the Rust deserialiser
        raise _fail(wpath, f"not a readable safetensors file ({e}); it may be truncated or corrupt") from None
    # numpy cannot hold bfloat16: read such files through torch (bf16 -> f32 is exact)
    with safe_open(str(wpath), framework="pt" if has_bf16 else "np") as f:
        keys = list(f.keys())
        parts = _factor_keys(keys, wpath)
        metas = _module_metas(parts, {k: tuple(f.get_slice(k).get_shape()) for k in keys}, cfg, wpath)
        groups, modules = _read_groups(f, metas, has_bf16)
    _check_finite(groups, wpath)
    tm = cfg.get("target_modules")
    target_modules = tm if isinstance(tm, str) else tuple(sorted(tm or ()))
    return LoraAdapter(
        path=path,
        base_model_name_or_path=cfg.get("base_model_name_or_path"),
        target_modules=target_modules,
        r=int(cfg["r"]),
        lora_alpha=float(cfg["lora_alpha"]),
        use_rslora=bool(cfg.get("use_rslora", False)),
        rank_pattern=dict(cfg.get("rank_pattern") or {}),
        alpha_pattern=dict(cfg.get("alpha_pattern") or {}),
        modules=modules,
        groups=groups,
        config=cfg,
        module_paths={canonical_module_name(mpath): mpath for mpath in parts},
    )


class _AdapterLike(Protocol):
    base_model_name_or_path: str | None
    target_modules: tuple[str, ...] | str

    @property
    def source(self) -> str: ...

    def module_shapes(self) -> dict[str, tuple[int, int]]: ...


def check_compatible(adapters: Sequence[_AdapterLike]) -> None:
    """Check that adapters can be compared module by module; raise one clear error if not.

    Works on :class:`LoraAdapter` and on factor caches (anything with ``source``,
    ``base_model_name_or_path``, ``target_modules`` and ``module_shapes()``). The first adapter is
    the reference. Ranks, alphas and rsLoRA may differ; these may not: the base model, the target
    modules, the set of adapted modules and each module's ``(d_out, d_in)``.

    Raises:
        AdapterMismatchError: saying which adapter, which module or key, expected vs found.
    """
    if len(adapters) < 1:
        raise AdapterMismatchError("check_compatible: no adapters given")
    ref = adapters[0]
    ref_shapes = ref.module_shapes()
    for other in adapters[1:]:
        where = f"adapter {other.source} vs reference {ref.source}"
        if other.base_model_name_or_path != ref.base_model_name_or_path:
            raise AdapterMismatchError(
                f"{where}: different base models: expected {ref.base_model_name_or_path!r}, "
                f"found {other.base_model_name_or_path!r}"
            )
        if other.target_modules != ref.target_modules:
            raise AdapterMismatchError(
                f"{where}: different target_modules: expected {ref.target_modules!r}, found {other.target_modules!r}"
            )
        shapes = other.module_shapes()
        missing = sorted(set(ref_shapes) - set(shapes))
        extra = sorted(set(shapes) - set(ref_shapes))
        if missing or extra:
            raise AdapterMismatchError(
                f"{where}: different adapted modules: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}"
                f" ({len(missing)}), extra {extra[:5]}{' ...' if len(extra) > 5 else ''} ({len(extra)})"
            )
        for name, shp in ref_shapes.items():
            if shapes[name] != shp:
                raise AdapterMismatchError(
                    f"{where}: module {name!r} has a different shape: expected (d_out, d_in) = {shp}, "
                    f"found {shapes[name]}"
                )


def adapter_fingerprint(path: str | Path) -> str:
    """SHA-256 (hex) of an adapter's config and weights bytes: identifies its content."""
    path = Path(path)
    return file_sha256(path / CONFIG_NAME, path / WEIGHTS_NAME, names=True)
