"""Stage ``workflow/rules/geometry.smk``: weight-space geometry of every pair of LoRA adapters.

Reads PEFT adapter directories (``results/adapters/{method}/seed{seed}[data{d}]``, named as
:class:`lossgeom.labels.Label` says) and, optionally, the base model's weights; writes
``results/geometry/`` (``cosine_global.tsv``, one square matrix per metric, ``per_layer.tsv``,
``long.tsv``, ``noise_floor.tsv``, ...). Never forms a dense delta: everything comes from the
factors (:mod:`lossgeom.lora.lowrank`), read by :mod:`lossgeom.lora.adapters`, summarised per adapter in :mod:`.factors`,
compared in :mod:`.pairwise`, set against random levels in :mod:`.reference`, tabulated in
:mod:`.tables`, and written by :mod:`.compare` (the CLI's ``lossgeom geometry``).
"""

from ..lora.adapters import AdapterMismatchError, LoraAdapter, load_adapter
from .alignment import base_alignment
from .compare import compare_adapter_dirs, write_geometry
from .factors import (
    FactorCache,
    FactorCacheError,
    build_factor_cache,
    factor_cache_for_dir,
    load_factor_cache,
    save_factor_cache,
)
from .pairwise import PairGeometry, pairwise_geometry
from .reference import random_reference
from .tables import (
    NOISE_FLOOR_METRICS,
    SQUARE_METRICS,
    adapters_table,
    label_for_dir,
    long_table,
    noise_floor_table,
    per_layer_table,
    square_matrices,
)

__all__ = [
    "AdapterMismatchError",
    "LoraAdapter",
    "load_adapter",
    "compare_adapter_dirs",
    "write_geometry",
    "FactorCache",
    "FactorCacheError",
    "build_factor_cache",
    "factor_cache_for_dir",
    "load_factor_cache",
    "save_factor_cache",
    "PairGeometry",
    "pairwise_geometry",
    "random_reference",
    "NOISE_FLOOR_METRICS",
    "SQUARE_METRICS",
    "label_for_dir",
    "base_alignment",
    "adapters_table",
    "long_table",
    "noise_floor_table",
    "per_layer_table",
    "square_matrices",
]
