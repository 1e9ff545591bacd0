"""Stage ``workflow/rules/rollouts.smk``: turn prompts into graded completions.

Reads a sampler model (the teacher, or the base) and a problem source; writes
``results/rollouts/rollouts.parquet`` in the table format of :mod:`lossgeom.data.rollouts`.
:mod:`.sampling` samples through any engine of :mod:`lossgeom.engines` (hf, vllm, or an API teacher).
"""
