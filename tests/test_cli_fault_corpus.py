"""The fault corpus: every bad input the study can be given, and the one line it must end in.

Each row of a table is one bad input and a pattern its message must match. A CLI case runs the real
entry point (``lossgeom.cli.main``) and must end with exit status 2, exactly one line on stderr that
starts ``lossgeom: error:`` (the last one: progress bars and log lines may come first), no traceback,
and nothing at the output path (nor a temporary sibling of it). A config case runs the validation the
Snakefile runs before scheduling anything (:func:`lossgeom.config.load`) and must raise one
:class:`~lossgeom.config.ConfigError` line naming the key; ``test_snakemake_stops_on_a_bad_config``
checks one of them through Snakemake itself.

Only input errors (:class:`lossgeom.errors.InputError`, a missing input file) and the machine's (a GPU out
of memory, a full disk, no CUDA) end this way: a bug's exception, a plain ValueError included, keeps its
traceback (``test_a_bug_s_valueerror_keeps_its_traceback``), so a library's ValueError on a bad file is caught
where the file is read and named there.

New inputs get a row. The inputs are built once per module from the tiny world and the tiny random
model of ``conftest.py`` (adapters are random PEFT LoRAs, never trained), so the whole corpus runs in
well under a minute. Crash points (SIGKILL mid-job, then a rerun) are in ``test_workflow_crash_points.py``.

Inputs that do not end in exactly this shape, and why:

- A bad config run through Snakemake exits 1 (not 2) and Snakemake frames the one-line message with
  its own location lines (``WorkflowError in file ...``); the Snakefile can only raise WorkflowError.
- A SIGKILL of Snakemake itself leaves a lock that only ``snakemake --unlock`` removes: the lock does not
  record its owner, so no profile setting can tell a stale lock from a live run (docs/CLUSTER.md, Reruns).
- Out of memory in the vllm backend: vLLM reports it (at engine start, in its own words; not a
  torch.OutOfMemoryError), so the line names no batch key; untested here (no vLLM in this env).
- The math_verify grader's unparsable gold answers are found when graded (after generation), still
  as one line; only the exact grader is checked before generating.
- Malformed command lines (e.g. --spec that is not JSON) get argparse's usage line before the error;
  the rules build those arguments, users do not.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pandas as pd
import pytest
import yaml
from conftest import random_adapter

from lossgeom.cli import main
from lossgeom.config import ConfigError, load

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"
TINY_CONFIG = REPO / "tests" / "data" / "tiny_config.yaml"


# ---- inputs, built once ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def w(toy_world, tiny_base, tiny_rollouts, tmp_path_factory):
    """The good inputs every case starts from."""
    import torch
    from transformers import Qwen3ForCausalLM

    from lossgeom.modeling import load_tokenizer
    from lossgeom.toy.pretrain import qwen3_config

    root = tmp_path_factory.mktemp("corpus")
    adapters = root / "adapters"
    good = random_adapter(tiny_base, adapters / "good", seed=1)
    good2 = random_adapter(tiny_base, adapters / "good2", seed=2)
    mlp = random_adapter(tiny_base, adapters / "mlp", targets=["gate_proj", "up_proj", "down_proj"], seed=3)
    # an adapter of another base model: same architecture, another width
    tok = load_tokenizer(toy_world / "tokenizer")
    torch.manual_seed(0)
    wider = Qwen3ForCausalLM(
        qwen3_config(
            {"hidden_size": 48, "num_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}, len(tok), tok
        )
    )
    other = random_adapter(wider, adapters / "other_base", seed=4)
    cfg = json.loads((other / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "some/other-model"
    (other / "adapter_config.json").write_text(json.dumps(cfg))
    return SimpleNamespace(
        world=toy_world, base=tiny_base, rollouts=tiny_rollouts, good=good, good2=good2, mlp=mlp, other_base=other
    )


# ---- helpers that make one bad input --------------------------------------------------------------


def _copy_adapter(src: Path, tmp: Path, name: str = "bad") -> Path:
    dst = tmp / name
    shutil.copytree(src, dst)
    return dst


def _edit_adapter_config(adapter: Path, **changes) -> Path:
    path = adapter / "adapter_config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))
    return adapter


def _edit_adapter_tensors(adapter: Path, edit: Callable[[dict], dict]) -> Path:
    from safetensors.torch import load_file, save_file

    path = adapter / "adapter_model.safetensors"
    save_file(edit(load_file(str(path))), str(path))
    return adapter


def _truncate(path: Path, keep: float | int) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    return path


def _copy_model(w, tmp: Path, drop=(), edit: Callable[[Path], None] | None = None) -> Path:
    dst = tmp / "model"
    shutil.copytree(w.base, dst)
    for name in drop:
        for p in dst.glob(name):
            p.unlink()
    if edit:
        edit(dst)
    return dst


def _jsonl(path: Path, rows: list, raw: bytes | None = None) -> Path:
    path.write_bytes(
        raw if raw is not None else "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()
    )
    return path


def _row(**kw) -> dict:
    return {"prompt_id": "p0", "prompt": "1 + 1?", "completion": "#### 2", "reward": 1, **kw}


def _parquet(path: Path, df: pd.DataFrame) -> Path:
    df.to_parquet(path)
    return path


# The argv of each subcommand, with one input replaced.
def _geometry(*adapters, out):
    return ["geometry", *map(str, adapters), "--top-k", "2", "--out", str(out)]


def _evaluate(w, out, base=None, adapter="none", test_sets=None, generation=None, measures=None):
    """The evaluate job's argv: the accuracy measure only unless ``measures`` says (name -> settings); its
    table is ``out`` (the others' beside it, named by measure)."""
    measures = measures or {"accuracy": {"max_new_tokens": 2, "batch_size": 8}}
    spec = {
        "model": {"prompt_template": "{question}", "answer_template": "#### {answer}", "dtype": "float32",
                  "trust_remote_code": False},
        "test_sets": test_sets or {"toy": {"source": "toy", "split": "test"}},
        "measures": measures,
    }  # fmt: skip
    outputs = [f"{name}={out if name == 'accuracy' else out.with_name(name)}" for name in measures]
    argv = ["evaluate", "--spec", json.dumps(spec), "--base", str(base or w.base), "--adapter", str(adapter)]
    argv += ["--toy-dir", str(w.world), "--outputs", *outputs]
    return argv + (["--generation", json.dumps(generation)] if generation else [])


def _activations(w, out, adapter):
    probes = {"test_set": "toy", "n_probe": 2}
    return _evaluate(w, out.with_name("activations"), adapter=adapter, measures={"activations": probes})


def _lmc(w, first, second, out, lmc=None, evaluation=None):
    """The lmc job's argv: a sweep between ``first`` and ``second`` on the toy's test set."""
    spec = {
        "model": {"prompt_template": "{question}", "answer_template": "#### {answer}", "dtype": "float32",
                  "trust_remote_code": False},
        "test_set": {"source": "toy", "split": "test"},
        "lmc": lmc or {},
        "evaluation": evaluation or {},
    }  # fmt: skip
    argv = ["lmc", "--spec", json.dumps(spec), "--base", str(w.base), "--first", f"a={first}", "--second"]
    return argv + [f"b={second}", "--toy-dir", str(w.world), "--out", str(out)]


def _stats(measure, tables, out, spec=None):
    """A measure's statistics job over ``tables`` (model -> path) of that measure."""
    argv = ["measure-stats", measure, "--inputs", json.dumps({measure: {m: str(p) for m, p in tables.items()}})]
    return argv + (["--spec", json.dumps(spec)] if spec else []) + ["--out", str(out)]


def _tables(t, files: dict) -> Path:
    """A directory holding ``files`` (name -> bytes): a statistics directory handed to a figures command."""
    d = t / "tables"
    d.mkdir()
    for name, raw in files.items():
        (d / name).write_bytes(raw)
    return d


def _import(path, out):
    return ["import-rollouts", "--file", str(path), "--out", str(out)]


def _train(w, out, rollouts=None, base=None):
    from conftest import method_spec

    return [
        "train",
        "--spec",
        method_spec("sft").to_json(),
        "--seed",
        "1",
        "--rollouts",
        str(rollouts or w.rollouts),
        "--base",
        str(base or w.base),
        "--out",
        str(out),
        "--checkpoints",
        str(out.parent / "ckpt"),
    ]


def _rollouts(w, out, problems, generation=None, journal=None, spec=None):
    argv = [
        "rollouts",
        "--model",
        str(w.base),
        "--problems",
        json.dumps(problems),
        "--spec",
        json.dumps(spec or {"k": 2, "temperature": 1.0, "max_new_tokens": 2}),
        "--out",
        str(out),
    ]
    argv += ["--generation", json.dumps(generation)] if generation else []
    return argv + (["--journal", str(journal)] if journal else [])


def _openai(url, **kw):
    return {
        "backend": "openai",
        "openai": {
            "base_url": url,
            "model": "teacher",
            "api_key_env": "LOSSGEOM_CORPUS_KEY",
            "max_retries": 0,
            "timeout_s": 5,
            **kw,
        },
    }


def _claims(geometry: Path, out: Path, roles=("sft=sft", "grpo=grpo")) -> list[str]:
    return ["claims", "--geometry", str(geometry), "--roles", *roles, "--seed", "1", "--out", str(out)]


def _table_dir(tmp: Path, name: str, tables: dict[str, bytes]) -> Path:
    """A directory ``name`` holding the files ``tables`` (file name -> bytes)."""
    d = tmp / name
    d.mkdir()
    for file, raw in tables.items():
        (d / file).write_bytes(raw)
    return d


# a labelled square matrix as 'lossgeom geometry' writes one ({metric}.tsv)
MATRIX = b"\ta/seed1\ta/seed2\na/seed1\t1\t0.5\na/seed2\t0.5\t1\n"


def _toy_model(world: Path, out: Path) -> list[str]:
    return [
        "toy-model",
        "--spec",
        json.dumps({"batch_size": 2}),
        "--world",
        str(world),
        "--seed",
        "0",
        "--out",
        str(out),
    ]


def _damaged_world(w, tmp: Path, raw: bytes) -> Path:
    """A copy of the toy world whose training problems file holds ``raw`` after its first line."""
    world = tmp / "world"
    shutil.copytree(w.world, world)
    train = world / "problems" / "train.jsonl"
    train.write_bytes(train.read_bytes().splitlines(keepends=True)[0] + raw)
    return world


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the CLI table -------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    make: Callable  # (w, tmp, ctx) -> (argv, out path)
    expect: str  # regex the error line must match
    needs: str | None = None  # "server": a scripted OpenAI-compatible endpoint; "key": $LOSSGEOM_CORPUS_KEY set


def _out(tmp, name="out.parquet"):
    return tmp / "result" / name


CASES = [
    # -- rollout files (import-rollouts) ---------------------------------------------------------
    Case(
        "rollouts/missing-column-jsonl",
        lambda w, t, c: (_import(_jsonl(t / "r.jsonl", [_row(), {"prompt_id": "p1"}]), _out(t)), _out(t)),
        r"r\.jsonl:2: missing required field\(s\) \['prompt', 'completion', 'reward'\]",
    ),
    Case(
        "rollouts/missing-column-parquet",
        lambda w, t, c: (
            _import(_parquet(t / "r.parquet", pd.DataFrame([_row()]).drop(columns="reward")), _out(t)),
            _out(t),
        ),
        r"r\.parquet row 0: missing required field\(s\) \['reward'\]",
    ),
    Case(
        "rollouts/reward-not-a-number",
        lambda w, t, c: (_import(_jsonl(t / "r.jsonl", [_row(reward="yes")]), _out(t)), _out(t)),
        r"r\.jsonl:1: reward 'yes' is not a number",
    ),
    Case(
        "rollouts/prompt-wrong-dtype",
        lambda w, t, c: (_import(_parquet(t / "r.parquet", pd.DataFrame([_row(prompt=7)])), _out(t)), _out(t)),
        r"row 0: field 'prompt' must be a string, got int",
    ),
    Case(
        "rollouts/reward-not-binary",
        lambda w, t, c: (_import(_jsonl(t / "r.jsonl", [_row(reward=0.5)]), _out(t)), _out(t)),
        r"r\.jsonl:1: reward must be 0 or 1",
    ),
    Case(
        "rollouts/nan-reward-jsonl",
        lambda w, t, c: (
            _import(
                _jsonl(t / "r.jsonl", ['{"prompt_id": "p", "prompt": "q", "completion": "c", "reward": NaN}']), _out(t)
            ),
            _out(t),
        ),
        r"r\.jsonl:1: field 'reward' is NaN",
    ),
    Case(
        "rollouts/nan-reward-parquet",
        lambda w, t, c: (
            _import(
                _parquet(t / "r.parquet", pd.DataFrame([_row(reward=1.0), _row(reward=float("nan"), prompt_id="p1")])),
                _out(t),
            ),
            _out(t),
        ),
        r"r\.parquet row 1: field 'reward' is NaN",
    ),
    Case(
        "rollouts/positive-logprobs",
        lambda w, t, c: (_import(_jsonl(t / "r.jsonl", [_row(logprobs=[-0.5, 0.3])]), _out(t)), _out(t)),
        r"r\.jsonl:1: logprobs must be a list of numbers <= 0",
    ),
    Case(
        "rollouts/empty-file",
        lambda w, t, c: (_import(_jsonl(t / "r.jsonl", [], raw=b"\n\n"), _out(t)), _out(t)),
        r"rollout file .*r\.jsonl has no rows",
    ),
    Case(
        "rollouts/duplicated-ids",
        lambda w, t, c: (
            _import(_jsonl(t / "r.jsonl", [_row(sample_index=0), _row(sample_index=1), _row(sample_index=0)]), _out(t)),
            _out(t),
        ),
        r"duplicate row for prompt_id 'p0' sample_index 0",
    ),
    Case(
        "rollouts/one-id-two-prompts",
        lambda w, t, c: (_import(_jsonl(t / "r.jsonl", [_row(), _row(prompt="2 + 2?")]), _out(t)), _out(t)),
        r"prompt_id 'p0' has rows with different prompts",
    ),
    Case(
        "rollouts/non-utf8",
        lambda w, t, c: (
            _import(
                _jsonl(t / "r.jsonl", [], raw=(json.dumps(_row()) + "\n").encode() + b'{"prompt": "\xff\xfe"}\n'),
                _out(t),
            ),
            _out(t),
        ),
        r"r\.jsonl:2: not UTF-8 text",
    ),
    Case(
        "rollouts/not-json",
        lambda w, t, c: (_import(_jsonl(t / "r.jsonl", ["{prompt_id: p0"]), _out(t)), _out(t)),
        r"r\.jsonl:1: not valid JSON",
    ),
    Case(
        "rollouts/not-parquet",
        lambda w, t, c: (_import(_jsonl(t / "r.parquet", [], raw=b"PAR1 but not really"), _out(t)), _out(t)),
        r"r\.parquet: not a readable parquet file",
    ),
    Case(
        "rollouts/wrong-suffix",
        lambda w, t, c: (_import(_jsonl(t / "r.csv", [_row()]), _out(t)), _out(t)),
        r"r\.csv must be \.jsonl or \.parquet",
    ),
    Case(
        "rollouts/missing-file",
        lambda w, t, c: (_import(t / "nope.jsonl", _out(t)), _out(t)),
        r"rollout file .*nope\.jsonl does not exist",
    ),
    # -- the rollout table a training job reads ---------------------------------------------------
    Case(
        "train/rollout-table-lacks-column",
        lambda w, t, c: (
            _train(
                w, _out(t, "adapter"), _parquet(t / "r.parquet", pd.read_parquet(w.rollouts).drop(columns="reward"))
            ),
            _out(t, "adapter"),
        ),
        r"rollout table .*r\.parquet lacks column\(s\) \['reward'\]",
    ),
    Case(
        "train/rollout-table-truncated",
        lambda w, t, c: (
            _train(w, _out(t, "adapter"), _truncate(shutil.copy(w.rollouts, t / "r.parquet") and t / "r.parquet", 0.5)),
            _out(t, "adapter"),
        ),
        r"r\.parquet: not a readable parquet file",
    ),
    # -- adapters (geometry, evaluation, activations) ---------------------------------------------
    Case(
        "adapters/truncated-safetensors",
        lambda w, t, c: (
            _geometry(
                w.good,
                _truncate(_copy_adapter(w.good, t) / "adapter_model.safetensors", 0.6).parent,
                out=_out(t, "geo"),
            ),
            _out(t, "geo"),
        ),
        r"bad/adapter_model\.safetensors: not a readable safetensors file .*truncated or corrupt",
    ),
    Case(
        "adapters/header-only-safetensors",
        lambda w, t, c: (
            _geometry(
                w.good, _truncate(_copy_adapter(w.good, t) / "adapter_model.safetensors", 20).parent, out=_out(t, "geo")
            ),
            _out(t, "geo"),
        ),
        r"bad/adapter_model\.safetensors: not a readable safetensors file \(.*header",
    ),
    Case(
        "adapters/garbage-safetensors",
        lambda w, t, c: (
            _geometry(
                w.good,
                _jsonl(_copy_adapter(w.good, t) / "adapter_model.safetensors", [], raw=b"\x10" * 64).parent,
                out=_out(t, "geo"),
            ),
            _out(t, "geo"),
        ),
        r"bad/adapter_model\.safetensors: not a readable safetensors file",
    ),
    Case(
        "adapters/config-rank-mismatch",
        lambda w, t, c: (
            _geometry(w.good, _edit_adapter_config(_copy_adapter(w.good, t), r=8, lora_alpha=16), out=_out(t, "geo")),
            _out(t, "geo"),
        ),
        r"module 'layers\.0\.self_attn\.\w_proj': rank 4 in the weights but 8 from the config",
    ),
    Case(
        "adapters/missing-B",
        lambda w, t, c: (
            _geometry(
                w.good,
                _edit_adapter_tensors(
                    _copy_adapter(w.good, t),
                    lambda d: {k: v for k, v in d.items() if not ("layers.1.self_attn.v_proj" in k and "lora_B" in k)},
                ),
                out=_out(t, "geo"),
            ),
            _out(t, "geo"),
        ),
        r"module 'layers\.1\.self_attn\.v_proj' has lora_A but no lora_B",
    ),
    Case(
        "adapters/A-B-inner-dims",
        lambda w, t, c: (
            _geometry(
                w.good,
                _edit_adapter_tensors(
                    _copy_adapter(w.good, t),
                    lambda d: {
                        k: (v[:, :3].contiguous() if "layers.0.self_attn.q_proj.lora_B" in k else v)
                        for k, v in d.items()
                    },
                ),
                out=_out(t, "geo"),
            ),
            _out(t, "geo"),
        ),
        r"module 'layers\.0\.self_attn\.q_proj': shape mismatch",
    ),
    Case(
        "adapters/dora",
        lambda w, t, c: (
            _geometry(w.good, _edit_adapter_config(_copy_adapter(w.good, t), use_dora=True), out=_out(t, "geo")),
            _out(t, "geo"),
        ),
        r"adapter_config\.json: use_dora=true is not supported",
    ),
    Case(
        "adapters/dora-magnitude-tensor",
        lambda w, t, c: (
            _geometry(
                w.good,
                _edit_adapter_tensors(
                    _copy_adapter(w.good, t),
                    lambda d: {
                        **d,
                        "base_model.model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": d[next(iter(d))][
                            0
                        ].clone(),
                    },
                ),
                out=_out(t, "geo"),
            ),
            _out(t, "geo"),
        ),
        r"DoRA magnitude vectors are not supported",
    ),
    Case(
        "adapters/non-attention-targets",
        lambda w, t, c: (_geometry(w.good, w.mlp, out=_out(t, "geo")), _out(t, "geo")),
        r"different target_modules",
    ),
    Case(
        "adapters/other-base-model",
        lambda w, t, c: (
            _geometry(
                w.good,
                _edit_adapter_config(_copy_adapter(w.good2, t), base_model_name_or_path="some/other-model"),
                out=_out(t, "geo"),
            ),
            _out(t, "geo"),
        ),
        r"different base models: expected .*, found 'some/other-model'",
    ),
    Case(
        "adapters/no-config",
        lambda w, t, c: (
            _geometry(w.good, _unlink(_copy_adapter(w.good, t) / "adapter_config.json"), out=_out(t, "geo")),
            _out(t, "geo"),
        ),
        r"bad: missing adapter_config\.json",
    ),
    Case(
        "adapters/config-not-json",
        lambda w, t, c: (
            _geometry(
                w.good,
                _jsonl(_copy_adapter(w.good, t) / "adapter_config.json", [], raw=b"{r: 4").parent,
                out=_out(t, "geo"),
            ),
            _out(t, "geo"),
        ),
        r"adapter_config\.json: invalid JSON",
    ),
    Case(
        "adapters/config-not-utf8",
        lambda w, t, c: (
            _geometry(
                w.good,
                _jsonl(_copy_adapter(w.good, t) / "adapter_config.json", [], raw=b'{"r": 4, "x": "\xff"}').parent,
                out=_out(t, "geo"),
            ),
            _out(t, "geo"),
        ),
        r"adapter_config\.json: invalid JSON",
    ),
    Case(
        "adapters/pickle-only",
        lambda w, t, c: (_geometry(w.good, _pickle_only(_copy_adapter(w.good, t)), out=_out(t, "geo")), _out(t, "geo")),
        r"only adapter_model\.bin found: pickles are not loaded",
    ),
    Case(
        "adapters/missing-dir",
        lambda w, t, c: (_geometry(w.good, t / "nope", out=_out(t, "geo")), _out(t, "geo")),
        r"nope: adapter directory does not exist",
    ),
    Case(
        "evaluate/adapter-of-another-base",
        lambda w, t, c: (_evaluate(w, _out(t), adapter=w.other_base), _out(t)),
        r"other_base: adapter of base model 'some/other-model' does not fit .*: module 'layers\.0\.self_attn\.\w_proj' is \(\d+, 48\)",
    ),
    Case(
        "evaluate/truncated-adapter",
        lambda w, t, c: (
            _evaluate(
                w, _out(t), adapter=_truncate(_copy_adapter(w.good, t) / "adapter_model.safetensors", 0.5).parent
            ),
            _out(t),
        ),
        r"bad/adapter_model\.safetensors: not a readable safetensors file",
    ),
    Case(
        "evaluate/truncated-dora-adapter",
        lambda w, t, c: (
            _evaluate(
                w,
                _out(t),
                adapter=_truncate(
                    _edit_adapter_config(_copy_adapter(w.good, t), use_dora=True) / "adapter_model.safetensors", 0.5
                ).parent,
            ),
            _out(t),
        ),
        r"bad/adapter_model\.safetensors: not a readable safetensors file",
    ),
    Case(
        "activations/missing-B",
        lambda w, t, c: (
            _activations(
                w,
                _out(t, "act.npz"),
                _edit_adapter_tensors(
                    _copy_adapter(w.good, t),
                    lambda d: {k: v for k, v in d.items() if not ("layers.0.self_attn.o_proj" in k and "lora_B" in k)},
                ),
            ),
            _out(t, "act.npz"),
        ),
        r"module 'layers\.0\.self_attn\.o_proj' has lora_A but no lora_B",
    ),
    Case(
        "lmc/adapter-of-another-base",
        lambda w, t, c: (
            _lmc(
                w,
                w.other_base,
                _edit_adapter_config(_copy_adapter(w.other_base, t), base_model_name_or_path="some/other-model"),
                _out(t, "sweep.tsv"),
                lmc={"alphas": 2, "limit": 2, "accuracy_subset": 1},
                evaluation={"max_new_tokens": 2},
            ),
            _out(t, "sweep.tsv"),
        ),
        r"other_base: adapter of base model 'some/other-model' does not fit",
    ),
    # -- problem sets (evaluation and rollout prompts) --------------------------------------------
    Case(
        "datasets/missing-field",
        lambda w, t, c: (
            _evaluate(
                w,
                _out(t),
                test_sets={"gsm": {"source": str(_jsonl(t / "gsm.jsonl", [{"question": "q", "solution": "#### 1"}]))}},
            ),
            _out(t),
        ),
        r"gsm\.jsonl' \(split 'train'\) has no field 'answer'",
    ),
    Case(
        "datasets/unparsable-gold-evaluation",
        lambda w, t, c: (
            _evaluate(
                w,
                _out(t),
                test_sets={
                    "gsm": {
                        "source": str(
                            _jsonl(
                                t / "gsm.jsonl",
                                [{"question": "q", "answer": "#### 3"}, {"question": "r", "answer": "three"}],
                            )
                        )
                    }
                },
            ),
            _out(t),
        ),
        r"test set gsm .*: item 'gsm-train-1': gold answer 'three' is not a number, which grader 'exact' needs \(1 of 2 "
        r"gold answers .*unparsable_gold: drop",
    ),
    Case(
        "datasets/unparsable-gold-rollouts",
        lambda w, t, c: (
            _rollouts(
                w, _out(t), {"source": str(_jsonl(t / "p.jsonl", [{"id": "a", "question": "q", "answer": "n/a"}]))}
            ),
            _out(t),
        ),
        r"prompts .*: item 'p-train-0': gold answer 'n/a' is not a number",
    ),
    Case(
        "datasets/duplicate-ids",
        lambda w, t, c: (
            _evaluate(
                w,
                _out(t),
                test_sets={
                    "gsm": {
                        "source": str(_jsonl(t / "gsm.jsonl", [{"id": 1, "question": "q", "answer": "1"}] * 2)),
                        "id_field": "id",
                    }
                },
            ),
            _out(t),
        ),
        r"has duplicate id '1'",
    ),
    Case(
        "datasets/empty",
        lambda w, t, c: (
            _evaluate(w, _out(t), test_sets={"gsm": {"source": str(_jsonl(t / "gsm.jsonl", [], raw=b""))}}),
            _out(t),
        ),
        r"gsm\.jsonl' \(split 'train'\) is empty",
    ),
    Case(
        "datasets/non-utf8",
        lambda w, t, c: (
            _evaluate(
                w,
                _out(t),
                test_sets={
                    "gsm": {"source": str(_jsonl(t / "gsm.jsonl", [], raw=b'{"question": "\xe9", "answer": "1"}\n'))}
                },
            ),
            _out(t),
        ),
        r"gsm\.jsonl:1: not UTF-8 text",
    ),
    Case(
        "datasets/missing-file",
        lambda w, t, c: (_evaluate(w, _out(t), test_sets={"gsm": {"source": str(t / "gsm.jsonl")}}), _out(t)),
        r"problem file .*gsm\.jsonl does not exist",
    ),
    Case(
        "datasets/not-parquet",
        lambda w, t, c: (
            _evaluate(w, _out(t), test_sets={"gsm": {"source": str(_jsonl(t / "gsm.parquet", [], raw=b"nope"))}}),
            _out(t),
        ),
        r"gsm\.parquet: not a readable parquet file",
    ),
    # -- model and tokenizer directories ----------------------------------------------------------
    Case(
        "models/missing-dir",
        lambda w, t, c: (_evaluate(w, _out(t), base=t / "nope"), _out(t)),
        r"tokenizer directory .*nope does not exist",
    ),
    Case(
        "models/no-weights",
        lambda w, t, c: (_evaluate(w, _out(t), base=_copy_model(w, t, drop=["model.safetensors"])), _out(t)),
        r"model: cannot load the model \(OSError: .*model\.safetensors",
    ),
    Case(
        "models/truncated-weights",
        lambda w, t, c: (
            _evaluate(w, _out(t), base=_copy_model(w, t, edit=lambda d: _truncate(d / "model.safetensors", 0.5))),
            _out(t),
        ),
        r"model: cannot load the model \(SafetensorError: .*",
    ),
    Case(
        "models/no-config",
        lambda w, t, c: (_evaluate(w, _out(t), base=_copy_model(w, t, drop=["config.json"])), _out(t)),
        r"model: cannot load the model \(ValueError: .*config\.json",
    ),
    Case(
        "models/config-not-json",
        lambda w, t, c: (
            _evaluate(w, _out(t), base=_copy_model(w, t, edit=lambda d: (d / "config.json").write_text("{x"))),
            _out(t),
        ),
        r"model: cannot load the (model|tokenizer) \(\w+: .*config\.json",
    ),
    Case(
        "models/no-tokenizer-files",
        lambda w, t, c: (
            _train(w, _out(t, "adapter"), base=_copy_model(w, t, drop=["tokenizer*"])),
            _out(t, "adapter"),
        ),
        r"model: no tokenizer files",
    ),
    # -- the workflow's own intermediates, handed over by hand --------------------------------------
    Case(
        "intermediates/eval-stats-not-parquet",
        lambda w, t, c: (
            _stats("accuracy", {"m": _jsonl(t / "e.parquet", [], raw=b"garbage")}, _out(t, "stats")),
            _out(t, "stats"),
        ),
        r"e\.parquet.*(Parquet|parquet)",
    ),
    Case(
        "intermediates/cka-not-npz",
        lambda w, t, c: (
            _stats("activations", {"a": _jsonl(t / "a.npz", [], raw=b"garbage"), "b": t / "a.npz"}, _out(t, "cka")),
            _out(t, "cka"),
        ),
        r"a\.npz: not an activations file of 'lossgeom evaluate' \(its activations measure\)",
    ),
    Case(
        "intermediates/lmc-sweep-wrong-columns",
        lambda w, t, c: (
            ["lmc-summary", str(_jsonl(t / "s.tsv", [], raw=b"x\ty\n1\t2\n")), "--out", str(_out(t, "summary.tsv"))],
            _out(t, "summary.tsv"),
        ),
        r"s\.tsv: not a sweep table of 'lossgeom lmc'",
    ),
    # -- the generation layer ---------------------------------------------------------------------
    Case(
        "generation/unknown-backend",
        lambda w, t, c: (_evaluate(w, _out(t), generation={"backend": "tgi"}), _out(t)),
        r"unknown generation backend 'tgi'",
    ),
    Case(
        "generation/unknown-key",
        lambda w, t, c: (_evaluate(w, _out(t), generation={"backend": "vllm", "vllm": {"max_lora_rnak": 8}}), _out(t)),
        r"unknown generation\.vllm key 'max_lora_rnak'",
    ),
    Case(
        "generation/openai-for-evaluation",
        lambda w, t, c: (_evaluate(w, _out(t), generation=_openai("http://127.0.0.1:9/v1")), _out(t)),
        r"the openai backend samples rollouts from an API teacher only",
    ),
    Case(
        "generation/openai-without-journal",
        lambda w, t, c: (
            _rollouts(w, _out(t), {"source": "toy"}, generation=_openai("http://127.0.0.1:9/v1"))
            + ["--toy-dir", str(w.world)],
            _out(t),
        ),
        r"the openai backend needs --journal",
    ),
    Case(
        "generation/openai-key-not-set",
        lambda w, t, c: (
            _rollouts(
                w,
                _out(t),
                {"source": "toy", "limit": 2},
                generation=_openai("http://127.0.0.1:9/v1"),
                journal=t / "j.jsonl",
            )
            + ["--toy-dir", str(w.world)],
            _out(t),
        ),
        r"api_key_env names \$LOSSGEOM_CORPUS_KEY, which is not set",
    ),
    Case(
        "generation/openai-401",
        lambda w, t, c: (
            _rollouts(w, _out(t), {"source": str(c.problems)}, generation=_openai(c.url), journal=t / "j.jsonl"),
            _out(t),
        ),
        r"refused the API key in \$LOSSGEOM_CORPUS_KEY \(401",
        needs="server-wrong-key",
    ),
    Case(
        "generation/openai-unreachable",
        lambda w, t, c: (
            _rollouts(
                w,
                _out(t),
                {"source": str(c.problems)},
                generation=_openai(f"http://127.0.0.1:{_free_port()}/v1"),
                journal=t / "j.jsonl",
            ),
            _out(t),
        ),
        r"cannot reach http://127\.0\.0\.1:\d+/v1 after 0 retries",
        needs="key",
    ),
    Case(
        "generation/openai-5xx-after-retries",
        lambda w, t, c: (
            _rollouts(w, _out(t), {"source": str(c.problems)}, generation=_openai(c.url), journal=t / "j.jsonl"),
            _out(t),
        ),
        r"500.*after 0 retries",
        needs="server-500",
    ),
    # -- values outside their setting's range (issue 31): one line naming the flag and the range ----------
    Case(
        "ranges/geometry-top-k-zero",
        lambda w, t, c: (
            _geometry(w.good, w.good2, out=_out(t, "geo"))[:-4] + ["--top-k", "0", "--out", str(_out(t, "geo"))],
            _out(t, "geo"),
        ),
        r"--top-k 0: 0 is less than the minimum of 1 \(the config's geometry\.top_k\)",
    ),
    Case(
        "ranges/geometry-top-k-negative",
        lambda w, t, c: (
            _geometry(w.good, w.good2, out=_out(t, "geo"))[:-4] + ["--top-k", "-3", "--out", str(_out(t, "geo"))],
            _out(t, "geo"),
        ),
        r"--top-k -3: -3 is less than the minimum of 1",
    ),
    Case(
        "ranges/base-spectrum-threshold-above-one",
        lambda w, t, c: (
            [
                "base-spectrum",
                f"a={w.good}",
                "--base-model",
                str(w.base),
                "--threshold",
                "1.5",
                "--out",
                str(_out(t, "bs")),
            ],
            _out(t, "bs"),
        ),
        r"--threshold 1\.5: 1\.5 is greater than the maximum of 1 \(the config's base_spectrum\.threshold\)",
    ),
    Case(
        "ranges/behaviour-stats-k-zero",
        lambda w, t, c: (
            _stats("samples", {"base": t / "samples.parquet"}, _out(t, "beh"), spec={"k": [1, 0]}),
            _out(t, "beh"),
        ),
        r"behaviour\.k\.1: 0 is less than the minimum of 1",
    ),
    Case(
        "ranges/lmc-one-alpha",
        lambda w, t, c: (_lmc(w, w.good, w.good2, _out(t, "lmc.tsv"), lmc={"alphas": 1}), _out(t, "lmc.tsv")),
        r"--spec lmc\.alphas: 1 is less than the minimum of 2",
    ),
    # -- adapters that cannot be measured (issue 31): named by file and module -------------------------------
    Case(
        "adapters/nan-in-lora-A",
        lambda w, t, c: (
            _geometry(
                w.good,
                _edit_adapter_tensors(
                    _copy_adapter(w.good, t),
                    lambda d: {
                        k: (v * float("nan") if "layers.1.self_attn.k_proj.lora_A" in k else v) for k, v in d.items()
                    },
                ),
                out=_out(t, "geo"),
            ),
            _out(t, "geo"),
        ),
        r"bad/adapter_model\.safetensors: module layers\.1\.self_attn\.k_proj: lora_A holds NaN or Inf",
    ),
    Case(
        "adapters/inf-in-lora-B-evaluate",
        lambda w, t, c: (
            _evaluate(
                w,
                _out(t),
                adapter=str(
                    _edit_adapter_tensors(
                        _copy_adapter(w.good, t),
                        lambda d: {
                            k: (v + float("inf") if "layers.0.self_attn.o_proj.lora_B" in k else v)
                            for k, v in d.items()
                        },
                    )
                ),
            ),
            _out(t),
        ),
        r"module layers\.0\.self_attn\.o_proj: lora_B holds NaN or Inf",
    ),
    # -- a library's ValueError on a bad file, caught at the read and named (issue 31: a plain ValueError is a
    # bug's, with its traceback; these used to pass as one line only because every ValueError did) ------------
    Case(
        "intermediates/lmc-sweep-not-utf8",
        lambda w, t, c: (
            [
                "lmc-summary",
                str(_jsonl(t / "s.tsv", [], raw=b"pair_a\tpair_b\n\xff\xfe\t1\n")),
                "--out",
                str(_out(t, "s")),
            ],
            _out(t, "s"),
        ),
        r"s\.tsv: not a sweep table of 'lossgeom lmc' \(.*utf-8",
    ),
    Case(
        "intermediates/lmc-sweep-without-endpoints",
        lambda w, t, c: (
            [
                "lmc-summary",
                str(_jsonl(t / "s.tsv", [], raw=b"pair_a\tpair_b\talpha\tmetric\tvalue\na\tb\t0.5\taccuracy\t1\n")),
                "--out",
                str(_out(t, "s")),
            ],
            _out(t, "s"),
        ),
        r"s\.tsv: not a sweep table of 'lossgeom lmc' \(a curve's alphas do not run from 0 to 1\)",
    ),
    Case(
        "intermediates/eval-stats-wrong-columns",
        lambda w, t, c: (
            _stats("accuracy", {"m": _parquet(t / "e.parquet", pd.DataFrame({"x": [1]}))}, _out(t, "stats")),
            _out(t, "stats"),
        ),
        r"e\.parquet: not an evaluation table of 'lossgeom evaluate' \(no column\(s\) \['test_set'",
    ),
    Case(
        "intermediates/trajectory-train-info-not-json",
        lambda w, t, c: (
            [
                "trajectory",
                f"a/seed1={_jsonl(_copy_adapter(w.good, t) / 'train_info.json', [], raw=b'{not json').parent}",
                "--out",
                str(_out(t, "traj")),
            ],
            _out(t, "traj"),
        ),
        r"train_info\.json: not the train_info\.json of 'lossgeom train' \(JSONDecodeError",
    ),
    Case(
        "adapters/config-not-json-with-base-model",
        lambda w, t, c: (
            [
                "geometry",
                str(_jsonl(_copy_adapter(w.good, t) / "adapter_config.json", [], raw=b"{not json").parent),
                str(w.good2),
                "--base-model",
                str(w.base),
                "--out",
                str(_out(t, "geo")),
            ],
            _out(t, "geo"),
        ),
        r"bad/adapter_config\.json: not a PEFT adapter config \(JSONDecodeError",
    ),
    Case(
        "models/no-chat-template",
        lambda w, t, c: (_evaluate(w, _out(t), base=_copy_model(w, t, drop=["chat_template.jinja"])), _out(t)),
        r"model: cannot write a chat prompt \(.*chat_template",
    ),
    Case(
        "ranges/behaviour-stats-ci-above-one",
        lambda w, t, c: (
            _stats("samples", {"base": t / "samples.parquet"}, _out(t, "beh"), spec={"ci": 1.5}),
            _out(t, "beh"),
        ),
        r"behaviour\.ci: 1\.5 is greater than or equal to the maximum of 1",
    ),
    # -- the tables 'claims' and the figures commands read, and the toy world's files: a damaged or
    # foreign file is named where it is read (issue 31) ---------------------------------------------------
    Case(
        "claims/unknown-role",
        lambda w, t, c: (_claims(t, _out(t, "claims.tsv"), roles=("ppo=ppo",)), _out(t, "claims.tsv")),
        r"claims: unknown role 'ppo'",
    ),
    Case(
        "claims/noise-floor-not-utf8",
        lambda w, t, c: (
            _claims(
                _table_dir(t, "geometry", {"noise_floor.tsv": b"pair_a\tpair_b\n\xff\xfe\t1\n"}),
                _out(t, "claims.tsv"),
            ),
            _out(t, "claims.tsv"),
        ),
        r"geometry/noise_floor\.tsv: not a noise_floor\.tsv of 'lossgeom geometry' \(.*utf-8",
    ),
    Case(
        "claims/noise-floor-lacks-columns",
        lambda w, t, c: (
            _claims(
                _table_dir(
                    t,
                    "geometry",
                    {
                        "noise_floor.tsv": b"pair_a\tpair_b\tvalue\nsft/seed1\tgrpo/seed1\t0.5\n",
                        "adapters.tsv": b"label\tnorm\teffective_rank_mean\nsft/seed1\t1.0\t2.0\n",
                    },
                ),
                _out(t, "claims.tsv"),
            ),
            _out(t, "claims.tsv"),
        ),
        r"geometry/noise_floor\.tsv: not a noise_floor\.tsv of 'lossgeom geometry' \(no column\(s\) "
        r"\['method_a', 'method_b', 'init', 'data_order', 'metric', 'data_floor', 'random'\]\)",
    ),
    Case(
        "claims/adapters-table-lacks-columns",
        lambda w, t, c: (
            _claims(
                _table_dir(
                    t,
                    "geometry",
                    {
                        "noise_floor.tsv": (
                            b"pair_a\tpair_b\tmethod_a\tmethod_b\tinit\tdata_order\tmetric\tvalue\tdata_floor\trandom\n"
                        ),
                        "adapters.tsv": b"label\tnorm\nsft/seed1\t1.0\n",
                    },
                ),
                _out(t, "claims.tsv"),
            ),
            _out(t, "claims.tsv"),
        ),
        r"geometry/adapters\.tsv: not an adapters\.tsv of 'lossgeom geometry' \(no column\(s\) \['effective_rank_mean'\]\)",
    ),
    Case(
        "figures/accuracy-table-lacks-column",
        lambda w, t, c: (
            [
                "measure-figures",
                "accuracy",
                "--tables",
                str(
                    _tables(
                        t,
                        {
                            "accuracy.tsv": b"test_set\tmodel\taccuracy\ntoy\tbase\t0.5\n",
                            "pairwise.tsv": b"test_set\tmodel_a\tmodel_b\tp_holm\n",
                        },
                    )
                ),
                "--out",
                str(_out(t, "figures")),
            ],
            _out(t, "figures"),
        ),
        r"accuracy\.tsv: not an accuracy\.tsv of 'lossgeom measure-stats accuracy' \(no column\(s\) \['ci_low', 'ci_high'\]\)",
    ),
    Case(
        "figures/geometry-noise-floor-lacks-column",
        lambda w, t, c: (
            [
                "geometry-figures",
                "--tables",
                str(
                    _table_dir(
                        t,
                        "geometry",
                        {
                            "cosine_global.tsv": MATRIX,
                            "top1_angle_left_median.tsv": MATRIX,
                            "orthogonal_fraction_global.tsv": MATRIX,
                            "noise_floor.tsv": b"pair_a\tpair_b\tvalue\na/seed1\ta/seed2\t0.5\n",
                        },
                    )
                ),
                "--out",
                str(_out(t, "figures")),
            ],
            _out(t, "figures") / "cosine_global.png",  # the heatmaps drawn before it: none left
        ),
        r"geometry/noise_floor\.tsv: not a noise_floor\.tsv of 'lossgeom geometry' \(no column\(s\) "
        r"\['method_a', 'method_b', 'init', 'data_order', 'metric', 'random'\]\)",
    ),
    Case(
        "figures/lmc-curves-not-utf8",
        lambda w, t, c: (
            [
                "connectivity-figures",
                "--summary",
                str(_jsonl(t / "summary.tsv", [], raw=b"pair_a\tpair_b\tmetric\tbarrier\n")),
                "--curves",
                str(_jsonl(t / "curves.tsv", [], raw=b"pair_a\tpair_b\n\xff\xfe\t1\n")),
                "--out",
                str(_out(t, "figures")),
            ],
            _out(t, "figures"),
        ),
        r"curves\.tsv: not a curves table of 'lossgeom lmc-summary' \(.*utf-8",
    ),
    Case(
        "toy/problems-file-torn",
        lambda w, t, c: (
            _toy_model(_damaged_world(w, t, b'{"id": "toy-train-1", "question": "1 +'), _out(t, "base")),
            _out(t, "base"),
        ),
        r"world/problems/train\.jsonl:2: not a problems file of 'lossgeom toy-world' \(JSONDecodeError",
    ),
    Case(
        "toy/problems-file-not-utf8",
        lambda w, t, c: (_toy_model(_damaged_world(w, t, b'{"question": "\xff"}\n'), _out(t, "base")), _out(t, "base")),
        r"world/problems/train\.jsonl: not a problems file of 'lossgeom toy-world' \(not UTF-8 text",
    ),
    Case(
        "toy/problems-file-foreign-rows",
        lambda w, t, c: (
            _toy_model(_damaged_world(w, t, b'{"question": "1 + 1?"}\n'), _out(t, "base")),
            _out(t, "base"),
        ),
        r"world/problems/train\.jsonl:2: not a problems file of 'lossgeom toy-world' \(TypeError: .*missing",
    ),
]
if importlib.util.find_spec("vllm") is None:  # where vLLM is installed, tests/test_vllm_engine.py runs it
    CASES.append(
        Case(
            "generation/vllm-not-installed",
            lambda w, t, c: (_evaluate(w, _out(t), generation={"backend": "vllm"}), _out(t)),
            r"the vllm backend needs vLLM .*pip install",
        )
    )


def _unlink(path: Path) -> Path:
    path.unlink()
    return path.parent


def _pickle_only(adapter: Path) -> Path:
    (adapter / "adapter_model.safetensors").rename(adapter / "adapter_model.bin")
    return adapter


def assert_one_line(rc: int, err: str, expect: str, out: Path) -> str:
    """Exit 2; exactly one ``lossgeom: error:`` line, the last one; no traceback; nothing at ``out``."""
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if "lossgeom: error:" in line]
    assert rc == 2, f"exit status {rc}; stderr ends {lines[-3:]}"
    assert len(errors) == 1 and errors[0] == lines[-1] and errors[0].startswith("lossgeom: error:"), lines[-5:]
    assert "Traceback" not in err
    assert re.search(expect, errors[0]), f"{errors[0]!r} does not match {expect!r}"
    assert not out.exists(), f"{out} was written"
    assert not list(out.parent.glob(f".{out.name}.*")) if out.parent.exists() else True, "a temporary file was left"
    return errors[0]


