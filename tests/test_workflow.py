"""End to end: the Snakemake DAG on a tiny config, through the same rules and CLI as the real study."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO
from subprocesses import run_snakemake

from lossgeom.geometry.tables import SQUARE_METRICS

TINY = REPO / "tests" / "data" / "tiny_config.yaml"
METHODS = ("sft", "rft", "dft", "rift", "grpo", "dpo")
LABELS = [f"{m}/seed{s}" for m in METHODS for s in (1, 2)]
REPLICATES = [f"{m}/seed1data5" for m in METHODS]  # data_order_replicate of the tiny config


def figures(*names: str) -> set[str]:
    """Each figure's PNG and the PDF written beside it (both declared outputs of its rule)."""
    return {f"results/figures/{n}.{ext}" for n in names for ext in ("png", "pdf")}


GEOMETRY_FIGURES = figures(
    "cosine_global",
    "top1_angle_left_median",
    "orthogonal_fraction_global",
    "per_layer_profiles",
    "cosine_methods",
    "top1_angle_methods",
)
ACCURACY_FIGURES = figures("accuracy_toy", "mcnemar_toy")  # one of each per test set of the tiny config
CONNECTIVITY_FIGURES = figures("lmc", "lmc_pairs")
REPRESENTATIONS_FIGURES = figures("cka_profiles", "cka_last_layer")
TRAINING_FIGURES = figures("training_curves")
TRAJECTORY_FIGURES = figures("trajectory")
BASE_SPECTRUM_FIGURES = figures("base_spectrum")
SAMPLED_FIGURES = figures("pass_at_k", "kl_forgetting")
BEHAVIOUR_FIGURES = ACCURACY_FIGURES | CONNECTIVITY_FIGURES | REPRESENTATIONS_FIGURES | SAMPLED_FIGURES
ALL_FIGURES = GEOMETRY_FIGURES | BEHAVIOUR_FIGURES | TRAINING_FIGURES | TRAJECTORY_FIGURES | BASE_SPECTRUM_FIGURES
# every table the geometry job writes (the tiny config has no base_alignment.tsv: geometry.base_alignment is off)
GEOMETRY_TABLES = {
    f"results/geometry/{n}.tsv"
    for n in (*SQUARE_METRICS, "per_layer", "adapters", "adapter_modules", "noise_floor", "long")
} | {"results/geometry/settings.json"}
# the geometry along training and against the base's spectrum (rules trajectory, base_spectrum)
GEOMETRY_TABLES |= {f"results/trajectory/{n}" for n in ("paths.tsv", "steps.tsv", "cross_steps.tsv", "settings.json")}
GEOMETRY_TABLES |= {f"results/base_spectrum/{n}" for n in ("modules.tsv", "summary.tsv", "settings.json")}


def snakemake(workdir: Path, *args: str, configfile: Path = TINY, timeout: int = 900, snakefile: Path | None = None):
    snakefile = snakefile or (
        workdir / "workflow_copy" / "Snakefile" if (workdir / "workflow_copy").exists() else REPO / "Snakefile"
    )
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "-s",
        str(snakefile),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        *args,
    ]
    return run_snakemake(cmd, workdir=workdir, timeout=timeout)


def copy_workflow(workdir: Path) -> None:
    """A private copy of the workflow tree (Snakefile, rules, figure code) whose files a test may touch."""
    dst = workdir / "workflow_copy"
    for sub in ("workflow", "config", "envs"):
        shutil.copytree(REPO / sub, dst / sub)
    shutil.copytree(REPO / "src" / "lossgeom" / "figures", dst / "src" / "lossgeom" / "figures")
    shutil.copy(REPO / "Snakefile", dst / "Snakefile")


def planned_outputs(run: subprocess.CompletedProcess) -> set[str]:
    """The output files of every job a dry run schedules (``all`` has none)."""
    assert run.returncode == 0, run.stderr[-3000:]
    out = set()
    for line in (run.stdout + run.stderr).splitlines():
        if line.strip().startswith("output:"):
            out.update(p.strip() for p in line.split(":", 1)[1].split(","))
    return out


