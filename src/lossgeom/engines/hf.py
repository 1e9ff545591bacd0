"""The ``hf`` engine: Hugging Face ``generate`` and teacher-forced forward passes.

Adapters: an :class:`~.engine.AdapterDir` is merged into a fresh copy of the base weights (a merged
model is what the paper evaluates, and generates as fast as the base); a :class:`~.engine.PathPoint`
is set in place on one :class:`~.adapters.LoraPath` per adapter pair. One model is held at a time.

Batching and seeds: prompts go in batches of ``batch_size`` (left-padded); sampling reseeds torch
before each batch with ``seed * 1_000_003 + batch_index``, so a run is reproducible on CPU for a fixed
batch size. Log-probabilities are those of the temperature-scaled, renormalised distribution
(``compute_transition_scores(normalize_logits=True)``), rounded to 1e-6.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.prompting import right_padded
from ..modeling import load_model, load_tokenizer
from .engine import Adapter, AdapterDir, Completion, Engine, PathPoint, Sampling


class HFEngine(Engine):
    name = "hf"

    def __init__(self, model: str, *, dtype: str = "float32", trust_remote_code: bool = False, batch_size: int = 32):
        self.model_path, self.dtype, self.remote, self.batch_size = str(model), dtype, trust_remote_code, batch_size
        self.tokenizer = load_tokenizer(self.model_path, trust_remote_code)
        self._held: tuple = (None, None)  # (key, model)
        self._path = None  # (first, second, LoraPath)

    # -- models -----------------------------------------------------------------------------------
    def _base(self):
        return load_model(self.model_path, self.dtype, self.remote)

    def model_for(self, adapter: Adapter):
        """The torch model for ``adapter`` (see the module docstring); loads only on a change."""
        if isinstance(adapter, PathPoint):
            if self._path is None or self._path[:2] != (adapter.first, adapter.second):
                from ..lora.adapters import load_adapter
                from .adapters import LoraPath, check_adapter_fits

                self._held = (None, None)
                base, first, second = self._base(), load_adapter(adapter.first), load_adapter(adapter.second)
                check_adapter_fits(first, base, self.model_path)  # the second is checked against the first
                self._path = (adapter.first, adapter.second, LoraPath(base, first, second))
            lora_path = self._path[2]
            lora_path.set_alpha(adapter.alpha)
            return lora_path.model
        key = str(adapter) if adapter is not None else None
        if self._held[1] is None or self._held[0] != key:
            self._held, self._path = (None, None), None  # free the previous model first
            model = self._base()
            if isinstance(adapter, AdapterDir):
                from .adapters import merge_adapter

                model = merge_adapter(model, adapter.path, self.model_path)
            self._held = (key, model)
        return self._held[1]

    # -- generation -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts, sampling: Sampling, adapter: Adapter = None, desc: str = "generate"):
        model = self.model_for(adapter)
        model.eval()
        tok = self.tokenizer
        tok.padding_side = "left"
        dev = next(model.parameters()).device
        eos = tok.eos_token_id
        out: list[list[Completion]] = []
        for b in tqdm(range(math.ceil(len(prompts) / self.batch_size)), desc=desc, unit="batch"):
            chunk = prompts[b * self.batch_size : (b + 1) * self.batch_size]
            enc = tok.pad({"input_ids": chunk}, return_tensors="pt").to(dev)
            kwargs = dict(max_new_tokens=sampling.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=eos)
            if sampling.greedy:
                kwargs.update(do_sample=False)
            else:
                torch.manual_seed((sampling.seed or 0) * 1_000_003 + b)
                kwargs.update(
                    do_sample=True,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    top_k=0,
                    num_return_sequences=sampling.n,
                )
            if sampling.logprobs:
                kwargs.update(return_dict_in_generate=True, output_scores=True)
            res = model.generate(**enc, **kwargs)
            seqs = res.sequences if sampling.logprobs else res
            gen = seqs[:, enc["input_ids"].shape[1] :]
            scores = None
            if sampling.logprobs:  # log-probs under the (temperature-scaled, renormalised) sampling distribution
                scores = model.compute_transition_scores(res.sequences, res.scores, normalize_logits=True).float().cpu()
            for i in range(gen.shape[0]):
                ids = gen[i].tolist()
                stopped = eos in ids
                n = ids.index(eos) + 1 if stopped else len(ids)  # keep EOS, drop the padding after it
                text = tok.decode(ids[: n - 1 if stopped else n], skip_special_tokens=True)
                lp = [round(float(x), 6) for x in scores[i, :n]] if scores is not None else None
                if i % sampling.n == 0:
                    out.append([])
                out[-1].append(Completion(text, ids[:n], lp, "stop" if stopped else "length"))
        return out

    # -- scoring ----------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, sequences, masks, adapter: Adapter = None) -> np.ndarray:
        model = self.model_for(adapter)
        model.eval()
        dev = next(model.parameters()).device
        out = np.full(len(sequences), np.nan)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(sequences), self.batch_size):
            idx = list(range(start, min(start + self.batch_size, len(sequences))))
            ids, attn = right_padded([sequences[i] for i in idx], pad, dev)
            cmask = right_padded([masks[i] for i in idx], 0, dev)[0].float()
            logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
            logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
            m = cmask[:, 1:]
            ce = -(logp * m).sum(1) / m.sum(1).clamp(min=1)
            out[idx] = ce.cpu().double().numpy()
        return out

    def close(self) -> None:
        self._held, self._path = (None, None), None