@pytest.fixture
def endpoint(request, tmp_path, monkeypatch):
    """A scripted OpenAI-compatible server (tests/test_openai_api.py) and a problem file for it."""
    from test_openai_api import KEY, PROBLEMS, Script, make_handler

    needs = request.param
    ctx = SimpleNamespace(url=None, problems=tmp_path / "problems.jsonl")
    ctx.problems.write_text(
        "".join(
            json.dumps({"id": i, "question": q, "answer": a}) + "\n" for i, q, a in PROBLEMS.itertuples(index=False)
        )
    )
    if needs in ("key", "server-500"):
        monkeypatch.setenv("LOSSGEOM_CORPUS_KEY", KEY)
    elif needs == "server-wrong-key":
        monkeypatch.setenv("LOSSGEOM_CORPUS_KEY", "sk-wrong")
    else:
        monkeypatch.delenv("LOSSGEOM_CORPUS_KEY", raising=False)
    httpd = None
    if needs and needs.startswith("server"):
        script = Script()
        if needs == "server-500":
            script.fail_after = 0
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(script))
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        ctx.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield ctx
    if httpd:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize(
    "case, endpoint", [(c, c.needs) for c in CASES], ids=[c.id for c in CASES], indirect=["endpoint"]
)
def test_cli_case(case, endpoint, w, tmp_path, capsys):
    argv, out = case.make(w, tmp_path, endpoint)
    capsys.readouterr()
    rc = main(argv)
    line = assert_one_line(rc, capsys.readouterr().err, case.expect, out)
    assert "sk-" not in line  # never the key


