"""Tests of lossgeom.behaviour.heldout (the forgetting measure's held-out text) against independent references.

What is checked against what:

* ``load_heldout`` on the toy source: the heldout problems read straight from the toy world's
  ``problems/heldout.jsonl`` with ``json`` (id, question as prompt, the solution in each of the three
  styles written out by hand: ``#### <answer>``, ``solution``, ``verbose_solution``), ``limit`` and
  the ``split`` key honoured; no toy directory and an unknown split stop.
* ``.txt`` files: paragraphs recomputed with a hand-written splitter over ``str.split("\\n")``
  (several blank lines, whitespace-only lines, trailing whitespace, leading blank lines, CRLF, no final
  newline); ``min_chars`` and ``limit``; ids ``{stem}-{split}-{paragraph index}``; non-UTF-8 bytes
  (the file and line number named) and a missing file stop with ``HeldoutTextError``.
* ``.jsonl`` / ``.csv`` / ``.parquet`` files written with json / pandas: text and ``prompt_field``
  columns, ids keep the raw row index after filtering; a missing text or prompt field names the key
  and lists the columns; missing cells are skipped, not scored as the text "nan"/"None".
* saved ``datasets`` directories (``Dataset.save_to_disk`` and a ``DatasetDict`` with splits),
  WikiText-shaped (empty rows, `` = Title = `` headings): rows compared with the dataset read back by
  ``datasets.load_from_disk``; the split honoured, an unknown split named in the error.
* ``heldout_sequences`` with the toy tokenizer: prompt items against the chat template applied by
  hand (``apply_chat_template`` + the text's tokens + EOS) and ``prompt_completion``; plain items
  against ``tokenizer(text, add_special_tokens=False)``; the ``max_length`` cut.
* ``heldout_ce`` through the HF engine against a float64 recomputation with the transformers model
  (per item, the mean NLL of the masked tokens after position 0, ``log_softmax`` in float64) to 1e-5;
  batch sizes 1, 3 and 8 agree; an item with nothing to score is named in the error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lossgeom.behaviour.heldout import HeldoutTextError, heldout_ce, heldout_sequences
from lossgeom.behaviour.heldout import load_heldout as _load_filled
from lossgeom.measures.heldout import ForgettingSettings

TEMPLATE = "{question}\nAnswer briefly."


# -- references -----------------------------------------------------------------------------------


def _heldout_rows(toy_world: Path, split: str = "heldout") -> list[dict]:
    path = toy_world / "problems" / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text().split("\n") if line.strip()]


def _style_text(row: dict, style: str) -> str:
    return {"direct": f"#### {row['answer']}", "terse": row["solution"], "verbose": row["verbose_solution"]}[style]


def _paragraphs_by_hand(text: str) -> list[str]:
    """Paragraphs of a text: maximal runs of lines that are not blank, lines kept as written."""
    out, cur = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip() == "":
            if cur:
                out.append("\n".join(cur))
            cur = []
        else:
            cur.append(line)
    if cur:
        out.append("\n".join(cur))
    return out


@pytest.fixture(scope="module")
def tok(toy_world):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(toy_world / "tokenizer"))
    if t.pad_token is None:
        t.pad_token = t.eos_token
    return t


# -- settings -------------------------------------------------------------------------------------


def test_forgetting_defaults_are_the_documented_ones():
    d = ForgettingSettings.defaults()
    assert d["source"] is None and d["split"] is None and d["text_field"] == "text"
    assert d["prompt_field"] is None and d["style"] == "direct"
    assert (d["min_chars"], d["limit"], d["max_length"]) == (1, 200, 512)


def test_no_source_stops():
    with pytest.raises(HeldoutTextError, match="forgetting.source is not set"):
        load_heldout({})
    with pytest.raises(HeldoutTextError, match="forgetting.source is not set"):
        load_heldout({"source": None, "split": "heldout"})


# -- toy ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["direct", "terse", "verbose"])
def test_toy_items_are_the_heldout_problems_in_the_style(toy_world, style):
    rows = _heldout_rows(toy_world)
    assert len(rows) == 200  # conftest's TINY_TOY leaves n_heldout at its default
    df = load_heldout({"source": "toy", "split": "heldout", "style": style}, toy_world)
    assert list(df.columns) == ["id", "prompt", "text"]
    assert len(df) == 200  # the default limit is 200, every problem kept
    assert df["id"].tolist() == [r["id"] for r in rows] == [f"toy-heldout-{i}" for i in range(200)]
    assert df["prompt"].tolist() == [r["question"] for r in rows]
    assert df["text"].tolist() == [_style_text(r, style) for r in rows]


@pytest.mark.parametrize("limit", [1, 7, 64, 500])
def test_toy_limit_keeps_the_first_items(toy_world, limit):
    rows = _heldout_rows(toy_world)
    df = load_heldout({"source": "toy", "split": "heldout", "limit": limit}, toy_world)
    n = min(limit, len(rows))
    assert df["id"].tolist() == [r["id"] for r in rows[:n]]
    assert df["text"].tolist() == [f"#### {r['answer']}" for r in rows[:n]]
    assert df.index.tolist() == list(range(n))


def test_toy_split_is_honoured(toy_world):
    test_rows = _heldout_rows(toy_world, "test")
    df = load_heldout({"source": "toy", "split": "test", "style": "terse"}, toy_world)
    assert df["id"].tolist() == [r["id"] for r in test_rows]
    assert df["text"].tolist() == [r["solution"] for r in test_rows]


def test_toy_errors(toy_world):
    with pytest.raises(HeldoutTextError, match="toy world's directory"):
        load_heldout({"source": "toy", "split": "heldout"})
    with pytest.raises(HeldoutTextError, match="forgetting.source"):
        load_heldout({"source": "toy", "split": "nosuchsplit"}, toy_world)


# -- .txt -----------------------------------------------------------------------------------------

TXT_CASES = {
    "plain": "one two\nthree\n\nfour five\n",
    "many_blank_lines": "\n\n\nfirst para line 1\nline 2   \n\n\n\n   \n\t\nsecond\n\n\nthird para\nhas\nthree",
    "crlf": "alpha\r\nbeta\r\n\r\ngamma  \r\n\r\n\r\ndelta",
    "no_trailing_newline": "x\n\ny y y",
    "single": "only one paragraph here",
    "leading_spaces": "   indented line\n  second\n\n  \n  another   ",
}


@pytest.mark.parametrize("name", sorted(TXT_CASES))
def test_txt_paragraphs(tmp_path, name):
    text = TXT_CASES[name]
    path = tmp_path / f"{name}.txt"
    path.write_bytes(text.encode())
    expected = _paragraphs_by_hand(text)
    df = load_heldout({"source": str(path), "split": "s"})
    assert df["text"].tolist() == expected
    assert df["id"].tolist() == [f"{name}-s-{i}" for i in range(len(expected))]
    assert df["prompt"].isna().all()


def test_txt_min_chars_and_limit_keep_raw_paragraph_index_in_ids(tmp_path):
    paras = ["short", "a much longer paragraph\nwith two lines", "mid size!", "  tiny  ", "another long paragraph here"]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paras) + "\n")
    for min_chars in (1, 6, 9, 10, 30):
        for limit in (1, 2, 10):
            df = load_heldout({"source": str(path), "min_chars": min_chars, "limit": limit})
            keep = [(i, p) for i, p in enumerate(paras) if len(p.strip()) >= min_chars][:limit]
            if not keep:
                continue
            assert df["text"].tolist() == [p for _, p in keep], (min_chars, limit)
            assert df["id"].tolist() == [f"corpus-test-{i}" for i, _ in keep]
    with pytest.raises(HeldoutTextError, match="no text of at least 100 characters"):
        load_heldout({"source": str(path), "min_chars": 100})


def test_txt_not_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine line\n\nanother fine one\nbroken \xff\xfe here\n")
    with pytest.raises(HeldoutTextError) as e:
        load_heldout({"source": str(path)})
    assert f"{path}:4" in str(e.value) and "UTF-8" in str(e.value)


def test_txt_missing_or_blank_file(tmp_path):
    with pytest.raises(HeldoutTextError, match="does not exist"):
        load_heldout({"source": str(tmp_path / "nope.txt")})
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n")
    with pytest.raises(HeldoutTextError, match="no text"):
        load_heldout({"source": str(blank)})


def test_txt_with_prompt_field_stops(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a\n\nb\n")
    with pytest.raises(HeldoutTextError, match="forgetting.prompt_field 'q'") as e:
        load_heldout({"source": str(path), "prompt_field": "q"})
    assert "['text']" in str(e.value)


# -- tabular files --------------------------------------------------------------------------------


def _write_table(df: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in df.to_dict("records")))
    elif path.suffix == ".csv":
        df.to_csv(path, index=False)
    else:
        df.to_parquet(path, index=False)


RECORDS = pd.DataFrame(
    {
        "body": [
            "The first passage.",
            "x",
            "Second, longer passage with, commas.",
            "ok ok ok",
            "fourth text\nmultiline",
        ],
        "question": ["What is one?", "Q2", "What is three?", "Q4?", "Q5"],
        "other": [1, 2, 3, 4, 5],
    }
)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
@pytest.mark.parametrize("with_prompt", [False, True])
@pytest.mark.parametrize("min_chars,limit", [(1, 200), (5, 200), (5, 2), (20, 1)])
def test_tabular_files(tmp_path, suffix, with_prompt, min_chars, limit):
    path = tmp_path / f"held{suffix}"
    _write_table(RECORDS, path)
    spec = {"source": str(path), "split": "validation", "text_field": "body", "min_chars": min_chars, "limit": limit}
    if with_prompt:
        spec["prompt_field"] = "question"
    df = load_heldout(spec)
    keep = [i for i, t in enumerate(RECORDS["body"]) if len(t.strip()) >= min_chars][:limit]
    assert df["id"].tolist() == [f"held-validation-{i}" for i in keep]
    assert df["text"].tolist() == [RECORDS["body"][i] for i in keep]
    if with_prompt:
        assert df["prompt"].tolist() == [RECORDS["question"][i] for i in keep]
    else:
        assert df["prompt"].isna().all()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_tabular_missing_fields_name_the_key_and_columns(tmp_path, suffix):
    path = tmp_path / f"held{suffix}"
    _write_table(RECORDS, path)
    with pytest.raises(HeldoutTextError) as e:
        load_heldout({"source": str(path)})  # text_field defaults to "text"
    msg = str(e.value)
    assert "forgetting.text_field 'text'" in msg and "['body', 'question', 'other']" in msg
    with pytest.raises(HeldoutTextError) as e:
        load_heldout({"source": str(path), "text_field": "body", "prompt_field": "prompt"})
    msg = str(e.value)
    assert "forgetting.prompt_field 'prompt'" in msg and "['body', 'question', 'other']" in msg


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_tabular_missing_text_cells_are_skipped_not_scored(tmp_path, suffix):
    """An empty or null text cell (CSV reads "" as NaN, JSON null, parquet null) is no text: it must not
    become the literal text "nan" or "None" (what ``astype(str)`` gives under pandas 2)."""
    path = tmp_path / f"gaps{suffix}"
    df = pd.DataFrame({"text": ["first text", None, "", "third text"]})
    _write_table(df, path)
    out = load_heldout({"source": str(path)})
    assert out["text"].tolist() == ["first text", "third text"]
    assert out["id"].tolist() == ["gaps-test-0", "gaps-test-3"]


def test_missing_tabular_file(tmp_path):
    for suffix in (".jsonl", ".csv", ".parquet"):
        with pytest.raises(HeldoutTextError, match="does not exist"):
            load_heldout({"source": str(tmp_path / f"none{suffix}")})


def test_unreadable_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(HeldoutTextError, match=r"bad.jsonl:2"):
        load_heldout({"source": str(path)})


# -- saved datasets -------------------------------------------------------------------------------

WIKI_ROWS = [
    "",
    " = Valkyria Chronicles III = \n",
    "",
    " Senjō no Valkyria 3 : Unrecorded Chronicles is a tactical role @-@ playing video game . \n",
    " The game began development in 2010 , carrying over a large portion of the work . \n",
    "",
    " = = Gameplay = = \n",
    "",
    " As with previous games , the player takes control of a squad . \n",
    "",
    "",
    " = = = Plot = = = \n",
    " x \n",
]


def _wiki_reference(rows, min_chars, limit, stem, split):
    keep = [(i, r) for i, r in enumerate(rows) if len(r.strip()) >= min_chars][:limit]
    return [f"{stem}-{split}-{i}" for i, _ in keep], [r for _, r in keep]


def test_saved_dataset_wikitext_shape(tmp_path):
    import datasets

    d = tmp_path / "wikitext_small"
    datasets.Dataset.from_dict({"text": WIKI_ROWS}).save_to_disk(str(d))
    back = datasets.load_from_disk(str(d))["text"]
    assert back == WIKI_ROWS
    for min_chars, limit in [(1, 200), (2, 200), (25, 200), (1, 3)]:
        df = load_heldout({"source": str(d), "min_chars": min_chars, "limit": limit})
        ids, texts = _wiki_reference(back, min_chars, limit, str(d), "test")
        assert df["text"].tolist() == texts
        assert df["id"].tolist() == ids
        assert "" not in df["text"].tolist()  # WikiText's empty rows never scored
    # min_chars 1 keeps the headings and the one-char row; 2 drops " x "
    assert len(load_heldout({"source": str(d)})) == 7
    assert len(load_heldout({"source": str(d), "min_chars": 2})) == 6


def test_saved_dataset_dict_split_honoured(tmp_path):
    import datasets

    d = tmp_path / "dd"
    train = ["train text one", "", " = Head = \n", "train text two"]
    test = ["", "test text only", ""]
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": train, "q": [f"tq{i}" for i in range(4)]}),
            "test": datasets.Dataset.from_dict({"text": test, "q": [f"sq{i}" for i in range(3)]}),
        }
    ).save_to_disk(str(d))
    df = load_heldout({"source": str(d), "split": "train"})
    assert df["text"].tolist() == ["train text one", " = Head = \n", "train text two"]
    assert df["id"].tolist() == [f"{d}-train-{i}" for i in (0, 2, 3)]
    df = load_heldout({"source": str(d), "split": "test", "prompt_field": "q"})
    assert df["text"].tolist() == ["test text only"] and df["prompt"].tolist() == ["sq1"]
    with pytest.raises(HeldoutTextError) as e:
        load_heldout({"source": str(d), "split": "validation"})
    assert "'validation'" in str(e.value) and "['test', 'train']" in str(e.value)
    with pytest.raises(HeldoutTextError, match="forgetting.text_field 'body'"):
        load_heldout({"source": str(d), "split": "train", "text_field": "body"})


# -- sequences ------------------------------------------------------------------------------------


def _chat_ids(tok, question: str, template: str) -> list[int]:
    msg = [{"role": "user", "content": template.replace("{question}", question)}]
    text = tok.apply_chat_template(msg, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def _items(toy_world, n_prompt=3, plain=("the cat sat", "12 + 30 = 42\n#### 42", "a")):
    rows = _heldout_rows(toy_world)[:n_prompt]
    prompts = [r["question"] for r in rows] + [None] * len(plain)
    texts = [r["solution"] for r in rows] + list(plain)
    return pd.DataFrame({"id": [f"it{i}" for i in range(len(texts))], "prompt": prompts, "text": texts})


def test_heldout_sequences_prompt_and_plain_items(toy_world, tok):
    from lossgeom.data.prompting import prompt_completion

    items = _items(toy_world)
    seqs, masks = heldout_sequences(tok, items, template=TEMPLATE, max_length=10_000)
    assert len(seqs) == len(masks) == len(items)
    for prompt, text, ids, mask in zip(items["prompt"], items["text"], seqs, masks):
        assert len(ids) == len(mask)
        if isinstance(prompt, str):
            p = _chat_ids(tok, prompt, TEMPLATE)
            c = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
            assert ids == p + c and ids[-1] == tok.convert_tokens_to_ids("<|im_end|>")
            assert mask == [0] * len(p) + [1] * len(c)
            assert (ids, mask) == tuple(prompt_completion(tok, prompt, text, TEMPLATE))
        else:
            assert ids == tok(text, add_special_tokens=False)["input_ids"]
            assert mask == [1] * len(ids)


@pytest.mark.parametrize("max_length", [2, 5, 40, 70, 90])
def test_heldout_sequences_max_length_cut(toy_world, tok, max_length):
    items = _items(toy_world)
    full, full_masks = heldout_sequences(tok, items, template=TEMPLATE, max_length=10_000)
    seqs, masks = heldout_sequences(tok, items, template=TEMPLATE, max_length=max_length)
    for f, fm, s, m in zip(full, full_masks, seqs, masks):
        assert s == f[:max_length] and m == fm[:max_length]
        assert len(s) == min(len(f), max_length)


def test_heldout_sequences_of_loaded_items(toy_world, tok):
    """Toy items (prompts) and text-file items (prompt None) from load_heldout feed heldout_sequences."""
    toy = load_heldout({"source": "toy", "split": "heldout", "limit": 4, "style": "verbose"}, toy_world)
    seqs, masks = heldout_sequences(tok, toy, template="{question}", max_length=512)
    rows = _heldout_rows(toy_world)[:4]
    for r, ids, mask in zip(rows, seqs, masks):
        p = _chat_ids(tok, r["question"], "{question}")
        c = tok(r["verbose_solution"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids == p + c and sum(mask) == len(c)


# -- cross-entropy --------------------------------------------------------------------------------


def _reference_ce(model_dir: Path, seqs, masks) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float64).eval()
    out = []
    with torch.no_grad():
        for ids, mask in zip(seqs, masks):
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()
            logp = torch.log_softmax(logits, dim=-1).numpy()
            nll = [-logp[t - 1, ids[t]] for t in range(1, len(ids)) if mask[t]]
            out.append(float(np.mean(nll)))
    return np.array(out)


@pytest.fixture(scope="module")
def mixed_items(toy_world):
    toy = _heldout_rows(toy_world)
    rows = [
        ("p0", toy[0]["question"], toy[0]["verbose_solution"]),
        ("t0", None, "5 + 7 = 12\n3 * 4 = 12\n#### 12"),
        ("p1", toy[1]["question"], f"#### {toy[1]['answer']}"),
        ("t1", None, "Dan has 5 books."),
        ("t2", None, "ab"),
        ("p2", toy[2]["question"], toy[2]["solution"]),
        ("t3", None, toy[3]["verbose_solution"] + "\n" + toy[4]["verbose_solution"]),
    ]
    return pd.DataFrame(rows, columns=["id", "prompt", "text"])


@pytest.mark.parametrize("cut", [False, True])
def test_heldout_ce_matches_float64_recomputation(tiny_base, tok, mixed_items, cut):
    from lossgeom.engines.backends import open_engine
    from lossgeom.engines.engine import GenerationSpec

    prompt_lens = [len(_chat_ids(tok, q, TEMPLATE)) for q in mixed_items["prompt"] if isinstance(q, str)]
    # cut: the longest prompt keeps 2 completion tokens, the others more; the long plain text is cut too
    max_length = max(prompt_lens) + 2 if cut else 256
    seqs, masks = heldout_sequences(tok, mixed_items, template=TEMPLATE, max_length=max_length)
    assert len({len(s) for s in seqs}) > 3  # different lengths in one batch
    ref = _reference_ce(tiny_base, seqs, masks)
    results = []
    for batch_size in (1, 3, 8):
        engine = open_engine(GenerationSpec(), str(tiny_base), batch_size=batch_size)
        try:
            out = heldout_ce(engine, mixed_items, template=TEMPLATE, max_length=max_length)
        finally:
            engine.close()
        assert list(out.columns) == ["id", "ce", "n_tokens"]
        assert out["id"].tolist() == mixed_items["id"].tolist()
        assert out["n_tokens"].tolist() == [sum(m[1:]) for m in masks]
        assert out["ce"].dtype == np.float64
        np.testing.assert_allclose(out["ce"].to_numpy(), ref, rtol=0, atol=1e-5)
        results.append(out["ce"].to_numpy())
    np.testing.assert_allclose(results[0], results[1], rtol=0, atol=1e-6)
    np.testing.assert_allclose(results[0], results[2], rtol=0, atol=1e-6)
    # a random model over a 320-token vocabulary: about log(320) nats per token, and not constant
    assert np.all(np.abs(ref - np.log(len(tok))) < 1.5) and np.ptp(ref) > 1e-3


def test_heldout_ce_counts_plain_items_without_the_first_token(tiny_base, tok):
    from lossgeom.engines.hf import HFEngine

    items = pd.DataFrame({"id": ["a", "b"], "prompt": [None, None], "text": ["one two three four", "hello"]})
    lens = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in items["text"]]
    assert min(lens) >= 2
    out = heldout_ce(HFEngine(str(tiny_base), batch_size=2), items, template="{question}", max_length=512)
    assert out["n_tokens"].tolist() == [n - 1 for n in lens]


def test_heldout_ce_nothing_to_score_names_the_item(tiny_base, tok, toy_world):
    from lossgeom.engines.hf import HFEngine

    one = next(w for w in ["a", "b", "x", "7", "#"] if len(tok(w, add_special_tokens=False)["input_ids"]) == 1)
    engine = HFEngine(str(tiny_base), batch_size=4)
    items = pd.DataFrame({"id": ["ok", "single-token"], "prompt": [None, None], "text": ["some longer text", one]})
    with pytest.raises(HeldoutTextError, match="'single-token'"):
        heldout_ce(engine, items, template="{question}", max_length=512)
    # a prompt as long as max_length leaves nothing to score
    q = _heldout_rows(toy_world)[0]["question"]
    plen = len(_chat_ids(tok, q, "{question}"))
    items = pd.DataFrame({"id": ["plain", "long-prompt"], "prompt": [None, q], "text": ["some longer text", "#### 1"]})
    with pytest.raises(HeldoutTextError, match="'long-prompt'"):
        heldout_ce(engine, items, template="{question}", max_length=plen)
    out = heldout_ce(engine, items, template="{question}", max_length=plen + 1)
    assert out["n_tokens"].tolist()[1] == 1


def load_heldout(spec: dict, toy_dir=None):
    """load_heldout on ``spec`` with every other key at its default (the measure passes a filled section)."""
    return _load_filled(ForgettingSettings.filled(spec), toy_dir)