def with_config(tmp_path: Path, change) -> Path:
    cfg = yaml.safe_load(TINY.read_text())
    change(cfg)
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # method order picks the LMC reference
    return path


def write_rollouts(workdir: Path) -> None:
    """Correct (gold) and incorrect (perturbed answer) rollouts for the tiny toy world's first prompts."""
    from lossgeom.toy.problems import generate_splits

    cfg = yaml.safe_load(TINY.read_text())["toy"]
    train, _ = generate_splits(cfg["seed"], cfg["n_train"], cfg["n_test"])
    with open(workdir / "rollouts.jsonl", "w") as f:
        for p in train[:8]:
            for k in range(4):
                answer = p.answer if k in (0, 3) else p.answer + k
                completion = p.solution.rsplit("####", 1)[0] + f"#### {answer}"
                f.write(
                    json.dumps(
                        {
                            "prompt_id": p.id,
                            "prompt": p.question,
                            "completion": completion,
                            "reward": int(answer == p.answer),
                            "gold": str(p.answer),
                        }
                    )
                    + "\n"
                )


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("study")
    copy_workflow(workdir)
    write_rollouts(workdir)
    run = snakemake(workdir, "--cores", "2")
    assert run.returncode == 0, run.stderr[-4000:]
    return workdir


@pytest.mark.slow
def test_tiny_study_writes_the_results_contract(study):
    res = study / "results"
    for label in LABELS:
        method, seed = label.split("/")
        adapter = res / "adapters" / method / seed
        assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
        assert (adapter / "step4" / "adapter_model.safetensors").exists()
    cos = pd.read_csv(res / "geometry" / "cosine_global.tsv", sep="\t", index_col=0)
    assert list(cos.index) == LABELS + REPLICATES and list(cos.columns) == LABELS + REPLICATES
    info = json.loads((res / "adapters" / "sft" / "seed1data5" / "train_info.json").read_text())
    assert json.dumps(info).count('"data_seed": 5') >= 1
    floor = pd.read_csv(res / "geometry" / "noise_floor.tsv", sep="\t")
    rep = floor[(floor.pair_a == "sft/seed1") & (floor.pair_b == "sft/seed1data5") & (floor.metric == "cosine_global")]
    assert rep.iloc[0]["init"] == "shared" and rep.iloc[0]["data_order"] == "other"
    claims = pd.read_csv(res / "claims.tsv", sep="\t")
    assert len(claims) == 26 and set(claims["verdict"]) <= {"holds", "fails", "fragile", "inconclusive", "not run"}
    # the base-spectrum rows are computed from the study's own tables (not "not run"), on every replicate
    ids = ["intruders", "rl_rotation", "rl_spectrum", "forgetting_tracks_kl"]
    assert set(claims.set_index("claim_id").loc[ids, "verdict"]) <= {"holds", "fails", "fragile"}
    assert set(claims.set_index("claim_id").loc[ids[:3], "replicates"].str.split().str[2]) == {"3"}
    assert (abs(cos.values.diagonal() - 1) < 1e-9).all()
    assert (abs(cos.values - cos.values.T) < 1e-12).all()
    assert (res / "figures" / "cosine_global.png").stat().st_size > 10_000
    # every model job recorded its library versions; one table holds them (the rollouts are imported: no job)
    versions = pd.read_csv(res / "versions.tsv", sep="\t", keep_default_na=False)
    assert versions.groupby("rule", sort=False).size().to_dict() == {
        "toy_model": 1,
        "train": len(LABELS + REPLICATES),
        "evaluate": 1 + len(LABELS),
        "lmc": len(list((res / "lmc").glob("*/*/*/*.tsv"))),
        "base_spectrum": 1,
    }
    assert set(versions["python"]) == {platform.python_version()} and set(versions["differs"]) == {""}
    assert json.loads((res / "versions" / "train" / "dpo" / "seed2.json").read_text())["command"] == "train"
    # every rule wrote a log and a benchmark
    assert (res / "logs" / "train" / "dpo" / "seed2.log").exists()
    assert (res / "benchmarks" / "train" / "dpo" / "seed2.tsv").exists()


