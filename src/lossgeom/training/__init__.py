"""Stage ``workflow/rules/train.smk``: one attention-only LoRA adapter per (method, seed).

Reads the rollout table and the base model; writes ``results/adapters/{method}/seed{seed}/`` (PEFT
adapter, ``step{N}/`` saves, ``metrics.tsv``, ``train_info.json``). The method's rows come from
:mod:`.views`, its loss from :mod:`.losses` through the trainer of :mod:`.trainers` (DPO, IPO,
SimPO, KTO and online GRPO: TRL's own trainers, :mod:`.trl_methods`); :mod:`.job` runs one job with checkpoints and resume. The spec it trains from is
:class:`lossgeom.methods.MethodSpec`.
"""
