#!/usr/bin/env bash
# The GPU rows of docs/performance.md in one command, inside a hard wall-clock budget (installs nothing).
#
#   bash benchmarks/gpu_check.sh [--budget-s 600] [--workdir DIR] OUT        # one CUDA device; refuses without one
#   bash benchmarks/gpu_check.sh --rehearse [--budget-s 300] OUT             # the same steps on the CPU, tiny sizes
#   bash benchmarks/gpu_check.sh --steps fit_path --budget-s 300 OUT         # some steps only (comma-separated)
#
# Steps, in order of value; each gets its weight's share of the budget still left when it starts (time a step
# does not use goes to the later ones), runs under `timeout`, and is recorded in OUT/summary.json as it ends:
#   fit_path          (weight 60) benchmarks/fit_path.py: `resnet-ffcv fit` with configs/p4d_78pct.yaml and size
#                     overrides only (1 device, generated rn50 .ffcv, 3 stages x 2 short epochs, compile, bf16,
#                     EMA, flip TTA), SIGTERM mid-epoch -> exit 75 -> the same command resumes; images/s per stage,
#                     compiles against the plan, time to first step, checkpoint save seconds
#   train_throughput  (weight 20) Lightning vs plain loop, 160/192/224 px, bf16 + channels_last, no compile
#   end_to_end        (weight 12) the fit from the same .ffcv at 160 px: loader- or compute-bound
#   loader_throughput (weight 8)  the loader table of docs/data-loading.md on all of this machine's cores
#   then, only with >= 60 s left: train_throughput's torch.compile rows (160, 224 px), appended to its table.
# OUT holds at most 7 files, what the device tool brings back (<= 8 files, <= 2 folders deep): summary.json (the
# device, the budget, every step's status, seconds, limit and JSON result), fit_path.json, fit_path.md,
# train_throughput.md, end_to_end.md, loader_throughput.md and steps.log (every command and its stderr, the fit
# processes' output included). Data, checkpoints and compile caches live in --workdir (default: a temporary
# directory, deleted at the end). --rehearse runs every step at its smallest size on the CPU (the fit path with
# the aot_eager compile backend): it proves the arguments, files and parsing before a device is touched.
# Knobs (environment): PYTHON (default python3), FIT_ARGS (extra fit_path.py arguments: the test suite's rehearsal
# passes "--arch resnet18", a quicker network for the same steps).
# Exit status: 0 when every step finished and passed its checks, 1 otherwise, 2 on a usage error.
set -uo pipefail

usage="usage: bash benchmarks/gpu_check.sh [--rehearse] [--budget-s S] [--workdir DIR] [--steps A,B,...] OUTPUT_DIR"
all_steps=fit_path,train_throughput,end_to_end,loader_throughput,train_throughput_compile
declare -A weight=([fit_path]=60 [train_throughput]=20 [end_to_end]=12 [loader_throughput]=8)
rehearse=0 budget= work= out= steps=$all_steps
while (($#)); do
    case $1 in
        --rehearse) rehearse=1 ;;
        --budget-s) budget=${2:-}; shift ;;
        --workdir) work=${2:-}; shift ;;
        --steps) steps=${2:-}; shift ;;
        -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
        -*) echo "$usage" >&2; exit 2 ;;
        *) [ -z "$out" ] || { echo "$usage" >&2; exit 2; }; out=$1 ;;
    esac
    shift
done
[ -n "$out" ] || { echo "$usage" >&2; exit 2; }
budget=${budget:-$((rehearse ? 300 : 600))}
if ! [[ $budget =~ ^[0-9]+$ ]] || ((budget < 60)); then
    echo "--budget-s $budget: expected whole seconds >= 60" >&2
    exit 2
fi
for name in ${steps//,/ }; do
    case ,$all_steps, in *,"$name",*) ;; *) echo "--steps: unknown step '$name' (steps: $all_steps)" >&2; exit 2 ;; esac
done
selected() { case ,$steps, in *,"$1",*) return 0 ;; esac; return 1; }
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python3}
export PYTHONPATH="$repo/src${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true
mkdir -p "$out" && out=$(cd "$out" && pwd)
if [ -z "$work" ]; then
    work=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
    trap 'rm -rf "$work"' EXIT