@pytest.mark.slow
def test_immediate_rerun_schedules_nothing(study):
    run = snakemake(study, "-n")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Nothing to be done" in run.stdout + run.stderr


def result_targets(results: Path) -> list[str]:
    """Every file under ``results/`` as a target name (logs, benchmarks and the content-keyed caches of
    factors and base SVDs aside: no rule's output): a file inside a directory output (adapters, the toy
    world and models; Snakemake marks them with .snakemake_timestamp) by that directory."""
    targets = set()
    for path in results.rglob("*"):
        rel = path.relative_to(results)
        if not path.is_file() or rel.parts[0] in ("logs", "benchmarks", "cache"):
            continue
        owner = next((d for d in reversed(rel.parents) if (results / d / ".snakemake_timestamp").exists()), rel)
        targets.add(str(Path("results") / owner))
    return sorted(targets)


@pytest.mark.slow
def test_every_result_file_is_a_declared_output(study):
    """Each file the study wrote can be asked for by name: some rule declares it (one dry run for all)."""
    targets = result_targets(study / "results")
    assert len(targets) > 80 and "results/geometry/adapters.tsv" in targets and "results/adapters/sft/seed1" in targets
    assert ALL_FIGURES | GEOMETRY_TABLES <= set(targets)  # a figure or table the study stopped writing would pass below
    run = snakemake(study, "-n", *targets)
    assert "No rule to produce" not in run.stdout + run.stderr, (run.stdout + run.stderr)[-2000:]
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Nothing to be done" in run.stdout + run.stderr


AGGREGATES = (
    {
        "results/eval/accuracy.tsv",
        "results/eval/pairwise.tsv",
        "results/eval/cochran.json",
        "results/cka/cka.tsv",
        "results/claims.tsv",
        "results/claims.html",
        "results/versions.tsv",
        "results/versions.html",
        "results/versions/base_spectrum.json",  # the base spectrum reads every adapter: its job reruns
    }
    | {f"results/behaviour/{n}.tsv" for n in ("pass_at_k", "kl", "forgetting", "pairwise", "forgetting_vs_kl")}
    | GEOMETRY_TABLES
    | ALL_FIGURES
)


@pytest.mark.slow
def test_changing_one_learning_rate_reruns_that_method_and_the_aggregates_only(study, tmp_path):
    changed = with_config(tmp_path, lambda c: c["methods"]["rift"].update(learning_rate=5e-3))
    planned = planned_outputs(snakemake(study, "-n", configfile=changed))
    expected = AGGREGATES | {"results/lmc/summary.tsv", "results/lmc/curves.tsv"}
    for seed in (1, 2):
        expected |= {
            f"results/adapters/rift/seed{seed}",
            f"results/eval/rift/seed{seed}.parquet",
            f"results/activations/rift/seed{seed}.npz",
            f"results/samples/rift/seed{seed}.parquet",
            f"results/heldout/rift/seed{seed}.parquet",
            f"results/versions/train/rift/seed{seed}.json",
            f"results/versions/evaluate/rift/seed{seed}.json",
        }
    # its data-order replicate
    expected |= {"results/adapters/rift/seed1data5", "results/versions/train/rift/seed1data5.json"}
    # LMC pairs that read rift: sft/seed1 -> rift/seed1 (reference policy) and rift's seed pair
    for pair in ("sft/seed1/rift/seed1", "rift/seed1/rift/seed2"):
        expected |= {f"results/lmc/{pair}.tsv", f"results/versions/lmc/{pair}.json"}
    assert planned == expected


