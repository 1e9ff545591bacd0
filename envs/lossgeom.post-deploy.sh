#!/usr/bin/env bash
# Installs the lossgeom package from the checkout into the environment of envs/lossgeom.yaml.
# Snakemake (--sdm conda) runs this once, inside the new environment, right after
# `conda env create`; it runs a copy (<conda-prefix>/<hash>.post-deploy.sh, by default under
# .snakemake/conda/) from Snakemake's working directory, so neither this file's location nor a
# relative path names the checkout. The checkout is:
#   - $LOSSGEOM_CHECKOUT if set: needed when snakemake runs with --directory outside the checkout;
#   - otherwise the working directory, i.e. the checkout when snakemake is started there.
# Anything that is not a lossgeom checkout stops the build, and Snakemake deletes the half-built
# environment instead of caching it.
#
# Editable on purpose: Snakemake caches the environment under a hash of envs/lossgeom.yaml and this
# script, not of src/, so a regular install would keep running the code of the day the environment
# was built. Editable, the rules always run the checkout's code, as in one shared environment.
# --no-deps: the dependencies are envs/lossgeom.yaml's (it mirrors pyproject.toml); this step must
# not change them (e.g. pull a PyPI torch over conda's pytorch) and needs no network.
set -euo pipefail

checkout="${LOSSGEOM_CHECKOUT:-$PWD}"
if ! grep -Eqs '^name *= *"lossgeom"' "$checkout/pyproject.toml"; then
    echo "lossgeom.post-deploy.sh: $checkout is not a lossgeom checkout (no pyproject.toml of" \
        "lossgeom there). Start snakemake in the checkout, or with --directory elsewhere set" \
        "LOSSGEOM_CHECKOUT=/path/to/checkout." >&2
    exit 1
fi
checkout="$(cd "$checkout" && pwd -P)"
echo "lossgeom.post-deploy.sh: installing lossgeom (editable) from $checkout"
python -m pip install --no-deps --no-build-isolation --editable "$checkout"
