#!/usr/bin/env bash
# The GPU rows of docs/performance.md in one command, on a machine where the project already runs (installs nothing).
#
#   bash benchmarks/gpu_check.sh OUTPUT_DIR
#
# Writes into OUTPUT_DIR: nvidia-smi.txt, train_throughput.md/.json (Lightning vs plain loop, 160/192/224 px,
# bf16 + channels_last, without torch.compile; then with compile at 160 and 224), end_to_end.md/.json (the fit
# path from a generated .ffcv at 160 px, batch 256), loader_throughput.md (the loader table of docs/data-loading.md
# on all of this machine's cores) and *.log (stderr). Estimated ~12 minutes on one H100; the steps are independent,
# and a failed one does not stop the others (the exit status says if any failed).
# Knobs (environment): PYTHON (default: python), SKIP_COMPILE=1 (drops the torch.compile rows, ~4 min less),
# E2E_ARGS (extra end_to_end.py arguments, e.g. "--per-class 200 --steps 80").
set -uo pipefail

out=${1:?usage: bash benchmarks/gpu_check.sh OUTPUT_DIR}
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python}
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline
mkdir -p "$out"
cd "$repo" || exit 1
status=0

step() {  # step NAME COMMAND...: stdout -> NAME.md (and the terminal), stderr -> NAME.log
    local name=$1
    shift
    echo "== $name: $*"
    if ! "$@" 2>"$out/$name.log" | tee "$out/$name.md"; then
        echo "!! $name failed: see $out/$name.log" >&2
        status=1
    fi
}

# Every benchmark falls back to its CPU mode without CUDA: refuse instead of timing the wrong thing for minutes.
nvidia-smi >"$out/nvidia-smi.txt" 2>&1 || { echo "nvidia-smi failed: no GPU here (see $out/nvidia-smi.txt)" >&2; exit 1; }
"$python" -c 'import torch, lightning
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("torch", torch.__version__, "lightning", lightning.__version__, torch.cuda.get_device_name())' \
    >>"$out/nvidia-smi.txt" 2>&1 || { echo "no CUDA in $python: see $out/nvidia-smi.txt" >&2; exit 1; }

step train_throughput "$python" benchmarks/train_throughput.py --no-compile --json "$out/train_throughput.json"
if [ "${SKIP_COMPILE:-0}" != 1 ]; then
    step train_throughput_compile "$python" benchmarks/train_throughput.py --compile-only --resolutions 160 224 \
        --repeats 2 --json "$out/train_throughput_compile.json"
fi
# shellcheck disable=SC2086
step end_to_end "$python" benchmarks/end_to_end.py --workdir "$out/e2e_data" --json "$out/end_to_end.json" ${E2E_ARGS:-}
step loader_throughput "$python" benchmarks/loader_throughput.py --workers "$(nproc)" --batch-size 256 \
    --images-per-class 500 --image-sides 333 500
rm -rf "$out/e2e_data/images"  # the JPEGs; the .ffcv stays for a rerun with --data-dir
exit $status
