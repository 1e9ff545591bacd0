#!/usr/bin/env bash
# One-shot GPU check of lossgeom on the nvidia-h200 device machine (no network there).
#
#   device tool: run(command="bash scripts/device-check.sh", carry=[".whl"], timeout_s=570)
#
# Stages, each under its own `timeout`, each leaving its output in $OUT even if a later one fails:
#   0. install the carried wheels (.whl/, see below) into /tmp/site; wrappers `lossgeom`, `snakemake`
#      in /tmp/bin; versions, nvidia-smi -L                                   -> device-check.log
#   1. benchmarks/bench_trainer.py --shape qwen3-4b (bf16)                   -> bench_trainer.log
#   2. benchmarks/bench_generation.py --shape qwen3-4b --dtype bfloat16, hf only
#                                                    -> bench_generation.log, bench_generation.json
#   3. benchmarks/bench_geometry.py at paper scale, --blas-threads 16 (CPU)  -> bench_geometry.log
#   4. the default study (config/config.yaml) with model.dtype=bfloat16 and training.precision=bf16,
#      in $STUDY_DIR (not the checkout's results/), under `timeout` so that the whole script ends by
#      CHECK_LIMIT_S                                                 -> study.log, study.tgz
# At most 7 files land in $OUT (the tool returns 8 at most).
#
# .whl holds the packages the device image lacks (snakemake and its deps, trl, datasets, math-verify,
# jsonschema, openai, ...) plus this project's versions of transformers/peft/accelerate/tokenizers,
# so the numerics are those of the CPU environment; torch, numpy, pandas, pyarrow, huggingface_hub
# come from the image. pulp (16 MB, snakemake's ILP scheduler) is left out: the study runs with
# --scheduler greedy.
#
# Knobs (environment):
#   CHECK_LIMIT_S=525      the script ends by then (seconds from its start)
#   STUDY_GPU_JOBS=8       GPU jobs of the study run at once on the one GPU. The default profile
#                          allows one GPU job per GPU and lossgeom.devices pins each job to its own
#                          device; to share the single H200 the study runs with LOSSGEOM_NUM_GPUS=N
#                          and a dummy SLURM_JOB_ID (which makes claim_gpu() a no-op, so every job
#                          uses device 0). 1 = the unmodified one-job-per-GPU path (slow: ~62 GPU jobs
#                          in series).
#   STUDY_DIR=/tmp/lossgeom-study-bf16   STUDY_TARGETS=""  (default: the whole study)
#   BENCHES=trainer,generation,geometry   which benchmarks to run (BENCHES= : none, e.g. to rerun
#                          the study alone with the whole time limit)
#   SKIP_INSTALL=1         use the Python environment as it is (local tests)
#   SMOKE=1                tiny shapes and a one-job study (toy_world): tests this script on a CPU
#   PY=python3             the Python to use
set -u
cd "$(dirname "$0")/.." || exit 1
T0=$SECONDS
: "${OUT:?OUT must name the output folder}"
mkdir -p "$OUT"
LIMIT=${CHECK_LIMIT_S:-525}
SMOKE=${SMOKE:-0}
PY=${PY:-python3}
STUDY_DIR=${STUDY_DIR:-/tmp/lossgeom-study-bf16}
GPU_JOBS=${STUDY_GPU_JOBS:-8}
exec > >(tee -a "$OUT/device-check.log") 2>&1
SUMMARY=""

now() { echo $((SECONDS - T0)); }
left() { echo $((LIMIT - (SECONDS - T0))); }

# stage NAME TIMEOUT LOGFILE CMD...: run CMD under timeout, output to LOGFILE, tail into the main log
stage() {
    local name=$1 tmo=$2 log=$3 t=$SECONDS rc
    shift 3
    if [ "$tmo" -gt "$(($(left) - 5))" ]; then tmo=$(($(left) - 5)); fi
    if [ "$tmo" -lt 10 ]; then
        echo "=== [$(now) s] $name: skipped, $(left) s left"
        SUMMARY+="$name skipped"$'\n'
        return 0
    fi
    echo "=== [$(now) s] $name (timeout ${tmo} s) -> $(basename "$log")"
    echo "+ $*" >"$log"
    timeout -k 10 "$tmo" "$@" >>"$log" 2>&1
    rc=$?
    [ $rc -eq 124 ] && echo "TIMED OUT after ${tmo} s" >>"$log"
    tail -n 30 "$log"
    echo "=== [$(now) s] $name: rc=$rc in $((SECONDS - t)) s"
    SUMMARY+="$name rc=$rc $((SECONDS - t))s"$'\n'
}

