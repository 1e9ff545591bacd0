"""One study over several toy worlds: is a verdict a property of the world, or of one draw of it?

A worlds file (``config/worlds/four.yaml``) names a study config and a list of worlds, each a set of overrides
merged into that config (typically ``toy: {seed: N}``: another draw of the problems, the tokenizer's training
text and both models' pretraining seeds). :func:`world_configs` writes one config per world;
``scripts/run-worlds.sh`` runs the study in each (``results/worlds/<name>/``) and :func:`aggregate_claims`
reads their claims tables into one (``results/worlds/claims.tsv``):

* ``holds`` / ``fails``: the claim holds (fails) in every world, by its own verdict over replicates;
* ``varies``: the worlds' verdicts differ (a property of the draw, not of the world's design);
* ``unsettled``: no world fails it or holds it firmly (every world's verdict is fragile or inconclusive);
* ``not run`` where no world ran it.

A world whose toy section differs from the study's trains its own toy models (``toy.models_from: train``):
shipped models fit one world only.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import yaml

from .errors import InputError
from .fsutil import read_tsv_or, write_table, write_text

CLAIMS_COLUMNS = ("claim_id", "group", "claim", "verdict", "rule")  # what it reads of each world's claims.tsv
WORLD_COLUMNS = ["claim_id", "group", "claim", "verdict", "worlds", "per_world", "rule"]


def _merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in, mappings key by key (a new dict)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def world_configs(worlds_file: Path) -> dict[str, dict]:
    """Each world's study config (name -> config), from a worlds file: ``study`` (a config path, relative to
    the worlds file's directory) and ``worlds`` (name -> overrides)."""
    path = Path(worlds_file)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        study_path = path.parent / spec["study"]
        worlds = spec["worlds"]
    except (OSError, yaml.YAMLError, TypeError, KeyError) as e:
        raise InputError(f"{path}: not a worlds file (keys study: <config>, worlds: {{name: overrides}}; {e})") from e
    if not isinstance(worlds, dict) or len(worlds) < 2:
        raise InputError(f"{path}: worlds must name at least two worlds (name: overrides)")
    try:
        study = yaml.safe_load(study_path.read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{path}: study {spec['study']!r}: {e.strerror}") from e
    out = {}
    for name, overrides in worlds.items():
        config = _merge(study, overrides or {})
        if config.get("toy") != study.get("toy"):
            config["toy"]["models_from"] = "train"  # another world: the shipped models are another world's
        out[str(name)] = config
    return out


def write_world_configs(worlds_file: Path, out: Path) -> list[str]:
    """Write ``out/<world>/config.yaml`` for each world; returns the names."""
    configs = world_configs(worlds_file)
    for name, config in configs.items():
        write_text(Path(out) / name / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    return list(configs)


def _world_verdict(verdicts: list[str]) -> str:
    run = [v for v in verdicts if v != "not run"]
    if not run:
        return "not run"
    if all(v == "holds" for v in run):
        return "holds"
    if all(v == "fails" for v in run):
        return "fails"
    if {"holds", "fails"} & set(run):
        return "varies"
    return "unsettled"


def aggregate_claims(claims: dict[str, Path]) -> pd.DataFrame:
    """One row per claim over the worlds' claims tables (name -> ``claims.tsv``): :data:`WORLD_COLUMNS`, with
    the verdict over worlds (module docstring), how many worlds give each verdict, and each world's verdict."""
    tables = {
        name: read_tsv_or(
            path, InputError, CLAIMS_COLUMNS, f"a claims table of world {name!r}", keep_default_na=False
        ).set_index("claim_id")
        for name, path in claims.items()
    }
    first = next(iter(tables.values()))
    rows = []
    for claim_id, row in first.iterrows():
        each = {n: (t.loc[claim_id, "verdict"] if claim_id in t.index else "not run") for n, t in tables.items()}
        counts = pd.Series(list(each.values())).value_counts()
        rows.append(
            {
                "claim_id": claim_id,
                "group": row["group"],
                "claim": row["claim"],
                "verdict": _world_verdict(list(each.values())),
                "worlds": ", ".join(f"{c} {v}" for v, c in counts.items()),
                "per_world": ", ".join(f"{n} {v}" for n, v in each.items()),
                "rule": row["rule"],
            }
        )
    return pd.DataFrame(rows, columns=WORLD_COLUMNS)


def write_aggregate(claims: dict[str, Path], out: Path) -> pd.DataFrame:
    df = aggregate_claims(claims)
    write_table(df, out)
    return df
