"""Tests of lossgeom.toy.shipped: the toy models as a fixed, checksummed input (toy.models_from).

The repository's shipped pair (workflow/resources/toy-models) is checked against what config/config.yaml would
train, on a world built here from that config, so that a config edit without re-shipping fails here and not
in a user's study."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lossgeom.cli import main
from lossgeom.toy.shipped import KEY_FILE, MANIFEST, ShippedModelError, model_key, ship, unpack, write_key

REPO = Path(__file__).resolve().parents[1]
SPEC = {"hidden_size": 32, "num_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "steps": 3}
SPEC |= {"batch_size": 4, "learning_rate": 1e-3}


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def shipped(toy_world, tiny_base, tmp_path):
    """A shipped directory of two 'trained' models (the tiny random base, its key recorded as toy-model does)."""
    models = tmp_path / "models"
    for seed, name in enumerate(("base", "teacher")):
        shutil.copytree(tiny_base, models / name)
        write_key(models / name, model_key(SPEC, seed, "{question}", toy_world))
    ship(models, tmp_path / "shipped")
    return tmp_path / "shipped", models


def test_unpacking_gives_the_trained_files_back_byte_for_byte(shipped, toy_world, tmp_path):
    out_dir, models = shipped
    assert not (out_dir / "base" / KEY_FILE).exists()  # the key lives in the manifest
    unpack(out_dir, "teacher", model_key(SPEC, 1, "{question}", toy_world), tmp_path / "out" / "teacher")
    assert _files(tmp_path / "out" / "teacher") == _files(models / "teacher")


@pytest.mark.parametrize(
    "spec, seed, template, match",
    [
        ({**SPEC, "steps": 4}, 0, "{question}", r"spec\.steps: 3 in the shipped model, 4 in this study"),
        ({**SPEC, "mlp_ratio": 2}, 0, "{question}", r"spec\.mlp_ratio: 3 in the shipped model, 2 in this study"),
        (SPEC, 5, "{question}", r"seed: 0 in the shipped model, 5 in this study"),
        (SPEC, 0, "Q: {question}", r"template: '\{question\}' in the shipped model, 'Q: \{question\}'"),
    ],
)
def test_a_model_trained_for_another_config_is_refused_by_its_first_difference(
    shipped, toy_world, tmp_path, spec, seed, template, match
):
    with pytest.raises(ShippedModelError, match=match + r".*toy\.models_from: train"):
        unpack(shipped[0], "base", model_key(spec, seed, template, toy_world), tmp_path / "base")
    assert not (tmp_path / "base").exists()


def test_a_model_of_another_world_is_refused(shipped, toy_world, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(toy_world, world)
    with open(world / "problems" / "train.jsonl", "a") as f:
        f.write(json.dumps({"question": "1 + 1?", "answer": "2"}) + "\n")
    with pytest.raises(ShippedModelError, match=r"world\.problems/train\.jsonl: '[0-9a-f]{64}' in the shipped"):
        unpack(shipped[0], "base", model_key(SPEC, 0, "{question}", world), tmp_path / "base")


def test_a_flipped_bit_in_a_shipped_file_is_named_and_nothing_is_written(shipped, toy_world, tmp_path):
    weights = shipped[0] / "base" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x04
    weights.write_bytes(bytes(data))
    with pytest.raises(ShippedModelError, match=r"base/model\.safetensors: its SHA-256 is not the manifest's"):
        unpack(shipped[0], "base", model_key(SPEC, 0, "{question}", toy_world), tmp_path / "base")
    assert not (tmp_path / "base").exists() and list(tmp_path.glob("base*")) == []


def test_the_cli_stops_in_one_line_on_a_damaged_shipped_model(shipped, toy_world, tmp_path, capsys):
    (shipped[0] / MANIFEST).write_text("{not json")
    argv = ["toy-model", "--spec", json.dumps(SPEC), "--world", str(toy_world), "--seed", "0"]
    argv += ["--out", str(tmp_path / "base"), "--shipped", str(shipped[0])]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lossgeom: error: ") and "manifest.json: not a manifest" in err[-1]
    assert "Traceback" not in "\n".join(err) and not (tmp_path / "base").exists()


@pytest.mark.heavy
def test_the_repository_s_shipped_models_are_what_the_default_config_trains(tmp_path):
    """config/config.yaml's toy section, template and seeds give the keys of workflow/resources/toy-models, on a
    world built from it here, and every shipped file has its recorded SHA-256."""
    from lossgeom.config import load, with_defaults
    from lossgeom.toy.world import build_world

    cfg = with_defaults(load(REPO / "config" / "config.yaml", REPO / "workflow" / "schemas" / "config.schema.yaml"))
    toy = cfg["toy"]
    assert toy["models_from"] == "workflow/resources/toy-models"
    build_world(toy, tmp_path / "world")
    for offset, name in enumerate(("base", "teacher")):  # the toy_model rule's seeds: toy.seed, toy.seed + 1
        key = model_key(toy["models"][name], toy["seed"] + offset, cfg["model"]["prompt_template"], tmp_path / "world")
        unpack(REPO / toy["models_from"], name, key, tmp_path / name)
        assert json.loads((tmp_path / name / KEY_FILE).read_text()) == key