# ---- 0. environment ------------------------------------------------------------------------------
echo "=== [$(now) s] device-check: $(date -u +%FT%TZ) host=$(hostname) cwd=$PWD limit=${LIMIT}s smoke=$SMOKE"
if [ "${SKIP_INSTALL:-0}" != 1 ]; then
    t=$SECONDS
    rm -rf /tmp/site
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install FAILED"; exit 1; }
    echo "installed $(ls .whl/*.whl | wc -l) wheels into /tmp/site in $((SECONDS - t)) s"
    export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
else
    export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
fi
PYBIN=$(command -v "$PY")
mkdir -p /tmp/bin
printf '#!/bin/sh\nexec %s -m lossgeom.cli "$@"\n' "$PYBIN" >/tmp/bin/lossgeom
printf '#!/bin/sh\nexec %s -m snakemake "$@"\n' "$PYBIN" >/tmp/bin/snakemake
chmod +x /tmp/bin/lossgeom /tmp/bin/snakemake
export PATH=/tmp/bin:$PATH
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false HF_HOME=/tmp/hf-home \
    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
nvidia-smi -L 2>&1 || echo "(no nvidia-smi)"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv 2>&1 | tail -n +1
nproc; free -g 2>/dev/null | head -2
timeout 120 "$PY" - <<'EOF' || echo "VERSION CHECK FAILED (rc=$?)"
import importlib, importlib.metadata as md, sys
print(sys.version.split()[0], sys.executable)
for p in ["torch", "transformers", "peft", "trl", "datasets", "accelerate", "tokenizers", "safetensors",
          "huggingface_hub", "numpy", "pandas", "pyarrow", "scipy", "matplotlib", "seaborn", "fsspec",
          "regex", "packaging", "typing_extensions", "pydantic", "jsonschema", "math-verify", "snakemake",
          "openai", "vllm"]:
    try:
        print(f"  {p:20s} {md.version(p)}")
    except md.PackageNotFoundError:
        print(f"  {p:20s} -")
import torch
print("cuda:", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
for m in ["transformers", "trl", "peft", "datasets", "snakemake", "math_verify", "lossgeom", "lossgeom.cli"]:
    mod = importlib.import_module(m)
    print(f"  import {m:14s} ok  {getattr(mod, '__version__', '')}  {mod.__file__}")
EOF
echo "lossgeom: $(command -v lossgeom); snakemake: $(command -v snakemake) $(snakemake --version 2>&1 | tail -1)"

# ---- 1-3. benchmarks -----------------------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
    TRAINER_ARGS=(--shape toy --steps 6 --warmup 2 --repeats 1)
    GEN_ARGS=(--shape toy --dtype float32 --prompts 8 --prompt-len 16 --new-tokens 16 --hf-batch 8 --reps 1)
    GEO_ARGS=(--layers 2 --adapters 4 --repeat 1 --no-dense --blas-threads 1)
    STUDY_TARGETS=${STUDY_TARGETS:-results/toy/world}
else
    TRAINER_ARGS=(--shape qwen3-4b --bf16 --steps 20 --warmup 4 --repeats 2)
    GEN_ARGS=(--shape qwen3-4b --dtype bfloat16 --prompts 64 --prompt-len 128 --new-tokens 256 --hf-batch 64 --reps 2)
    GEO_ARGS=(--blas-threads 16)
    STUDY_TARGETS=${STUDY_TARGETS:-}
fi
BENCHES=${BENCHES-trainer,generation,geometry}
case ",$BENCHES," in *,trainer,*)
    stage bench_trainer 170 "$OUT/bench_trainer.log" "$PY" benchmarks/bench_trainer.py "${TRAINER_ARGS[@]}" ;; esac
