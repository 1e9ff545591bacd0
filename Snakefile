# lossgeom: do offline reasoning-training losses move a model's weights the same way?
#
# The rules only wire files to subcommands of the `lossgeom` CLI (src/lossgeom/cli.py); every bit of
# logic lives in the package. Run `snakemake --cores 2` for the toy study (config/config.yaml) or
# `snakemake --workflow-profile profiles/slurm --configfile config/paper.yaml` for the paper's protocol.

import os

from snakemake.utils import min_version

min_version("9.0")


# The toy default, unless the user names a config file (--configfile config/paper.yaml): then that
# file alone is the study, never merged key by key with the toy world.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/rollouts.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/geometry.smk"
include: "workflow/rules/behaviour.smk"
include: "workflow/rules/claims.smk"


# The default target: every rule file's add_targets (the claims and every aggregate table and figure)
rule all:
    input:
        TARGETS,
    default_target: True
    localrule: True
