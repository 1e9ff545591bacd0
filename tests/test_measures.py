"""The measure registry (lossgeom.measures): discovery, the evaluation job's spec and its checks, and the
settings that rerun only the statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lossgeom import config as cfg
from lossgeom.errors import InputError
from lossgeom.measures import MEASURES, SECTIONS, check_spec, describe_settings, evaluation_spec, job_settings
from lossgeom.measures.base import stats_keys

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def filled():
    return cfg.with_defaults(cfg.load(ROOT / "config" / "config.yaml", SCHEMA))


PORTED = ["activations", "accuracy", "heldout", "samples"]  # the study's measures, in the job's order


def test_the_registry_holds_every_module_that_defines_measure():
    modules = {p.stem for p in (ROOT / "src" / "lossgeom" / "measures").glob("*.py")} - {"__init__", "base"}
    assert set(MEASURES) == modules and set(PORTED) <= modules
    assert [m for m in MEASURES if m in PORTED] == PORTED
    assert [m.order for m in MEASURES.values()] == sorted(m.order for m in MEASURES.values())
    assert SECTIONS == {m.section: m.Settings for m in MEASURES.values()}


def test_the_config_schema_takes_each_measure_s_section_from_its_module():
    schema = cfg.load_schema(SCHEMA)
    for measure in MEASURES.values():
        assert schema["properties"][measure.section] == measure.Settings.object_schema()
    bad = {**cfg.load(ROOT / "config" / "config.yaml", SCHEMA), "behaviour": {"n": 0}}
    with pytest.raises(cfg.ConfigError, match="behaviour.n"):
        cfg.validate(bad, SCHEMA)


def test_a_statistics_setting_is_not_in_the_evaluation_spec(filled):
    """Editing behaviour.k or evaluation.ci reruns the statistics, not the 17 evaluations."""
    spec = evaluation_spec(filled)
    assert set(PORTED) <= set(spec["measures"])
    assert set(stats_keys(MEASURES["samples"].Settings)) == {"k", "n_boot", "ci"}
    assert not {"k", "n_boot", "ci"} & set(spec["measures"]["samples"])
    assert set(spec["measures"]["accuracy"]) == {"max_new_tokens", "batch_size"}
    edited = {**filled, "behaviour": {**filled["behaviour"], "k": [1, 2]}, "evaluation": {**filled["evaluation"], "ci": "bootstrap"}}  # fmt: skip
    assert json.dumps(evaluation_spec(edited), sort_keys=True) == json.dumps(spec, sort_keys=True)
    edited = {**filled, "behaviour": {**filled["behaviour"], "n": 4}}
    assert evaluation_spec(edited) != spec
    for m in MEASURES.values():
        assert set(job_settings(m, filled)) | set(stats_keys(m.Settings)) == set(filled[m.section])


def test_forgetting_off_drops_its_measure(filled):
    off = {**filled, "forgetting": {**filled["forgetting"], "source": None}}
    assert "heldout" not in evaluation_spec(off)["measures"]
    assert MEASURES["samples"].stats_reads(off) == ("samples",)
    assert MEASURES["samples"].stats_reads(filled) == ("samples", "heldout", "adapters")


def test_the_spec_is_checked_and_filled(filled):
    spec = evaluation_spec(filled)
    checked = check_spec(json.loads(json.dumps(spec)))
    assert checked["measures"]["samples"]["k"] == (1, 2, 4, 8, 16)  # a statistics key, filled at its default
    unset = {**spec, "measures": {"activations": {"test_set": None}}}
    assert check_spec(unset)["measures"]["activations"]["test_set"] == "toy"  # the first test set
    cases = [
        ({**spec, "extra": 1}, r"--spec: expected the keys measures, model, test_sets"),
        ({**spec, "measures": {"nope": {}}}, r"unknown measure 'nope'"),
        ({**spec, "measures": {"samples": {"n": 0}}}, r"--spec measures.samples.n: 0 is less than the minimum of 1"),
        ({**spec, "measures": {"samples": {"bogus": 1}}}, r"--spec measures.samples: Additional properties"),
        ({**spec, "measures": {"samples": {"test_set": "gsm8k"}}}, r"behaviour.test_set 'gsm8k' is not one of"),
        ({**spec, "model": {"dtype": "float32"}}, r"--spec model: 'prompt_template' is a required property"),
    ]
    for bad, message in cases:
        with pytest.raises(InputError, match=message):
            check_spec(bad)


def test_evaluate_help_lists_every_measure_s_settings_with_their_docs():
    text = describe_settings()
    for m in MEASURES.values():
        assert f"measures.{m.name} (config section {m.section!r}):" in text
        for key, prop in m.Settings.schema().items():
            assert f"  {key}: {prop['description']}" in text
    assert "  k: the k of pass@k reported (each at most n) (its statistics only)" in text


def test_a_measure_module_is_found_by_its_measure_and_a_misspelt_one_stops(tmp_path, monkeypatch):
    """The registry's rule (lossgeom.registry): MEASURE makes a module a measure; a named Measure subclass
    without it (a misspelt MEASURE) and one name in two modules stop the import."""
    from lossgeom.measures import _discover

    head = "from lossgeom.measures.base import Measure\n\n\nclass Mine(Measure):\n    name = 'mine'\n    order = 5\n"
    shared = "from lossgeom.measures.base import Measure\n\n\nclass Base(Measure):\n    pass\n"
    monkeypatch.syspath_prepend(str(tmp_path))

    def package(name, modules):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
        for module, source in modules.items():
            (tmp_path / name / f"{module}.py").write_text(source)
        return name, [str(tmp_path / name)]

    good = package("scratch_measures_good", {"shared": shared, "mine": head + "\n\nMEASURE = Mine()\n"})
    assert list(_discover(*good)) == ["mine"]
    misspelt = package("scratch_measures_misspelt", {"mine": head + "\n\nMEASURES = Mine()\n"})
    with pytest.raises(RuntimeError, match=r"defines the measure class\(es\) \['Mine'\] but no MEASURE"):
        _discover(*misspelt)
    twice = package(
        "scratch_measures_twice", {"one": head + "\n\nMEASURE = Mine()\n", "two": head + "\n\nMEASURE = Mine()\n"}
    )
    with pytest.raises(RuntimeError, match=r"measure 'mine' is defined twice \(modules one and two\)"):
        _discover(*twice)
