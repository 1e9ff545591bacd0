"""Stage ``workflow/rules/behaviour.smk``: what each delta does, beside where it points.

Reads the base model, adapters and test sets; writes ``results/eval/`` (per-model greedy pass@1 and
cross-entropies, then CIs, exact McNemar with Holm, Cochran's Q: :mod:`.accuracy` over
:mod:`.evaluation` and :mod:`.stats`), ``results/lmc/`` (one sweep per adapter pair along the
interpolated delta, and barriers: :mod:`.connectivity` over :mod:`.interpolation`) and
``results/activations/`` + ``results/cka/`` (pooled hidden states per model and CKA per layer:
:mod:`.activations`, :mod:`.cka`).
"""
