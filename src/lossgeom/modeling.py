"""Loading models and tokenizers: a Hugging Face hub id or a local directory, the same code for both.

Safe loading only: weights through safetensors (``use_safetensors=True``) and
``trust_remote_code`` off unless the config turns it on. Qwen3 needs no remote code.
"""

from __future__ import annotations

from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def device() -> torch.device:
    """The device jobs run on: the (first visible) GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(name_or_path), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False, to_device: bool = True):
    """A causal LM in ``dtype`` (on the GPU when one is visible and ``to_device``)."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    model = AutoModelForCausalLM.from_pretrained(
        str(name_or_path), dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=True
    )
    return model.to(device()) if to_device else model


def base_weights_of(name_or_path: str, adapter_dir, trust_remote_code: bool = False) -> dict:
    """The base model's dense weights of the modules an adapter targets, as float64 numpy arrays
    keyed by module path (``model.layers.3.self_attn.q_proj``), for the base-alignment analysis."""
    import json
    from pathlib import Path

    targets = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())["target_modules"]
    targets = set(targets) if isinstance(targets, list) else None
    model = load_model(name_or_path, "float32", trust_remote_code, to_device=False)
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (targets is None or name.rsplit(".", 1)[-1] in targets):
            out[name] = module.weight.detach().double().numpy()
    return out


def model_with_adapter(base: str, adapter: Path | None, dtype: str, trust_remote_code: bool):
    """The base model, with ``adapter`` merged into its weights when given (a merged model is what
    the paper evaluates and probes; merging also makes generation as fast as the base)."""
    model = load_model(base, dtype, trust_remote_code)
    if adapter is None:
        return model
    return merge_adapter(model, adapter, base)


def check_adapter_fits(adapter, model, base: str) -> None:
    """Raise one :class:`~lossgeom.geometry.adapters.AdapterMismatchError` line when a loaded adapter
    (:class:`~lossgeom.geometry.adapters.LoraAdapter`) adapts a module ``model`` lacks or one of
    another shape (an adapter of another base model), before PEFT fails with a size-mismatch traceback."""
    from .geometry.adapters import AdapterMismatchError, canonical_module_name

    linear = {canonical_module_name(n): tuple(m.weight.shape) for n, m in model.named_modules()
              if isinstance(m, torch.nn.Linear)}
    for name, delta in adapter.modules.items():
        found = linear.get(name)
        if found != delta.shape:
            what = "has no such linear module" if found is None else f"has (d_out, d_in) = {found}"
            raise AdapterMismatchError(
                f"{adapter.source}: adapter of base model {adapter.base_model_name_or_path!r} does not fit {base}: "
                f"module {name!r} is {delta.shape} in the adapter, the model {what}")


def merge_adapter(model, adapter: Path, base: str):
    """``model`` with the PEFT adapter directory ``adapter`` merged into its weights. The adapter is
    read and checked first (:func:`~lossgeom.geometry.adapters.load_adapter`, :func:`check_adapter_fits`),
    so a truncated file, a DoRA adapter or one of another base model stops with one line naming it."""
    from peft import PeftModel

    from .geometry.adapters import load_adapter

    check_adapter_fits(load_adapter(adapter), model, base)
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
