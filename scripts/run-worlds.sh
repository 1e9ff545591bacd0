#!/usr/bin/env bash
# The study in several toy worlds and one claims table over them (lossgeom.worlds).
#
#   scripts/run-worlds.sh WORLDS_FILE OUT [snakemake arguments]
#   e.g. scripts/run-worlds.sh config/worlds/four.yaml results/worlds --cores 2
#
# Writes OUT/<world>/config.yaml for each world of WORLDS_FILE, runs the study in OUT/<world>/ (its results
# in OUT/<world>/results/; a config's relative inputs, such as an imported rollouts file, must be there),
# then OUT/claims.tsv: each claim's verdict over the worlds (holds / fails in every world, varies, unsettled).
# A world that already finished reruns nothing (Snakemake's own staleness).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 2 ] || { echo "usage: $0 WORLDS_FILE OUT [snakemake arguments]" >&2; exit 2; }
file="$1"
out="$(mkdir -p "$2" && cd "$2" && pwd)"
shift 2
names="$(python -m lossgeom.cli worlds --file "$file" --out "$out")"
claims=()
for name in $names; do
    echo "world $name: $out/$name (log: $out/$name.log)"
    SECONDS=0
    if ! python -m snakemake -s "$repo/Snakefile" --directory "$out/$name" --configfile "$out/$name/config.yaml" \
        "$@" >"$out/$name.log" 2>&1; then
        echo "world $name: the study failed; see $out/$name.log" >&2
        tail -20 "$out/$name.log" >&2
        exit 1
    fi
    echo "world $name: done in $((SECONDS / 60)) min $((SECONDS % 60)) s"
    claims+=("$name=$out/$name/results/claims.tsv")
done
python -m lossgeom.cli worlds-claims "${claims[@]}" --out "$out/claims.tsv"
