"""The geometry job: read adapters, build their factor caches, compute all pairs, write the tables."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..fsutil import atomic_swap_dir, check_replaceable, write_table
from ..lora.adapters import check_compatible, load_adapter
from .alignment import base_alignment
from .factors import FactorCache, build_factor_cache, factor_cache_for_dir
from .pairwise import SMALL_ANGLE_SWITCH_RAD, PairGeometry, pairwise_geometry
from .reference import RANDOM_MC_SAMPLES, RANDOM_MC_SEED
from .tables import (
    adapters_table,
    label_for_dir,
    long_table,
    noise_floor_table,
    per_layer_table,
    per_module_adapter_table,
    square_matrices,
)

log = logging.getLogger(__name__)


def write_geometry(
    caches: Mapping[str, FactorCache],
    out_dir: str | Path,
    top_k: int = 10,
    base_weights: Mapping[str, np.ndarray] | None = None,
    progress: bool = False,
) -> PairGeometry:
    """Compute all-pairs geometry and write the tables into ``out_dir``, the directory as a whole
    (:func:`lossgeom.fsutil.atomic_swap_dir`): it ends up holding exactly these files, or, when anything
    fails, its previous contents untouched (or no ``out_dir`` where there was none).

    Files (tab-separated, ``nan`` for undefined values):
      * ``long.tsv``: ``pair_a, pair_b, module, layer, side, metric, value`` (:func:`long_table`).
      * ``{metric}.tsv`` for every metric of :data:`SQUARE_METRICS` (e.g. ``cosine_global.tsv``,
        ``top1_angle_left_median.tsv``, ``orthogonal_fraction_global.tsv``, ``norm_ratio.tsv``):
        labelled square matrices, labels as the first column and the header.
      * ``per_layer.tsv`` (:func:`per_layer_table`), ``adapters.tsv`` (:func:`adapters_table`),
        ``adapter_modules.tsv`` (:func:`per_module_adapter_table`), ``noise_floor.tsv``
        (:func:`noise_floor_table`), ``settings.json``; with ``base_weights`` also
        ``base_alignment.tsv`` (:func:`base_alignment`).
    Returns:
        The :class:`PairGeometry` the tables came from.
    """
    check_replaceable(out_dir)  # before the pairs: a refused out_dir stops at once
    geo = pairwise_geometry(caches, top_k=top_k, progress=progress)
    settings = {
        "labels": geo.labels,
        "sources": [caches[l].source for l in geo.labels],
        "top_k": geo.top_k,
        "angle_unit": "degrees",
        "small_angle_switch_rad": SMALL_ANGLE_SWITCH_RAD,
        "n_sine_recomputed": geo.n_sine_recomputed,
        "random_mc_samples": RANDOM_MC_SAMPLES,
        "random_mc_seed": RANDOM_MC_SEED,
    }
    with atomic_swap_dir(out_dir) as tmp:
        for metric, df in square_matrices(geo).items():
            write_table(df, tmp / f"{metric}.tsv", index=True)
        write_table(per_layer_table(geo), tmp / "per_layer.tsv")
        write_table(adapters_table(caches), tmp / "adapters.tsv")
        write_table(per_module_adapter_table(caches), tmp / "adapter_modules.tsv")
        write_table(noise_floor_table(geo), tmp / "noise_floor.tsv")
        write_table(long_table(geo), tmp / "long.tsv")
        if base_weights is not None:
            write_table(base_alignment(caches, base_weights, top_k=top_k), tmp / "base_alignment.tsv")
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    return geo


def compare_adapter_dirs(
    dirs: Sequence[str | Path],
    out_dir: str | Path,
    top_k: int = 10,
    labels: Sequence[str] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    base_weights: Mapping[str, np.ndarray] | None = None,
) -> PairGeometry:
    """Load two or more PEFT adapter directories, check them, and write the geometry tables.

    Args:
        dirs: adapter directories (``adapter_config.json`` + ``adapter_model.safetensors``).
        out_dir: where :func:`write_geometry` writes (replaced as a whole; refused before any work when it
            holds anything but ``.tsv``/``.json`` files, or when ``cache_dir`` lies inside it).
        top_k: subspace dimension for principal angles (the paper uses 10).
        labels: one per directory; default :func:`label_for_dir` (``"{method}/seed{seed}[data{d}]"``
            for ``.../{method}/seed{seed}[data{d}]``, else the directory's name). Must be unique.
        cache_dir: if given, factor caches are reused from / saved to ``cache_dir/{label}.safetensors``
            (``/`` in the label becomes ``_``; reused only when the adapter's content fingerprint matches).
        progress: tqdm bars over adapters and modules (on stderr).
    Raises:
        AdapterMismatchError: a malformed adapter, or adapters of different base models, target
        modules, module sets or shapes (naming which and why).
        ValueError: fewer than two directories, a label count that differs, duplicate labels.

    Long because it wires the stages of a comparison (load or reuse caches, pairs, random levels, base
    alignment) and their progress messages.
    """
    check_replaceable(out_dir, keep=(cache_dir,))
    dirs = [Path(d) for d in dirs]
    if len(dirs) < 2:
        raise InputError(f"the geometry compares at least two adapter directories; given {len(dirs)}")
    labels = list(labels) if labels is not None else [label_for_dir(d) for d in dirs]
    if len(labels) != len(dirs):
        raise ValueError(f"compare_adapter_dirs: {len(labels)} labels for {len(dirs)} directories")
    dup = sorted({l for l in labels if labels.count(l) > 1})
    if dup:
        raise InputError(f"duplicate labels {dup}: give each adapter a label of its own (label=adapter_dir)")
    caches: dict[str, FactorCache] = {}
    ref = None
    pairs = list(zip(dirs, labels))
    if progress:
        from tqdm import tqdm

        pairs = tqdm(pairs, desc="geometry: adapters", unit="adapter")
    for d, label in pairs:
        if cache_dir is not None:
            safe = re.sub(r"[^\w.-]+", "_", label)
            cache = factor_cache_for_dir(d, Path(cache_dir) / f"{safe}.safetensors", top_k=top_k, label=label)
        else:
            cache = build_factor_cache(load_adapter(d), top_k=top_k, label=label)
        # Check as soon as each adapter is read, so a mismatch stops before more work.
        if ref is None:
            ref = cache
        else:
            check_compatible([ref, cache])
        caches[label] = cache
        log.info("factor cache of %s (%s): %s", label, d, cache.summary())
    geo = write_geometry(caches, out_dir, top_k=top_k, base_weights=base_weights, progress=progress)
    log.info(
        "wrote geometry of %d adapters (%d pairs, %d modules) to %s",
        len(labels),
        len(geo.pairs),
        len(geo.module_names),
        out_dir,
    )
    return geo