# ---- out of memory on a GPU job --------------------------------------------------------------------

OOM_CASES = [
    (
        "train",
        "lossgeom.training.job.train_adapter",
        lambda w, out: _train(w, out),
        r"GPU out of memory in train \(lossgeom train\) at batch size 4: lower training\.batch_size \(or methods\.m\.batch_size",
    ),
    (
        "evaluate",
        "lossgeom.behaviour.job.evaluate_model",
        lambda w, out: _evaluate(w, out),
        r"GPU out of memory in evaluate \(lossgeom evaluate\) at batch size 8: lower evaluation\.batch_size",
    ),
    (
        "lmc",
        "lossgeom.behaviour.connectivity.connectivity_sweep",
        lambda w, out: _lmc(w, w.good, w.good2, out, evaluation={"batch_size": 4}),
        r"GPU out of memory in lmc \(lossgeom lmc\) at batch size 4: lower evaluation\.batch_size",
    ),
    (
        "evaluate",
        "lossgeom.behaviour.activations.extract_activations",
        lambda w, out: _activations(w, out, w.good),
        r"GPU out of memory in evaluate .* at batch size 32: lower evaluation\.batch_size \(or cka\.batch_size, 32, ",
    ),
    (
        "toy-model",
        "lossgeom.toy.pretrain.pretrain",
        lambda w, out: [
            "toy-model",
            "--spec",
            json.dumps({"batch_size": 64}),
            "--world",
            str(w.world),
            "--seed",
            "0",
            "--out",
            str(out.parent / "base"),
        ],
        r"GPU out of memory in toy_model \(lossgeom toy-model\) at batch size 64: lower toy\.models\.base\.batch_size",
    ),
    (
        "rollouts",
        "lossgeom.generation.sampling.sample_rollouts",
        lambda w, out: (
            _rollouts(
                w,
                out,
                {"source": "toy", "limit": 2},
                spec={"k": 2, "temperature": 1.0, "max_new_tokens": 2, "batch_size": 16},
            )
            + ["--toy-dir", str(w.world)]
        ),
        r"GPU out of memory in rollouts .* at batch size 16: lower rollouts\.batch_size",
    ),
]


