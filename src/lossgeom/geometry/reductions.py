"""Reductions over modules (axis 0) that skip ``nan`` entries without warnings."""

from __future__ import annotations

import numpy as np


def nanmedian0(x: np.ndarray) -> np.ndarray:
    """nan-median over axis 0 without warnings for all-nan columns."""
    ok = np.isfinite(x).any(axis=0)
    out = np.full(x.shape[1:], np.nan)
    if ok.any():
        out[ok] = np.nanmedian(x[:, ok], axis=0)
    return out


def nanmean0(x: np.ndarray) -> np.ndarray:
    """nan-mean over axis 0 without warnings for all-nan columns."""
    fin = np.isfinite(x)
    cnt = fin.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, np.where(fin, x, 0.0).sum(axis=0) / cnt, np.nan)


def naniqr0(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x).any(axis=0)
    out = np.full(x.shape[1:], np.nan)
    if ok.any():
        q75, q25 = np.nanpercentile(x[:, ok], [75, 25], axis=0)
        out[ok] = q75 - q25
    return out
