"""Loading models and tokenizers: a Hugging Face hub id or a local directory, the same code for both.

Safe loading only: weights through safetensors (``use_safetensors=True``) and
``trust_remote_code`` off unless the config turns it on. Qwen3 needs no remote code.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def device() -> torch.device:
    """The device jobs run on: the (first visible) GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class ModelLoadError(InputError):
    """A model or tokenizer cannot be loaded from a directory or hub id; the message names it."""


def _check_location(name_or_path: str, what: str) -> None:
    """A name written as a path (``/…``, ``./…``, ``../…``, ``~…``) must be an existing directory: else
    transformers takes it for a malformed hub id and says so."""
    if name_or_path.startswith(("/", "./", "../", "~")) and not Path(name_or_path).expanduser().is_dir():
        raise ModelLoadError(f"{what} directory {name_or_path} does not exist")


def _load_failed(name_or_path: str, what: str, e: Exception) -> ModelLoadError:
    return ModelLoadError(
        f"{name_or_path}: cannot load the {what} ({type(e).__name__}: {' '.join(str(e).split())[:300]})"
    )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    name_or_path = str(name_or_path)
    _check_location(name_or_path, "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError) as e:
        raise _load_failed(name_or_path, "tokenizer", e) from None
    if len(tok) < 3:  # transformers 5 builds an empty tokenizer from config.json alone
        raise ModelLoadError(
            f"{name_or_path}: no tokenizer files (tokenizer.json, or vocab.json and merges.txt); "
            f"the tokenizer it gives has {len(tok)} token(s)"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False, to_device: bool = True):
    """A causal LM in ``dtype`` (on the GPU when one is visible and ``to_device``)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise InputError(f"model.dtype (--dtype) {dtype!r} is not one of {sorted(DTYPES)}")
    name_or_path = str(name_or_path)
    _check_location(name_or_path, "model")
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except (OSError, ValueError, SafetensorError) as e:  # no weights, no or bad config.json, a truncated file
        raise _load_failed(name_or_path, "model", e) from None
    return model.to(device()) if to_device else model