@pytest.mark.slow
def test_adding_a_seed_schedules_only_its_adapters_and_the_aggregates(study, tmp_path):
    changed = with_config(tmp_path, lambda c: c.update(seeds=[1, 2, 3]))
    planned = planned_outputs(snakemake(study, "-n", configfile=changed))
    expected = AGGREGATES - CONNECTIVITY_FIGURES  # seed 3 is in no LMC pair: the sweeps and their figures stand
    for m in ("sft", "rft", "dft", "rift", "grpo", "dpo"):
        expected |= {
            f"results/adapters/{m}/seed3",
            f"results/eval/{m}/seed3.parquet",
            f"results/activations/{m}/seed3.npz",
            f"results/samples/{m}/seed3.parquet",
            f"results/heldout/{m}/seed3.parquet",
            f"results/versions/train/{m}/seed3.json",
            f"results/versions/evaluate/{m}/seed3.json",
        }
    assert planned == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    "module, planned", [("accuracy", ACCURACY_FIGURES), ("connectivity", CONNECTIVITY_FIGURES), ("common", ALL_FIGURES)]
)
def test_each_figure_rule_tracks_exactly_its_modules(study, module, planned):
    """An edited figure module reruns the figures of the rules that import it (common.py: all of them), no
    others (a dry run; the edit is undone after)."""
    code = study / "workflow_copy" / "src" / "lossgeom" / "figures" / f"{module}.py"
    text, before = code.read_text(), code.stat()
    code.write_text(text + "\n# an edit\n")  # content, not just mtime: Snakemake checksums small inputs
    try:
        assert planned_outputs(snakemake(study, "-n")) == planned
    finally:
        code.write_text(text)
        os.utime(code, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.slow
def test_editing_figure_code_reruns_figure_jobs_only(study):
    code = study / "workflow_copy" / "src" / "lossgeom" / "figures" / "geometry.py"
    code.write_text(code.read_text() + "\n# an edit\n")
    planned = planned_outputs(snakemake(study, "-n"))
    assert planned == GEOMETRY_FIGURES
    assert planned_outputs(snakemake(study, "--cores", "1")) == GEOMETRY_FIGURES
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake(study, "-n"))