@pytest.mark.parametrize("command, target, make, expect", OOM_CASES, ids=[c[0] for c in OOM_CASES])
def test_out_of_memory_names_rule_batch_and_key(command, target, make, expect, w, tmp_path, capsys, monkeypatch):
    import torch

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; 79.11 GiB total)")

    module, name = target.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, oom)
    out = tmp_path / "result" / "out"
    rc = main(make(w, out))
    assert_one_line(rc, capsys.readouterr().err, expect, out)


# ---- configs: the validation the Snakefile runs before any job --------------------------------------


def _tiny() -> dict:
    return yaml.safe_load(TINY_CONFIG.read_text())


def _set(path: str, value):
    def edit(c):
        *head, last = path.split(".")
        node = c
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value

    return edit


def _drop(path: str):
    def edit(c):
        *head, last = path.split(".")
        node = c
        for k in head:
            node = node[k]
        del node[last]

    return edit


CONFIG_CASES = [
    ("wrong-type-int", _set("training.steps", "a"), r"training\.steps: expected integer, got str 'a'"),
    ("wrong-type-number", _set("training.learning_rate", "1e-3"), r"training\.learning_rate: expected number"),
    ("wrong-type-list", _set("seeds", 1), r"seeds: expected array"),
    ("unknown-top-level-key", _set("trainig", {"steps": 1}), r"unknown key trainig; expected one of"),
    ("unknown-nested-key", _set("training.lr", 1e-3), r"unknown key training\.lr; expected one of .*learning_rate"),
    ("missing-section", _drop("methods"), r"'methods' is a required property"),
    ("unknown-loss", _set("methods.ppo_run", {"loss": "ppo"}), r"methods\.ppo_run\.loss: 'ppo' is not one of"),
    ("loss-key-of-another-loss", _set("methods.sft.beta", 0.1), r"methods\.sft\.beta does not apply to loss 'sft'"),
    (
        "analysis-step-not-saved",
        _set("training.analysis_step", 9),
        r"training\.analysis_step/save_steps value 9 exceeds methods\.\w+ steps 4",
    ),
    ("save-step-beyond-steps", _set("training.save_steps", [2, 8]), r"value 8 exceeds methods\.\w+ steps 4"),
    ("top-k-above-rank", _set("geometry.top_k", 5), r"geometry\.top_k 5 exceeds lora\.r 4"),
    (
        "lmc-pair-unknown-method",
        _set("lmc.pairs", [["sft/seed1", "ppo/seed1"]]),
        r"lmc\.pairs names 'ppo/seed1', which is not an adapter",
    ),
    ("lmc-pair-unknown-seed", _set("lmc.pairs", [["sft/seed1", "sft/seed9"]]), r"lmc\.pairs names 'sft/seed9'"),
    ("lmc-test-set-unknown", _set("lmc.test_set", "gsm8k"), r"lmc\.test_set 'gsm8k' is not a key of test_sets"),
    ("cka-test-set-unknown", _set("cka.test_set", "aime"), r"cka\.test_set 'aime' is not a key of test_sets"),
    ("generation-unknown-backend", _set("generation", {"backend": "tgi"}), r"generation\.backend: 'tgi' is not one of"),
    (
        "openai-for-evaluation",
        _set("generation", {"backend": "openai", "openai": {"base_url": "http://x/v1", "model": "m"}}),
        r"generation\.backend 'openai' serves rollouts only; set generation\.stages\.evaluation",
    ),
    (
        "openai-without-base-url",
        _set("generation", {"stages": {"rollouts": "openai"}}),
        r"generation\.openai\.base_url is required",
    ),
    (
        "openai-and-import",
        _set("generation", {"stages": {"rollouts": "openai"}, "openai": {"base_url": "http://x/v1", "model": "m"}}),
        r"rollouts\.import and an openai rollout backend exclude each other",
    ),
    (
        "vllm-max-lora-rank-below-rank",
        _set("generation", {"backend": "vllm", "vllm": {"max_lora_rank": 1}}),
        r"generation\.vllm\.max_lora_rank 1 is below the rank 4 the evaluation stage serves",
    ),
    (
        "vllm-max-lora-rank-below-pair",
        _set("generation", {"stages": {"lmc": "vllm"}, "vllm": {"max_lora_rank": 1}}),
        r"generation\.vllm\.max_lora_rank 1 is below the rank 8 the lmc stage serves \(lora\.r 4 x 2",
    ),
    ("no-toy-section", _drop("toy"), r"a model or problem source is 'toy' but there is no 'toy' section"),
    (
        "template-without-question",
        _set("model.prompt_template", "Solve it."),
        r"model\.prompt_template: 'Solve it\.' does not match",
    ),
    (
        "temperature-zero-sampling",
        _set("rollouts.temperature", 0),
        r"rollouts\.temperature: 0 is less than or equal to the minimum",
    ),
    ("batch-size-zero", _set("evaluation.batch_size", 0), r"evaluation\.batch_size: 0 is less than the minimum of 1"),
    ("method-name-with-slash", _set("methods.a/b", {"loss": "sft"}), r"methods: 'a/b' does not match"),
]


