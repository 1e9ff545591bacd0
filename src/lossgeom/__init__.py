"""lossgeom: weight-space geometry of offline reasoning-training losses.

The package holds every piece of logic of the study; the Snakemake rules under ``workflow/`` only
wire files to subcommands of the ``lossgeom`` command-line tool (:mod:`lossgeom.cli`). One
subpackage per stage of the DAG, over a ground floor that every stage uses:

    toy/          toy.smk        the toy world and its models
    generation/   rollouts.smk   prompts -> graded completions
    training/     train.smk      one LoRA adapter per (method, seed)
    geometry/     geometry.smk   all pairs of adapters in weight space
    behaviour/    behaviour.smk  accuracy, connectivity sweeps, CKA
    figures/      (figure rules) tables -> PNG/PDF
    data/         problem sets, prompts, grading, the rollout table
    ground floor  cli, config (schema + narrow views), methods (MethodSpec), modeling, fsutil, devices
"""

__version__ = "0.1.0"
