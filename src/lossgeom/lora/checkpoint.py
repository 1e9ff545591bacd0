"""A base model's dense weights of the modules a LoRA adapter targets, for the analyses against the base
(base alignment, the base spectrum): read straight from the checkpoint's safetensors files.

No model is built: each ``{module}.weight`` tensor is read on its own and widened to float64, so a 4B
model's attention weights cost their own memory, not the model's, and the job never imports
transformers. As for adapters (:func:`lossgeom.lora.adapters.load_adapter`), a file holding bfloat16
tensors is read through torch (numpy has no bfloat16; bf16 -> float64 is exact), any other through numpy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import InputError
from .adapters import AdapterMismatchError


def base_weights_of(name_or_path: str, adapter_dir, trust_remote_code: bool = False) -> dict[str, np.ndarray]:
    """``{module path: float64 (d_out, d_in) weight}`` of the 2-D ``{module}.weight`` tensors whose module's
    last name is one of the adapter's ``target_modules`` (every 2-D weight when they are a regex), keyed as
    the checkpoint names them (``model.layers.3.self_attn.q_proj``).

    ``name_or_path``: a local model directory, or a hub id (its snapshot's safetensors files, from the hub
    cache when present). A checkpoint without safetensors files, or none of whose keys names a target's
    weight, is loaded through transformers instead (:func:`lossgeom.modeling.load_model`: its module names;
    one clear error when that fails too)."""
    cfg = Path(adapter_dir) / "adapter_config.json"
    try:
        targets = json.loads(cfg.read_text(encoding="utf-8"))["target_modules"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise AdapterMismatchError(f"{cfg}: not a PEFT adapter config ({type(e).__name__}: {e})") from None
    targets = set(targets) if isinstance(targets, list) else None
    out = _from_safetensors(str(name_or_path), targets)
    if out:
        return out
    import torch

    from ..modeling import load_model

    model = load_model(name_or_path, "float32", trust_remote_code, to_device=False)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and (targets is None or name.rsplit(".", 1)[-1] in targets):
            out[name] = module.weight.detach().double().numpy()
    return out


def _checkpoint_dir(name_or_path: str) -> Path | None:
    """The directory holding the checkpoint's files: the local directory, or the hub snapshot's (None when
    the name is neither: the transformers fallback then names the problem)."""
    root = Path(name_or_path).expanduser()
    if root.is_dir():
        return root
    if name_or_path.startswith(("/", "./", "../", "~")):
        return None  # a path that does not exist: load_model says so
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name_or_path, allow_patterns=["*.safetensors", "*.json"]))
    except Exception:  # offline without a cached snapshot, a private or unknown id, ...
        return None


def _from_safetensors(name_or_path: str, targets: set[str] | None) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError

    root = _checkpoint_dir(name_or_path)
    out: dict[str, np.ndarray] = {}
    for path in sorted(root.glob("*.safetensors")) if root is not None else ():
        try:
            _read_weights(path, targets, out)
        except SafetensorError as e:  # a truncated or damaged download: name the file
            raise InputError(f"{path}: not a readable safetensors file ({e}); fetch the base model again") from None
    return out


def _read_weights(path: Path, targets: set[str] | None, out: dict[str, np.ndarray]) -> None:
    """Add the wanted 2-D weights of one safetensors file to ``out`` (float64)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        keys = [k for k in f.keys() if _wanted(k, targets) and len(f.get_slice(k).get_shape()) == 2]
        bf16 = any(f.get_slice(k).get_dtype() == "BF16" for k in keys)
    with safe_open(str(path), framework="pt" if bf16 else "np") as f:
        for key in keys:
            t = f.get_tensor(key)
            out[key.removesuffix(".weight")] = t.double().numpy() if bf16 else np.asarray(t, dtype=np.float64)


def _wanted(key: str, targets: set[str] | None) -> bool:
    module = key.removesuffix(".weight")
    return module != key and (targets is None or module.rsplit(".", 1)[-1] in targets)
