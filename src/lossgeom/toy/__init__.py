"""Stage ``workflow/rules/toy.smk``: the toy world of the default study, built offline.

Writes ``results/toy/world`` (generated arithmetic problems in GSM8K's format, :mod:`.problems`;
a byte-level BPE tokenizer, :mod:`.tokenizer`; :mod:`.world` ties them together) and
``results/toy/models/{base,teacher}`` (small Qwen3 models trained from scratch, :mod:`.pretrain`).
Scheduled only when the config names "toy" as a model or problem source.
"""
