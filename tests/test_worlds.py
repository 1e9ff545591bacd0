"""Tests of lossgeom.worlds: one study over several toy worlds, and its claims table over them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from lossgeom.errors import InputError
from lossgeom.worlds import aggregate_claims, world_configs

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "data" / "tiny_config.yaml"


def test_the_repository_s_worlds_file_gives_the_default_study_and_three_other_draws():
    configs = world_configs(REPO / "config" / "worlds" / "four.yaml")
    default = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    assert list(configs) == ["w0", "w1", "w2", "w3"]
    assert configs["w0"] == default  # the default study itself, its shipped models included
    for k, name in enumerate(["w1", "w2", "w3"], start=1):
        toy = configs[name]["toy"]
        assert toy["seed"] == k and toy["models_from"] == "train"  # another world trains its own models
        same = {key: v for key, v in toy.items() if key not in ("seed", "models_from")}
        assert same == {key: v for key, v in default["toy"].items() if key != "models_from"}
        assert {key: v for key, v in configs[name].items() if key != "toy"} == {
            key: v for key, v in default.items() if key != "toy"
        }


@pytest.mark.parametrize(
    "text, match",
    [
        ("worlds: {a: {}, b: {}}\n", "not a worlds file"),
        ("study: ../config.yaml\nworlds: {a: {}}\n", "at least two worlds"),
        ("study: nothing.yaml\nworlds: {a: {}, b: {}}\n", "study 'nothing.yaml'"),
        ("study: [\n", "not a worlds file"),
    ],
)
def test_a_bad_worlds_file_is_named(tmp_path, text, match):
    (tmp_path / "w").mkdir()
    (tmp_path / "config.yaml").write_text("seeds: [1]\n")
    path = tmp_path / "w" / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        world_configs(path)


def _claims(path: Path, verdicts: dict[str, str]) -> Path:
    rows = [{"claim_id": c, "group": "g", "claim": c, "verdict": v, "rule": "r"} for c, v in verdicts.items()]
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def test_a_verdict_over_worlds_needs_every_world(tmp_path):
    worlds = {
        "w0": {"a": "holds", "b": "holds", "c": "fragile", "d": "fails", "e": "not run"},
        "w1": {"a": "holds", "b": "fails", "c": "inconclusive", "d": "fails", "e": "not run"},
        "w2": {"a": "holds", "b": "fragile", "c": "fragile", "d": "not run", "e": "not run"},
    }
    df = aggregate_claims({n: _claims(tmp_path / f"{n}.tsv", v) for n, v in worlds.items()}).set_index("claim_id")
    assert df["verdict"].to_dict() == {"a": "holds", "b": "varies", "c": "unsettled", "d": "fails", "e": "not run"}
    assert df.loc["b", "worlds"] == "1 holds, 1 fails, 1 fragile"
    assert df.loc["b", "per_world"] == "w0 holds, w1 fails, w2 fragile"


@pytest.mark.slow
def test_the_tiny_study_runs_in_two_worlds_and_aggregates(tmp_path):
    from test_workflow import write_rollouts

    (tmp_path / "config").mkdir()
    worlds = tmp_path / "config" / "two.yaml"
    worlds.write_text(yaml.safe_dump({"study": str(TINY), "worlds": {"w0": {}, "w1": {"toy": {"seed": 1}}}}))
    out = tmp_path / "worlds"
    for name in ("w0", "w1"):
        (out / name).mkdir(parents=True)
        write_rollouts(out / name)  # the tiny config imports its rollouts from the working directory
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(
        [str(REPO / "scripts" / "run-worlds.sh"), str(worlds), str(out), "--cores", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    w1 = yaml.safe_load((out / "w1" / "config.yaml").read_text())
    assert w1["toy"]["seed"] == 1
    problems = [(out / n / "results" / "toy" / "world" / "problems" / "test.jsonl").read_text() for n in ("w0", "w1")]
    assert problems[0] != problems[1]  # two draws of the world
    claims = pd.read_csv(out / "claims.tsv", sep="\t")
    assert len(claims) == 26 and claims["per_world"].str.startswith("w0 ").all()
    assert set(claims["verdict"]) <= {"holds", "fails", "varies", "unsettled", "not run"}
