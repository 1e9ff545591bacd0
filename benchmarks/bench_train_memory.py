"""Peak memory of a training job's tokenised rows for a paper-sized rollout table, without a model.

    python benchmarks/bench_train_memory.py                  # 161,000 rows, the stated length distribution
    python benchmarks/bench_train_memory.py --rows 20000     # quicker
    python benchmarks/bench_train_memory.py --lengths-from results/rollouts/rollouts.parquet

The paper's rollout table: ~40k prompts x K=4 = ~161k rows. Completion lengths are drawn from a
lognormal (median ~1.38k, sigma 0.6) cut to [16, 4,096]: a mean near 1.6k tokens, ~3.5% of rows at the 4,096 cap (the paper's tail), prompts
from 40 to 160 tokens; or, with --lengths-from, the whitespace-word counts of a rollout table's
completions, resampled to --rows. Text is made of one-token words of a word-level tokenizer (with a
Qwen-style chat template and EOS), so a row tokenises to exactly its drawn length.

Each path runs in a fresh process and reports its peak RSS (``ru_maxrss``) above a baseline process
that builds the same view and tokenizer and stops there:
- ``lists``: the rows as Python lists of the whole view, then ``Dataset.from_dict`` (the train job's code
  before issue 21, kept here only for this side-by-side ratio);
- ``arrays``: :func:`lossgeom.training.job.tokenize_view` (int32/int8 Arrow arrays from the start).
The lists path tokenises only the first ``--lists-rows`` (40k: the whole table would need ~27 GB, more
than a 24 GB box has) and its memory is scaled to the table per token; both are checked equal on a
sample of rows. Target: arrays hold the rows in a few bytes a
token (5 at best), lists in ~45.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VOCAB = 50_000


def word_tokenizer():
    """A word-level fast tokenizer: ``w<i>`` is one token, the chat markers and EOS are special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|pad|>", "<|im_start|>", "<|im_end|>", "user", "assistant", "\n"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"w{i}": len(specials) + i for i in range(VOCAB)})
    vocab["<unk>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|pad|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def draw_lengths(rows: int, lengths_from: str | None, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, completion) token counts per row: the stated distribution, or a rollout table's."""
    rng = np.random.default_rng(seed)
    if lengths_from:
        table = pd.read_parquet(lengths_from, columns=["completion"])
        pool = np.array([max(1, len(c.split())) for c in table["completion"]])
        completion = rng.choice(pool, size=rows)
    else:
        completion = np.clip(rng.lognormal(np.log(1600) - 0.15, 0.6, size=rows), 16, 4096).astype(int)
    prompt = rng.integers(40, 161, size=rows)
    return prompt, completion


def build_view(rows: int, lengths_from: str | None) -> pd.DataFrame:
    prompt, completion = draw_lengths(rows, lengths_from)
    rng = np.random.default_rng(1)

    def text(n):
        return " ".join(f"w{i}" for i in rng.integers(0, VOCAB, size=n))

    return pd.DataFrame(
        {
            "prompt": [text(n) for n in prompt],
            "completion": [text(n) for n in completion],
            "reward": rng.choice([1.0, -0.2], size=rows),
            "weight": np.ones(rows),
        }
    )


def tokenize_view_lists(view, tokenizer, template, max_length):
    """The train job's tokenisation before issue 21: every row a Python list, the whole view in lists."""
    from datasets import Dataset

    from lossgeom.data.prompting import prompt_completion

    rows = {"input_ids": [], "completion_mask": [], "row_weight": [], "row_reward": []}
    for r in view.itertuples(index=False):
        ids, mask = prompt_completion(tokenizer, r.prompt, r.completion, template, max_length)
        rows["input_ids"].append(ids)
        rows["completion_mask"].append(mask)
        rows["row_weight"].append(float(r.weight))
        rows["row_reward"].append(float(r.reward))
    return Dataset.from_dict(rows)


def run_path(path: str, rows: int, lengths_from: str | None, tokenised: int, sample_below: int) -> dict:
    """One measurement (in this process): build the view of ``rows``, tokenise its first ``tokenised``
    rows by ``path``, report peak RSS and a sample of rows below ``sample_below`` (for the equality check)."""
    from lossgeom.training.job import tokenize_view

    tokenizer = word_tokenizer()
    view = build_view(rows, lengths_from)
    start = time.perf_counter()
    out = {"path": path}
    if path != "baseline":
        fn = tokenize_view if path == "arrays" else tokenize_view_lists
        ds = fn(view.iloc[:tokenised], tokenizer, "{question}", 8192)
        import pyarrow.compute as pc

        out["tokens"] = int(pc.sum(pc.list_value_length(ds.data.table.column("input_ids"))).as_py())
        sample = np.random.default_rng(2).integers(0, sample_below, size=20)
        out["sample"] = [ds[int(i)]["input_ids"][-5:] + [sum(ds[int(i)]["completion_mask"])] for i in sample]
    out["seconds"] = time.perf_counter() - start
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    return out


def measure(path: str, rows: int, lengths_from: str | None, tokenised: int, sample_below: int) -> dict:
    cmd = [sys.executable, __file__, "--rows", str(rows), "--one", path, "--tokenised", str(tokenised)]
    cmd += ["--sample-below", str(sample_below)]
    if lengths_from:
        cmd += ["--lengths-from", lengths_from]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=161_000)
    ap.add_argument("--lengths-from", default=None, help="a rollout table (parquet) whose completion lengths to use")
    ap.add_argument(
        "--lists-rows",
        type=int,
        default=40_000,
        help="rows the lists path tokenises (~100 bytes a token: all 161k would need ~27 GB); its memory is "
        "scaled to --rows per token",
    )
    ap.add_argument("--one", choices=["baseline", "lists", "arrays"], help=argparse.SUPPRESS)
    ap.add_argument("--tokenised", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--sample-below", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_path(a.one, a.rows, a.lengths_from, a.tokenised, a.sample_below)))
        return 0
    prompt, completion = draw_lengths(a.rows, a.lengths_from)
    print(
        f"rows {a.rows:,}; completion tokens mean {completion.mean():.0f}, p99 {np.percentile(completion, 99):.0f}, "
        f"max {completion.max()}; prompt tokens mean {prompt.mean():.0f}"
    )
    lists_rows = min(a.lists_rows, a.rows)
    base = measure("baseline", a.rows, a.lengths_from, 0, lists_rows)
    results = {"lists": measure("lists", a.rows, a.lengths_from, lists_rows, lists_rows)}
    results["arrays"] = measure("arrays", a.rows, a.lengths_from, a.rows, lists_rows)
    if results["lists"]["sample"] != results["arrays"]["sample"]:
        print("MISMATCH: the two paths tokenised differently", file=sys.stderr)
        return 1
    print(f"baseline (the view of {a.rows:,} rows + tokenizer, no rows tokenised): peak {base['peak_mb']:,.0f} MB")
    per_token = {}
    for path, r in results.items():
        extra = r["peak_mb"] - base["peak_mb"]
        per_token[path] = extra * 2**20 / r["tokens"]
        print(
            f"{path:>6}: {r['tokens']:,} tokens tokenised, peak {r['peak_mb']:,.0f} MB, {extra:,.0f} MB above "
            f"baseline ({per_token[path]:.1f} bytes/token), {r['seconds']:.0f} s"
        )
    full = results["arrays"]["tokens"]
    lists_full = base["peak_mb"] + per_token["lists"] * full / 2**20
    scaled = "" if lists_rows == a.rows else f" (scaled from {lists_rows:,} rows by tokens)"
    print(
        f"the train job's peak for {a.rows:,} rows ({full:,} tokens): arrays {results['arrays']['peak_mb'] / 1024:.1f} GB "
        f"measured, lists {lists_full / 1024:.1f} GB{scaled}"
    )
    print(f"rows memory lists / arrays: {per_token['lists'] / per_token['arrays']:.1f}x per token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