case ",$BENCHES," in *,generation,*)
    stage bench_generation 130 "$OUT/bench_generation.log" \
        "$PY" benchmarks/bench_generation.py "${GEN_ARGS[@]}" --json "$OUT/bench_generation.json" ;; esac
case ",$BENCHES," in *,geometry,*)
    stage bench_geometry 100 "$OUT/bench_geometry.log" "$PY" benchmarks/bench_geometry.py "${GEO_ARGS[@]}" ;; esac

# ---- 4. the default study in bf16 ----------------------------------------------------------------
STUDY_CMD=(snakemake $STUDY_TARGETS --cores 16 --scheduler greedy --keep-going --directory "$STUDY_DIR"
           --config 'model={dtype: bfloat16}' 'training={precision: bf16}')
SHARE=()
if [ "$GPU_JOBS" -gt 1 ] && nvidia-smi -L >/dev/null 2>&1; then
    SHARE=(env SLURM_JOB_ID=device-check-shared-gpu LOSSGEOM_NUM_GPUS="$GPU_JOBS")
fi
rm -rf "$STUDY_DIR" && mkdir -p "$STUDY_DIR"
TIME=(); [ -x /usr/bin/time ] && TIME=(/usr/bin/time -v -o "$STUDY_DIR/time-v.txt")
MON=""
if nvidia-smi -L >/dev/null 2>&1; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 2 >/tmp/gpu-util.csv 2>&1 &
    MON=$!
fi
echo "study: ${SHARE[*]} ${STUDY_CMD[*]}"
stage study $(($(left) - 25)) "$OUT/study.log" "${SHARE[@]}" "${TIME[@]}" "${STUDY_CMD[@]}"
[ -n "$MON" ] && kill "$MON" 2>/dev/null
grep -E "Elapsed \(wall|Maximum resident|Exit status" "$STUDY_DIR/time-v.txt" 2>/dev/null
awk -F', *' 'NR > 1 && $2 ~ /%/ {u = $2 + 0; m = $3 + 0; n++; s += u; if (u > mu) mu = u; if (m > mm) mm = m}
     END {if (n) printf "GPU during the study: %d samples, mean util %.0f %%, max util %d %%, max memory %d MiB\n", n, s / n, mu, mm}' \
    /tmp/gpu-util.csv 2>/dev/null
if [ -f "$STUDY_DIR/results/claims.tsv" ] && [ "$(left)" -gt 45 ]; then
    stage report $(($(left) - 20)) "$STUDY_DIR/report.log" snakemake --cores 1 --directory "$STUDY_DIR" \
        --config 'model={dtype: bfloat16}' 'training={precision: bf16}' --report "$STUDY_DIR/results/report.html"
fi
# the tables, figures, adapters, eval/lmc/cka outputs and logs; not checkpoints or the toy models
cp /tmp/gpu-util.csv "$STUDY_DIR/" 2>/dev/null
( cd "$STUDY_DIR" && tar czf "$OUT/study.tgz" --exclude=results/checkpoints --exclude=results/toy/models \
      results .snakemake/log gpu-util.csv time-v.txt report.log 2>/dev/null )
if [ "$(stat -c %s "$OUT/study.tgz" 2>/dev/null || echo 0)" -gt 16000000 ]; then
    echo "study.tgz over 16 MB: keeping tables, figures and logs only"
    ( cd "$STUDY_DIR" && find results .snakemake/log gpu-util.csv time-v.txt \( -name '*.tsv' -o -name '*.json' -o -name '*.png' \
          -o -name '*.log' -o -name '*.csv' -o -name '*.html' -o -name '*.txt' \) -not -path 'results/checkpoints/*' -size -4M \
          | tar czf "$OUT/study.tgz" -T - )
fi
ls -la "$OUT/study.tgz" 2>/dev/null
echo "study: $(find "$STUDY_DIR/results" -type f 2>/dev/null | wc -l) files; claims.tsv:"
head -n 40 "$STUDY_DIR/results/claims.tsv" 2>/dev/null | cut -c1-220
echo "=== summary (total $(now) s of ${LIMIT} s)"
printf '%s' "$SUMMARY"
sleep 1
