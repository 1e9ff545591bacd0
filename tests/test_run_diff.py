"""Tests of lossgeom.run_diff (``lossgeom compare-runs``): what moved between two results directories."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from lossgeom.cli import main
from lossgeom.run_diff import compare_runs, compare_table


def _run(root, verdicts, cosines, weights=b"\x00" * 16):
    (root / "geometry").mkdir(parents=True)
    (root / "logs").mkdir()
    pd.DataFrame(
        {
            "claim_id": ["cluster", "dft", "lmc"],
            "verdict": verdicts,
            "replicates": ["3 of 3 hold", "3 of 3 hold", "1 of 1 holds"],
            "this_run": ["SFT-RFT 0.9", "DFT-SFT 0.5", "barrier 0"],
        }
    ).to_csv(root / "claims.tsv", sep="\t", index=False)
    pd.DataFrame({"pair": ["a/b", "a/c", "b/c"], "value": cosines}).to_csv(
        root / "geometry" / "cosine.tsv", sep="\t", index=False
    )
    (root / "logs" / "x.tsv").write_text("t\n1\n")  # logs differ by design: never compared
    (root / "adapters" / "sft").mkdir(parents=True)
    (root / "adapters" / "sft" / "adapter_model.safetensors").write_bytes(weights)
    return root


def test_a_run_compared_with_itself_moves_nothing(tmp_path):
    a = _run(tmp_path / "a", ["holds", "fails", "inconclusive"], [0.9, 0.5, 0.1])
    shutil.copytree(a, tmp_path / "b")
    text = compare_runs(a, tmp_path / "b", tmp_path / "out")
    assert "verdicts moved: 0 of 3" in text and "numbers moved: 0 of 3 numeric cells in 2 tables" in text
    assert "weights files identical: 1 of 1" in text
    tables = pd.read_csv(tmp_path / "out" / "tables.tsv", sep="\t")
    assert set(tables["table"]) == {"claims.tsv", "geometry/cosine.tsv"}  # logs/ left out


def test_moved_verdicts_numbers_and_weights_are_counted(tmp_path):
    a = _run(tmp_path / "a", ["holds", "fails", "inconclusive"], [0.9, 0.5, 0.1])
    b = _run(tmp_path / "b", ["fragile", "fails", "inconclusive"], [0.9, 0.52, 0.1], weights=b"\x01" * 16)
    text = compare_runs(a, b, tmp_path / "out", names=("AVX512", "AVX2"))
    v = pd.read_csv(tmp_path / "out" / "verdicts.tsv", sep="\t").set_index("claim_id")
    assert v["moved"].tolist() == [True, False, False]
    assert "| cluster | SFT-RFT 0.9 | holds | fragile **moved** |" in text and "verdicts moved: 1 of 3" in text
    row = pd.read_csv(tmp_path / "out" / "tables.tsv", sep="\t").set_index("table").loc["geometry/cosine.tsv"]
    assert (row["numeric_cells"], row["numeric_moved"]) == (3, 1)
    assert row["max_abs_change"] == pytest.approx(0.02) and row["max_rel_change"] == pytest.approx(0.02 / 0.52)
    assert "weights files identical: 0 of 1" in text


def test_a_table_of_another_shape_is_named_not_compared(tmp_path):
    pd.DataFrame({"x": [1, 2]}).to_csv(tmp_path / "a.tsv", sep="\t", index=False)
    pd.DataFrame({"x": [1, 2, 3]}).to_csv(tmp_path / "b.tsv", sep="\t", index=False)
    assert compare_table(tmp_path / "a.tsv", tmp_path / "b.tsv")["text_moved"] == "shape differs"


def test_the_cli_wants_two_finished_runs(tmp_path, capsys):
    a = _run(tmp_path / "a", ["holds", "fails", "inconclusive"], [0.9, 0.5, 0.1])
    assert main(["compare-runs", str(a), str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert "nothing: no claims.tsv" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
