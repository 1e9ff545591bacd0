"""Tests of lossgeom.labels: one label type, parsed and formatted in one place."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from lossgeom.geometry import label_for_dir
from lossgeom.labels import Label, step_dir

METHOD_CHARS = "abcxyzABZ019_-"


def _random_labels(n: int, seed: int = 0) -> list[Label]:
    """Seeded labels over the whole alphabet of method names (names like "seed", "data", "-", "0"
    included: the parser must not read them as seed parts) and seeds with many digit counts."""
    rng = random.Random(seed)
    words = ["seed", "data", "seed1", "data7", "sft_data", "seedless", "step3"]

    def method():
        if rng.random() < 0.3:
            return rng.choice(words)
        return "".join(rng.choice(METHOD_CHARS) for _ in range(rng.randint(1, 12)))

    def seed_():
        return rng.choice([0, 1, 7, 42, 123, rng.randrange(10 ** rng.randint(1, 12))])

    return [Label(method(), seed_(), seed_() if rng.random() < 0.4 else None) for _ in range(n)]


@pytest.mark.parametrize(
    "text, want",
    [
        ("sft/seed42", Label("sft", 42)),
        ("sft/seed42data7", Label("sft", 42, 7)),
        ("offline_grpo/seed0", Label("offline_grpo", 0)),
        ("dpo-lr5e-6/seed123", Label("dpo-lr5e-6", 123)),
        ("seed1/seed2", Label("seed1", 2)),
        ("data/seed0data0", Label("data", 0, 0)),
        ("sft_data/seed10data100", Label("sft_data", 10, 100)),
    ],
)
def test_parse_known_labels(text, want):
    got = Label.parse(text)
    assert got == want and str(got) == text


def test_round_trips_over_many_labels():
    labels = _random_labels(2000)
    assert sum(l.is_replicate for l in labels) > 500  # both forms are covered
    for label in labels:
        assert Label.parse(str(label)) == label
        assert str(Label.parse(str(label))) == str(label)


def test_properties_state_the_conventions():
    plain, rep = Label("sft", 42), Label("sft", 42, 7)
    assert (plain.init_seed, plain.data_order_seed, plain.is_replicate) == (42, 42, False)
    assert (rep.init_seed, rep.data_order_seed, rep.is_replicate) == (42, 7, True)
    assert plain.dir_name == "seed42" and rep.dir_name == "seed42data7"
    assert plain != rep and len({plain, rep, Label("sft", 42)}) == 2  # frozen: hashable, compared by value
    with pytest.raises(AttributeError):
        plain.seed = 1


@pytest.mark.parametrize(
    "text",
    [
        "sft",
        "sft/42",
        "sft/seed",
        "sft/seedx",
        "/seed1",
        "a/b/seed1",
        "sft/seed1/x",
        "sft/seed-1",
        "sft/seed+1",
        "sft/seed1data",
        "sft/seed1data-2",
        "sft/seed1data2data3",
        "sft/seed 1",
        " sft/seed1",
        "sft/seed1 ",
        "sft/seed1\n",  # "$" of the old pattern matched before a final newline
        "sft/seed042",
        "sft/seed1data07",  # not what f"{n}" writes: would name a directory no job writes
        "sft/seed١",  # a non-ASCII digit, which "\d" matched and int() read as 1
        "my.method/seed1",
        "sft/Seed1",
        "sft/seed1step2",
        "",
        "sft/seed1/step2",
    ],
)
def test_bad_labels_give_one_error_naming_the_text_and_both_forms(text):
    with pytest.raises(ValueError) as e:
        Label.parse(text)
    msg = str(e.value)
    assert repr(text) in msg and "'{method}/seed<N>'" in msg and "'{method}/seed<N>data<M>'" in msg
    assert Label.try_parse(text) is None


def test_try_parse_tolerates_what_is_not_a_label():
    assert Label.try_parse("base") is None and Label.try_parse(42) is None
    assert Label.try_parse("sft/seed1data5") == Label("sft", 1, 5)


def test_method_and_seed_part_of_any_model_name():
    assert Label.method_of("sft_lr10x/seed42") == "sft_lr10x" and Label.method_of("sft/seed42data7") == "sft"
    assert Label.dir_name_of("sft/seed42") == "seed42" and Label.dir_name_of("sft/seed42data7") == "seed42data7"
    # what is not a label (the base, a directory's own name, a saved step's "label@step") is its own method
    for name in ("base", "my.dir", "sft/seed42@25", "sft/seed042"):
        assert Label.method_of(name) == name and Label.dir_name_of(name) == ""


@pytest.mark.parametrize(
    "fields",
    [
        ("my.method", 1),
        ("", 1),
        ("a/b", 1),
        ("sft", -1),
        ("sft", 1.0),
        ("sft", True),
        ("sft", "1"),
        ("sft", 1, -3),
        ("sft", 1, 2.5),
    ],
)
def test_fields_are_checked_so_every_label_formats_to_a_parsable_text(fields):
    with pytest.raises(ValueError, match="adapter label"):
        Label(*fields)


def test_numpy_integers_are_plain_ints():
    label = Label("sft", np.int64(42), np.int32(7))
    assert type(label.seed) is int and type(label.data_seed) is int and label == Label("sft", 42, 7)
    assert repr(label) == "Label(method='sft', seed=42, data_seed=7)"


def test_adapter_and_step_directories(tmp_path):
    assert Label("sft", 42).adapter_dir("results") == Path("results/adapters/sft/seed42")
    rep = Label("sft", 42, 7)
    assert rep.adapter_dir(tmp_path) == tmp_path / "adapters" / "sft" / "seed42data7"
    assert rep.adapter_dir(tmp_path, step=6) == tmp_path / "adapters" / "sft" / "seed42data7" / "step6"
    assert step_dir(tmp_path / "x", 0) == tmp_path / "x" / "step0"
    with pytest.raises(ValueError, match="step"):
        step_dir(tmp_path, -1)


def _study_layout(root) -> list[Label]:
    """A results tree as the workflow writes it: adapters of two seeds and a data-order replicate of
    each method, each with a saved step below it."""
    labels = [Label(m, s) for m in ("sft", "dpo_data", "seedy") for s in (1, 2)]
    labels += [Label(m, 1, 5) for m in ("sft", "dpo_data", "seedy")]
    for label in labels:
        d = label.adapter_dir(root)
        (d / "step4").mkdir(parents=True)
        (d / "adapter_config.json").write_text("{}")
    return labels


def test_from_dir_reads_every_adapter_directory_back_to_its_label(tmp_path):
    labels = _study_layout(tmp_path / "results")
    found = sorted((tmp_path / "results" / "adapters").glob("*/*"))
    assert len(found) == len(labels)
    assert {Label.from_dir(d) for d in found} == set(labels)
    for label in labels:
        d = label.adapter_dir(tmp_path / "results")
        assert Label.from_dir(d) == label
        assert Label.from_dir(f"{d}/") == label  # a trailing slash, as a shell completes it
        assert label_for_dir(d) == str(label)


def test_from_dir_of_a_relative_path(tmp_path, monkeypatch):
    _study_layout(tmp_path / "results")
    monkeypatch.chdir(tmp_path / "results" / "adapters" / "sft" / "seed1data5")
    assert Label.from_dir(".") == Label("sft", 1, 5)
    assert Label.from_dir("../seed2") == Label("sft", 2)


def test_replicate_directories_get_their_label(tmp_path):
    """The case ``label_for_dir`` got wrong: it matched only ``seed-?\\d+`` directory names, so
    ``.../sft/seed1data5`` became the label ``"seed1data5"`` (the noise floor then counted it as a
    method of its own, and two methods' replicates collided as duplicate labels)."""
    labels = _study_layout(tmp_path / "results")
    reps = [l for l in labels if l.is_replicate]
    got = [label_for_dir(l.adapter_dir(tmp_path / "results")) for l in reps]
    assert got == ["sft/seed1data5", "dpo_data/seed1data5", "seedy/seed1data5"]
    assert len(set(got)) == len(got)


def test_from_dir_rejects_what_is_no_adapter_directory_and_label_for_dir_falls_back_to_the_name(tmp_path):
    labels = _study_layout(tmp_path / "results")
    step = labels[0].adapter_dir(tmp_path / "results", step=4)
    for d in (step, tmp_path / "results" / "adapters", tmp_path / "my.method" / "seed1", tmp_path / "m" / "seed-1"):
        with pytest.raises(ValueError, match="is not an adapter directory"):
            Label.from_dir(d)
    assert label_for_dir(step) == "step4"
    assert label_for_dir(tmp_path / "adapters_x") == "adapters_x"


def test_from_dir_keeps_the_name_of_a_linked_adapter_directory(tmp_path):
    """The study's name of an adapter, not the name of the directory a link points to (the old
    ``label_for_dir`` resolved links)."""
    store = tmp_path / "store" / "blob" / "abc123"
    store.mkdir(parents=True)
    link = tmp_path / "results" / "adapters" / "sft" / "seed1"
    link.parent.mkdir(parents=True)
    link.symlink_to(store, target_is_directory=True)
    assert Label.from_dir(link) == Label("sft", 1) and label_for_dir(link) == "sft/seed1"
