"""The command-line tool as users call it: any PEFT adapters in, tables out; bad input, one line out."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from lossgeom.cli import main


@pytest.mark.heavy
def test_geometry_of_any_adapters_with_base_alignment(two_adapters, tiny_base, tmp_path, capsys):
    out = tmp_path / "geo"
    rc = main(
        [
            "geometry",
            f"a={two_adapters['sft']}",
            f"b={two_adapters['rift']}",
            "--top-k",
            "2",
            "--base-model",
            str(tiny_base),
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    cos = pd.read_csv(out / "cosine_global.tsv", sep="\t", index_col=0)
    assert list(cos.index) == ["a", "b"]
    align = pd.read_csv(out / "base_alignment.tsv", sep="\t")
    assert set(align["label"]) == {"a", "b"} and align["fraction"].between(0, 1).all()
    assert (align["random"] == 2 / 32).all() or set(align["random"]) <= {2 / 32, 2 / 16}


@pytest.mark.heavy
def test_adapters_of_another_base_model_stop_with_one_line(two_adapters, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(two_adapters["rift"], other)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "some/other-model"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    rc = main(["geometry", str(two_adapters["sft"]), str(other), "--out", str(tmp_path / "geo")])
    err = capsys.readouterr().err.strip().splitlines()  # progress bars come first
    errors = [line for line in err if "lossgeom: error:" in line]
    assert rc == 2
    assert errors == [err[-1]] and err[-1].startswith("lossgeom: error:") and "some/other-model" in err[-1]
    assert not (tmp_path / "geo" / "cosine_global.tsv").exists()


def test_bad_rollout_file_stops_with_file_and_line(tmp_path, capsys):
    bad = tmp_path / "r.jsonl"
    bad.write_text('{"prompt_id": "p", "prompt": "q", "completion": "c", "reward": 1}\n{"prompt_id": "p"}\n')
    rc = main(["import-rollouts", "--file", str(bad), "--out", str(tmp_path / "out.parquet")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and f"{bad}:2" in err and "\n" not in err
    assert not (tmp_path / "out.parquet").exists()
