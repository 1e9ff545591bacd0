"""lossgeom: weight-space geometry of offline reasoning-training losses.

The package holds every piece of logic of the study; the Snakemake rules under ``workflow/`` only
wire files to subcommands of the ``lossgeom`` command-line tool (:mod:`lossgeom.cli`). One
subpackage per stage of the DAG, over a shared floor and a ground floor (imports only go down):

    toy/          toy.smk        the toy world and its models
    generation/   rollouts.smk   prompts -> graded completions
    training/     train.smk      one LoRA adapter per (method, seed)
    geometry/     geometry.smk   all pairs of adapters in weight space
    behaviour/    behaviour.smk  accuracy, connectivity sweeps, CKA
    claims/       claims.smk     the paper's claims checked against the run
    figures/      (figure rules) tables -> PNG/PDF
    engines/      shared floor   generation engines (hf, vllm, an API teacher)
    lora/         shared floor   PEFT adapter reading, low-rank maths
    losses/ data/ ground floor   the loss registry; problem sets, prompts, grading, the rollout table
    ground floor  cli, config, settings, methods (MethodSpec), labels, modeling, fsutil, devices
"""

__version__ = "0.1.0"