@pytest.mark.parametrize("edit, expect", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_config_case(edit, expect, tmp_path):
    config = _tiny()
    edit(config)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as info:
        load(path, SCHEMA)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("config error: ")
    assert re.search(expect, msg), f"{msg!r} does not match {expect!r}"


@pytest.mark.parametrize(
    "text, expect",
    [
        ("seeds: [1\n", r"is not valid YAML"),
        ("- 1\n- 2\n", r"must hold a mapping"),
        (b"seeds: [1]\n# \xff\n", r"is not UTF-8 text"),
    ],
    ids=["yaml-syntax", "yaml-not-a-mapping", "not-utf8"],
)
def test_config_file_case(text, expect, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    with pytest.raises(ConfigError, match=expect) as info:
        load(path, SCHEMA)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_the_default_configs_are_not_faults():
    for path in sorted((REPO / "config").glob("*.yaml")) + [TINY_CONFIG]:
        load(path, SCHEMA)


@pytest.mark.heavy
def test_snakemake_stops_on_a_bad_config(tmp_path):
    """The same line through Snakemake itself, before any job (its exit status is 1, not 2)."""
    config = _tiny()
    config["geometry"]["top_k"] = 9
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "1",
            "--configfile",
            str(path),
            "-s",
            str(REPO / "Snakefile"),
            "-d",
            str(tmp_path / "wd"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert [line for line in text.splitlines() if "config error:" in line] == [
        "config error: geometry.top_k 9 exceeds lora.r 4 (an adapter's update has at most 4 singular directions); "
        "lower geometry.top_k"
    ]
    assert "Traceback" not in text
    assert not (tmp_path / "wd" / "results").exists()


def test_a_dora_adapter_is_not_a_fault_for_evaluation(w, tmp_path):
    """The geometry refuses DoRA (its update is not s*B@A), but evaluation merges it through PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(str(w.base)),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True),
    )
    model.save_pretrained(str(tmp_path / "dora"))
    out = tmp_path / "eval.parquet"
    test_sets = {"toy": {"source": "toy", "split": "test", "limit": 2}}
    argv = _evaluate(w, out, adapter=tmp_path / "dora", test_sets=test_sets)
    assert main(argv) == 0 and len(pd.read_parquet(out)) == 2


def test_the_corpus_is_large_enough():
    assert len(CASES) + len(OOM_CASES) + len(CONFIG_CASES) + 2 + 1 >= 40  # + the YAML files, + through Snakemake


def test_damaged_caches_are_not_faults(w, tmp_path, capsys, caplog):
    """A damaged cache (issue 31) is no fault of the input: ``trajectory`` (factor caches) and
    ``base-spectrum`` (base-SVD caches) rebuild every zero-byte, truncated, bit-flipped or garbage cache file,
    exit 0 with the tables of a clean run, byte for byte, and log one WARNING per file; no traceback."""
    import logging

    adapters = []
    for name, src in (("a/seed1", w.good), ("a/seed2", w.good2)):
        d = shutil.copytree(src, tmp_path / name)
        (d / "train_info.json").write_text(json.dumps({"save_steps": [1], "analysis_step": 1}))
        adapters.append(f"{name}={d}")
    commands = {
        "trajectory": ["trajectory", *adapters, "--top-k", "2"],
        "base-spectrum": ["base-spectrum", *adapters, "--base-model", str(w.base)],
    }

    def flip(raw: bytes) -> bytes:  # the middle byte: inside an array's data in both formats
        return raw[: len(raw) // 2] + bytes([raw[len(raw) // 2] ^ 64]) + raw[len(raw) // 2 + 1 :]

    damage = [lambda raw: b"", lambda raw: raw[: len(raw) // 2], flip, lambda raw: b"\x93NUMPY" + raw[6:]]
    for command, argv in commands.items():
        cache, out = tmp_path / "cache" / command, tmp_path / command
        assert main([*argv, "--cache-dir", str(cache), "--out", str(out / "clean")]) == 0
        files = sorted(cache.iterdir())
        for i, path in enumerate(files):
            path.write_bytes(damage[i % len(damage)](path.read_bytes()))
        capsys.readouterr()
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert main([*argv, "--cache-dir", str(cache), "--out", str(out / "damaged")]) == 0
        assert "Traceback" not in capsys.readouterr().err
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "cache" in r.getMessage()]
        assert len(warned) == len(files) >= 2 and all(any(str(p) in m for m in warned) for p in files), warned
        tables = sorted(p.name for p in (out / "clean").glob("*.tsv"))
        assert tables and tables == sorted(p.name for p in (out / "damaged").glob("*.tsv"))
        for name in tables:
            assert (out / "damaged" / name).read_bytes() == (out / "clean" / name).read_bytes(), (command, name)


def test_a_full_disk_is_one_line_naming_the_file_and_the_free_space(w, tmp_path, capsys, monkeypatch):
    """ENOSPC while writing (issue 31: a full disk ended in a traceback): one line, the path, the space left."""
    import errno

    import lossgeom.data.rollouts as rollouts

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.parquet"))

    monkeypatch.setattr(rollouts.pd.DataFrame, "to_parquet", full)
    rc = main(_import(_jsonl(tmp_path / "r.jsonl", [_row()]), _out(tmp_path)))
    line = assert_one_line(
        rc, capsys.readouterr().err, r"out\.parquet: No space left on device .*MB free there", _out(tmp_path)
    )
    assert "free some space" in line


def test_a_bug_s_oserror_keeps_its_traceback(w, tmp_path, monkeypatch):
    """Only the machine's OSErrors (full disk, quota, file-size limit, permissions) become one line."""
    import errno

    import lossgeom.data.rollouts as rollouts

    def broken(*args, **kwargs):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(rollouts.pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="Bad file descriptor"):
        main(_import(_jsonl(tmp_path / "r.jsonl", [_row()]), _out(tmp_path)))


@pytest.mark.parametrize(
    "bug", [ValueError("operands could not be broadcast together"), FloatingPointError("overflow encountered")]
)
def test_a_bug_s_valueerror_keeps_its_traceback(tmp_path, monkeypatch, capsys, bug):
    """A plain ValueError or FloatingPointError raised inside a command is a bug (a shape mismatch, a broken
    invariant), not an input error (issue 31, "a bug must look like a bug"): it propagates with its traceback,
    where it used to end in one line and exit 2 like a bad input. Input errors are InputErrors."""
    from lossgeom import cli_commands

    def command(a):
        raise bug

    monkeypatch.setattr(cli_commands, "cmd_lmc_summary", command)
    with pytest.raises(type(bug), match=str(bug)):
        main(["lmc-summary", str(tmp_path / "s.tsv"), "--out", str(tmp_path / "summary.tsv")])
    assert "lossgeom: error:" not in capsys.readouterr().err


def test_an_input_error_raised_inside_a_command_is_one_line(tmp_path, monkeypatch, capsys):
    """Any InputError (here a diverged training run's NonFiniteError, also a FloatingPointError; and a bare
    OS FileNotFoundError of a missing input) is one line and exit 2."""
    from lossgeom import cli_commands
    from lossgeom.training.trainers import NON_FINITE_FIX, NonFiniteError

    out = tmp_path / "summary.tsv"
    argv = ["lmc-summary", str(tmp_path / "s.tsv"), "--out", str(out)]

    def diverged(a):
        raise NonFiniteError(f"non-finite loss (nan); training stopped, no adapter written; {NON_FINITE_FIX}")

    monkeypatch.setattr(cli_commands, "cmd_lmc_summary", diverged)
    assert_one_line(main(argv), capsys.readouterr().err, r"non-finite loss .*lower the method's learning_rate", out)
    monkeypatch.undo()
    assert_one_line(main(argv), capsys.readouterr().err, r"s\.tsv: no such file or directory \(check the path", out)


# Exception classes of lossgeom that are not input errors, and why each is not.
NOT_INPUT_ERRORS = {
    "lossgeom.devices.NoCudaError": "the machine's: a GPU granted and no CUDA (one line of its own in cli.main)",
    "lossgeom.cli_oom.OutOfMemory": "the machine's: a GPU out of memory, restated (one line of its own in cli.main)",
    "lossgeom.claims.tables.Missing": "a table value absent: the claim's verdict is 'not run', never an error",
}


def test_every_input_error_class_is_an_input_error():
    """Each exception class lossgeom defines is an InputError (what cli.main prints as one line; a ValueError,
    so ``except ValueError`` callers keep working), or is listed in NOT_INPUT_ERRORS with the reason."""
    import importlib
    import inspect
    import pkgutil

    import lossgeom
    from lossgeom.errors import InputError

    found = {}
    for info in pkgutil.walk_packages(lossgeom.__path__, "lossgeom."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{info.name}.{name}"] = obj
    assert {"lossgeom.config.ConfigError", "lossgeom.training.trainers.NonFiniteError"} <= set(found)
    assert set(NOT_INPUT_ERRORS) <= set(found), "a listed class no longer exists: drop it from the list"
    stray = sorted(n for n, c in found.items() if not issubclass(c, InputError) and n not in NOT_INPUT_ERRORS)
    assert not stray, f"not InputErrors and not listed in NOT_INPUT_ERRORS: {stray}"
    assert issubclass(found["lossgeom.training.trainers.NonFiniteError"], FloatingPointError)
    assert not any(issubclass(found[n], InputError) for n in NOT_INPUT_ERRORS)


def test_an_adapter_with_a_zero_delta_is_named_not_refused(w, tmp_path, capsys, caplog):
    """An all-zero lora_B (an untrained adapter; online GRPO on a base that never earns a reward) gave NaN
    cosines without a word (issue 31): geometry still writes its tables, NaN for that adapter, and one WARNING
    names it. Not an error: the workflow must get past a legitimately zero update."""
    zero = _edit_adapter_tensors(
        _copy_adapter(w.good, tmp_path), lambda d: {k: (v * 0 if "lora_B" in k else v) for k, v in d.items()}
    )
    out = _out(tmp_path, "geo")
    assert main(_geometry(w.good, zero, out=out)) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert any(
        "bad" in r.getMessage() and "its delta is zero in every module" in r.getMessage() for r in caplog.records
    )
    cos = pd.read_csv(out / "cosine_global.tsv", sep="\t", index_col=0)
    assert cos.isna().to_numpy().any()