@pytest.mark.slow
def test_report_holds_every_figure_and_the_claims_table(study):
    """`snakemake --report` builds, and every registered figure and the claims table are in it."""
    run = snakemake(study, "--report", "report.html", timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    html = (study / "report.html").read_text(errors="replace")
    for name in sorted(f for f in ALL_FIGURES if f.endswith(".png")):
        assert Path(name).name in html, f"{name} is not in the report"
    for table in (
        "claims.tsv",
        "claims.html",
        "noise_floor.tsv",
        "accuracy.tsv",
        "pairwise.tsv",
        "summary.tsv",
        "kl.tsv",
        "forgetting.tsv",
        "versions.tsv",
        "versions.html",
    ):
        assert table in html, f"{table} is not in the report"
    for category in (
        "Claims",
        "Geometry",
        "Geometry along training",
        "Geometry against the base",
        "Connectivity",
        "Representations",
        "Accuracy",
        "KL and forgetting",
        "Training",
        "Settings",
    ):
        assert category in html


@pytest.mark.heavy
def test_bad_config_stops_with_one_line_naming_the_key(tmp_path):
    bad = yaml.safe_load(TINY.read_text())
    bad["training"]["lr"] = 0.1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    run = snakemake(tmp_path, "-n", configfile=path, timeout=120)
    assert run.returncode != 0
    assert "config error: unknown key training.lr" in run.stdout + run.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.heavy
def test_unknown_method_loss_is_a_config_error(tmp_path):
    bad = yaml.safe_load(TINY.read_text())
    bad["methods"]["ppo"] = {"loss": "ppo"}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    run = snakemake(tmp_path, "-n", configfile=path, timeout=120)
    assert run.returncode != 0
    assert "methods.ppo.loss: 'ppo' is not one of" in run.stdout + run.stderr


EXTENDED = REPO / "config" / "extended.yaml"


@pytest.mark.heavy
def test_extended_config_dry_runs_with_every_method(tmp_path):
    """CI: the extended study (contrastive family, online GRPO, LR variants) plans every adapter and the
    same downstream stages as the default, with no special cases."""
    planned = planned_outputs(snakemake(tmp_path, "-n", configfile=EXTENDED, timeout=300))
    methods = yaml.safe_load(EXTENDED.read_text())["methods"]
    for m in methods:
        for s in (42, 123):
            assert f"results/adapters/{m}/seed{s}" in planned, m
            assert f"results/eval/{m}/seed{s}.parquet" in planned and f"results/activations/{m}/seed{s}.npz" in planned
        assert f"results/adapters/{m}/seed42data7" in planned
    assert {
        "results/claims.tsv",
        "results/geometry/cosine_global.tsv",
        "results/lmc/online_grpo/seed42/online_grpo/seed123.tsv",
    } <= planned


def tiny_extended(tmp_path: Path) -> Path:
    """The tiny test config with config/extended.yaml's methods, online GRPO scaled to its 4 steps."""
    methods = yaml.safe_load(EXTENDED.read_text())["methods"]
    methods["online_grpo"].update(steps=4, save_steps=[2, 4], analysis_step=2, checkpoint_every=2, max_new_tokens=8)
    methods["dpo"]["learning_rate"] = 1.0e-3
    methods["sft_lr10x"]["learning_rate"] = 1.0e-1  # 10x the tiny config's 1e-2
    methods["sft_lr0p1x"]["learning_rate"] = 1.0e-3
    return with_config(tmp_path, lambda c: c.update(methods=methods))


@pytest.mark.slow
def test_tiny_extended_study_runs_end_to_end(tmp_path):
    """Every new method trains and flows through geometry, evaluation, LMC, CKA and the claims table."""
    config = tiny_extended(tmp_path)
    workdir = tmp_path / "ext"
    workdir.mkdir()
    copy_workflow(workdir)
    write_rollouts(workdir)
    run = snakemake(workdir, "--cores", "2", configfile=config, timeout=1800)
    assert run.returncode == 0, run.stderr[-4000:]
    res = workdir / "results"
    methods = list(yaml.safe_load(config.read_text())["methods"])
    cos = pd.read_csv(res / "geometry" / "cosine_global.tsv", sep="\t", index_col=0)
    assert [f"{m}/seed{s}" for m in methods for s in (1, 2)] == list(cos.index)[: 2 * len(methods)]
    acc = pd.read_csv(res / "eval" / "accuracy.tsv", sep="\t")
    cka = pd.read_csv(res / "cka" / "cka.tsv", sep="\t")
    for m in ("ipo", "simpo", "kto", "online_grpo", "sft_lr10x"):
        assert (res / "lmc" / "sft" / "seed1" / m / "seed1.tsv").exists(), m  # lmc.pairs: reference (sft first)
        assert acc.astype(str).apply(lambda col: col.str.contains(f"{m}/seed1")).any().any(), m
        assert ((cka["model_a"] == f"{m}/seed1") | (cka["model_b"] == f"{m}/seed1")).any(), m
    metrics = pd.read_csv(res / "adapters" / "online_grpo" / "seed1" / "metrics.tsv", sep="\t")
    assert {"reward", "accuracy"} <= set(metrics.columns) and len(metrics) == 4
    claims = pd.read_csv(res / "claims.tsv", sep="\t").set_index("claim_id")
    assert claims.loc["lr10x", "verdict"] != "not run"
    # the random tiny base rarely earns a reward, so online GRPO's update may be zero: then its row says why
    assert claims.loc["online_grpo", "verdict"] != "not run" or "zero update" in claims.loc["online_grpo", "this_run"]
