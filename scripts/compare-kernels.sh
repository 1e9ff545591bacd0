#!/usr/bin/env bash
# Would another machine reach the same verdicts? Runs the study twice on this machine, the second time with
# torch's CPU kernels forced to another instruction set, and prints what moved (lossgeom compare-runs):
# the claims' verdicts side by side, how many numbers changed and how far, which weights files differ.
#
#   scripts/compare-kernels.sh WORKDIR [snakemake arguments]
#   e.g. scripts/compare-kernels.sh /tmp/kernels --cores 2                (the default study, ~2 x 10 min)
#        scripts/compare-kernels.sh /tmp/kernels --cores 2 --configfile "$PWD/tests/data/tiny_config.yaml"
#
# Side a runs with KERNELS_A, side b with KERNELS_B (environment assignments; defaults: this CPU's own
# kernels, and AVX2 for torch's ATen kernels, MKL's BLAS and oneDNN: what a CPU without AVX-512 runs).
# Another thread count is another setting, e.g. KERNELS_B="OMP_NUM_THREADS=1". The two studies run in
# WORKDIR/a and WORKDIR/b (a config's relative inputs, such as an imported rollouts file, must be there);
# the comparison goes to WORKDIR/comparison (summary.md, verdicts.tsv, tables.tsv, weights.tsv).
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 WORKDIR [snakemake arguments]" >&2; exit 2; }
work="$(mkdir -p "$1" && cd "$1" && pwd)"
shift
KERNELS_A="${KERNELS_A:-}"
KERNELS_B="${KERNELS_B:-ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2}"

names=()
for side in a b; do
    if [ "$side" = a ]; then settings="$KERNELS_A"; else settings="$KERNELS_B"; fi
    mkdir -p "$work/$side"
    # what torch runs under these settings (the name the summary gives this side)
    # shellcheck disable=SC2086
    capability="$(env $settings python -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')"
    names+=("${capability}${settings:+ ($settings)}")
    echo "side $side: torch CPU capability $capability${settings:+, $settings}; log: $work/$side.log"
    SECONDS=0
    # shellcheck disable=SC2086
    if ! env $settings python -m snakemake -s "$repo/Snakefile" --directory "$work/$side" "$@" >"$work/$side.log" 2>&1; then
        echo "side $side: the study failed; see $work/$side.log" >&2
        tail -20 "$work/$side.log" >&2
        exit 1
    fi
    echo "side $side: done in $((SECONDS / 60)) min $((SECONDS % 60)) s"
done
python -m lossgeom.cli compare-runs "$work/a/results" "$work/b/results" --out "$work/comparison" \
    --names "${names[0]}" "${names[1]}"
cat "$work/comparison/summary.md"