fi
mkdir -p "$work" && work=$(cd "$work" && pwd)
case $work/ in "$out"/*)
    echo "--workdir $work is inside OUT: data and checkpoints must stay out of what comes back" >&2
    exit 2 ;;
esac
cd "$work" || exit 1  # relative paths of a recipe (a run_dir) land here, never in the checkout
log=$out/steps.log
: >"$log"
status=0

# Every benchmark falls back to its CPU mode without CUDA: refuse instead of timing the wrong thing for minutes.
if ((rehearse)); then
    mode=rehearse
    export NUMBA_OPT=${NUMBA_OPT:-0}  # FFCV's pipelines without LLVM's optimization passes: sooner starts, tiny data
    { echo "rehearsal on the CPU: tiny sizes, nothing here is a GPU figure"; lscpu 2>/dev/null | grep -m1 'Model name'
      "$python" -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__)'
    } >"$work/device.txt" 2>&1
else
    mode=gpu
    if ! nvidia-smi >"$work/device.txt" 2>&1; then
        cat "$work/device.txt" >"$log"
        echo "nvidia-smi failed: no GPU here (see $log)" >&2
        exit 1
    fi
    "$python" -c 'import torch, lightning
assert torch.cuda.is_available(), "torch sees no CUDA device"
print("torch", torch.__version__, "lightning", lightning.__version__, torch.cuda.get_device_name())' \
        >>"$work/device.txt" 2>&1
    if (($? != 0)); then
        cat "$work/device.txt" >"$log"
        echo "no CUDA in $python (see $log)" >&2
        exit 1
    fi
fi
cat "$work/device.txt" >>"$log"
"$python" "$repo"/benchmarks/check_summary.py "$out/summary.json" start --mode $mode --budget-s "$budget" \
    --device-file "$work/device.txt" || exit 1

weights_left=0 limit=0
for name in "${!weight[@]}"; do selected "$name" && weights_left=$((weights_left + weight[$name])); done
next_limit() {  # next_limit STEP: sets $limit, this step's share of the budget left (by the weights of those to come)
    local left=$((budget - SECONDS))
    limit=$((left * weight[$1] / weights_left))
    weights_left=$((weights_left - weight[$1]))
}

# run_step NAME TABLE JSON COMMAND...: COMMAND under `timeout $limit`; stderr -> steps.log. TABLE is the markdown
# file in OUT that stdout is copied to ("+FILE": appended), or "=FILE" when COMMAND writes it itself (stdout then
# goes to the log). JSON (or "-") is the step's result file, merged into summary.json.
run_step() {
    local name=$1 table=$2 rc=0 started=$SECONDS state result=()
    [ "$3" = - ] || result=(--json "$3")
    shift 3
    if ((limit < 20)); then
        echo "== $name: skipped, ${limit} s of the budget for it" | tee -a "$log"
        state=skipped rc=1
    else
        echo "== $name (limit ${limit} s, $((budget - SECONDS)) s of the budget left): $*" | tee -a "$log"
        case $table in
            =*) timeout --kill-after=15 "$limit" "$@" >>"$log" 2>&1 || rc=$? ;;
            +*) timeout --kill-after=15 "$limit" "$@" 2>>"$log" | tee -a "$out/${table#+}" || rc=${PIPESTATUS[0]} ;;
            *) timeout --kill-after=15 "$limit" "$@" 2>>"$log" | tee "$out/$table" || rc=${PIPESTATUS[0]} ;;
        esac
        case $rc in 0) state=ok ;; 124 | 137) state=timed_out ;; *) state=failed ;; esac
        echo "== $name: $state after $((SECONDS - started)) s (exit $rc)" | tee -a "$log"
    fi
    ((rc == 0)) || status=1
    "$python" "$repo"/benchmarks/check_summary.py "$out/summary.json" step "$name" --status $state \
        --seconds $((SECONDS - started)) --limit-s "$limit" --md "$out/${table#[=+]}" --command "$*" "${result[@]}"
}

if ((rehearse)); then
    fit=(--rehearse) train=(--smoke --repeats 2) train_compile=(--smoke --compile-only --compile-backend aot_eager)
    e2e=(--smoke) loader=(--smoke)
else
    fit=() train=(--no-compile --repeats 2 --steps 50 --warmup 15) train_compile=(--compile-only --resolutions 160 224)
    e2e=() loader=(--workers "$(nproc)" --batch-size 256 --images-per-class 300 --image-sides 333 500 --repeats 3)
fi

if selected fit_path; then
    next_limit fit_path
    # shellcheck disable=SC2086
    run_step fit_path =fit_path.md "$out/fit_path.json" "$python" "$repo"/benchmarks/fit_path.py "${fit[@]}" \
        --workdir "$work/fit" --json "$out/fit_path.json" --md "$out/fit_path.md" --deadline-s $((limit - 20)) \
        ${FIT_ARGS:-}
fi
if selected train_throughput; then
    next_limit train_throughput
    run_step train_throughput train_throughput.md "$work/train_throughput.json" \
        "$python" "$repo"/benchmarks/train_throughput.py "${train[@]}" --json "$work/train_throughput.json"
fi
if selected end_to_end; then
    next_limit end_to_end
    data=(--workdir "$work/e2e")
    [ -f "$work/fit/ffcv/train.ffcv" ] && data=(--data-dir "$work/fit/ffcv")  # the fit path's generated .ffcv
    run_step end_to_end end_to_end.md "$work/end_to_end.json" \
        "$python" "$repo"/benchmarks/end_to_end.py "${e2e[@]}" "${data[@]}" --json "$work/end_to_end.json"
fi
if selected loader_throughput; then
    next_limit loader_throughput
    run_step loader_throughput loader_throughput.md - \
        "$python" "$repo"/benchmarks/loader_throughput.py "${loader[@]}" --workdir "$work/loader"
fi
limit=$((budget - SECONDS - 10))
if selected train_throughput_compile && ((limit >= 60)); then  # optional: only with a minute to spare
    json=$work/train_throughput_compile.json
    run_step train_throughput_compile +train_throughput.md "$json" \
        "$python" "$repo"/benchmarks/train_throughput.py "${train_compile[@]}" --json "$json"
elif selected train_throughput_compile; then
    echo "== train_throughput_compile: not run, $limit s left of the budget (it needs 60)" | tee -a "$log"
    "$python" "$repo"/benchmarks/check_summary.py "$out/summary.json" step train_throughput_compile --status skipped \
        --seconds 0 --limit-s "$limit"
fi
rm -rf "$work/fit/run" "$work/fit/inductor-cache"  # checkpoints and caches; the .ffcv stays for a rerun
echo "== done in $SECONDS s of $budget: $out" | tee -a "$log"
exit $status
