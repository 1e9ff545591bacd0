"""The toy base and teacher as a fixed, checksummed input (``toy.models_from``), so that two machines start
the study from the same models.

Why: the toy models are pretrained from scratch, and torch's CPU kernels round differently on different
instruction sets (AVX-512, AVX2) and thread counts; 350 steps from a random init amplify the last bit into
another model, and everything downstream (the teacher's rollouts, every adapter, every accuracy) moves with
it. Shipping the two trained models removes that source of chaos: a study reads them instead of training.

A shipped directory holds ``base/`` and ``teacher/`` (what ``lossgeom toy-model`` writes) and
``manifest.json``: per model, the SHA-256 of each file and the **key** it was trained for: its settings
(``toy.models.<name>``, filled with defaults), its seed, the prompt template and the SHA-256 of the world files
it was trained on (the tokenizer and the training problems). A study whose config would train another model
(another key) is refused with the first setting that differs; a file whose bytes fail their SHA-256 is
refused by name. ``lossgeom toy-ship`` writes such a directory from a study's trained models.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import InputError
from ..fsutil import atomic_dir, file_sha256, write_text
from ..settings import ToyModelSettings

MANIFEST = "manifest.json"
FORMAT = 1
KEY_FILE = "toy_key.json"  # written beside each trained model: the key it was trained for
# the world's files a toy model depends on: its token ids and the problems it was trained on
WORLD_FILES = ("tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "problems/train.jsonl")


class ShippedModelError(InputError):
    """A shipped toy model that is damaged, absent, or made for another toy config."""


def model_key(spec: dict, seed: int, template: str, world: Path) -> dict:
    """What a trained toy model depends on: its settings (defaults filled), seed, template and world files."""
    return {
        "spec": ToyModelSettings.filled(spec),
        "seed": int(seed),
        "template": template,
        "world": {f: file_sha256(Path(world) / f) for f in WORLD_FILES},
    }


def write_key(model_dir: Path, key: dict) -> None:
    """Record beside a trained (or unpacked) model the key it was trained for (:data:`KEY_FILE`)."""
    write_text(Path(model_dir) / KEY_FILE, json.dumps(key, indent=1, sort_keys=True) + "\n")


def _first_difference(shipped, wanted, path: str = "") -> str | None:
    """The first key path where two keys differ, with both values; None when equal."""
    if isinstance(shipped, dict) and isinstance(wanted, dict):
        for k in sorted(set(shipped) | set(wanted)):
            diff = _first_difference(shipped.get(k), wanted.get(k), f"{path}.{k}" if path else k)
            if diff:
                return diff
        return None
    return None if shipped == wanted else f"{path}: {shipped!r} in the shipped model, {wanted!r} in this study"


def _manifest(shipped: Path) -> dict:
    path = Path(shipped) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShippedModelError(f"{path}: no manifest; toy.models_from must name a directory that toy-ship wrote")
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ShippedModelError(f"{path}: not a manifest ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or "models" not in manifest:
        raise ShippedModelError(f"{path}: not a format-{FORMAT} manifest of toy-ship")
    return manifest


def unpack(shipped: Path, name: str, key: dict, out: Path) -> None:
    """Copy shipped model ``name`` to ``out`` (whole or not at all) after checking that it was trained for
    ``key`` (:func:`model_key`) and that every file has the bytes its manifest names."""
    shipped = Path(shipped)
    entry = _manifest(shipped)["models"].get(name)
    if entry is None:
        raise ShippedModelError(f"{shipped / MANIFEST}: no model {name!r}")
    diff = _first_difference(entry["key"], key)
    if diff:
        raise ShippedModelError(
            f"{shipped}/{name} was trained for another toy config ({diff}); set toy.models_from: train to train "
            "it from scratch, or ship models for this config (lossgeom toy-ship)"
        )
    with atomic_dir(out) as tmp:
        for rel, digest in sorted(entry["files"].items()):
            src = shipped / name / rel
            if not src.is_file():
                raise ShippedModelError(f"{src}: missing (named in {shipped / MANIFEST})")
            if file_sha256(src) != digest:
                raise ShippedModelError(f"{src}: its SHA-256 is not the manifest's (the file is damaged or was edited)")
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, tmp / rel)
        write_key(tmp, key)


def ship(models: Path, out: Path, names=("base", "teacher")) -> dict:
    """Write a shipped directory at ``out`` (replaced whole) from trained models ``models/<name>/`` (each with
    the :data:`KEY_FILE` that ``toy-model`` writes); returns the manifest."""
    manifest = {"format": FORMAT, "models": {}}
    with atomic_dir(out) as tmp:
        for name in names:
            src = Path(models) / name
            key_path = src / KEY_FILE
            if not key_path.is_file():
                raise ShippedModelError(f"{key_path}: missing; ship models that lossgeom toy-model trained")
            files = sorted(p for p in src.rglob("*") if p.is_file() and not p.name.startswith("."))
            shutil.copytree(src, tmp / name, ignore=shutil.ignore_patterns(".*", KEY_FILE))
            manifest["models"][name] = {
                "key": json.loads(key_path.read_text(encoding="utf-8")),
                "files": {str(p.relative_to(src)): file_sha256(p) for p in files if p.name != KEY_FILE},
            }
        write_text(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return manifest
