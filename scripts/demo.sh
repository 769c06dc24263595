#!/usr/bin/env bash
# The whole path on a CPU in a few minutes: generate JPEGs -> write .ffcv -> fit -> validate from the checkpoint
# -> curves. Run from the repository root (make demo). Paths match configs/demo_cpu.yaml (run_dir: demo_output/run).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=demo_output
RUN=$OUT/run
export WANDB_MODE=${WANDB_MODE:-offline}

if [ ! -d "$OUT/images/train" ]; then
  echo "== 1/5 generating a learnable 10-class image set as JPEG files in $OUT/images"
  "$BIN/resnet-ffcv" make-synthetic --root "$OUT/images"
fi
if [ ! -f "$OUT/ffcv/val.ffcv" ]; then
  echo "== 2/5 writing $OUT/ffcv/{train,val}.ffcv with our writer"
  "$BIN/resnet-ffcv" write-dataset --source_dir "$OUT/images" --output_dir "$OUT/ffcv" --num_workers 2
fi

echo "== 3/5 training ResNet-18 on the CPU (configs/demo_cpu.yaml) into $RUN"
rm -rf "$RUN"   # the demo always starts fresh
"$BIN/resnet-ffcv" fit --config configs/demo_cpu.yaml

ckpt="$RUN/checkpoints/best_model.ckpt"
echo "== 4/5 validating from the saved checkpoint $ckpt"
# No logger; the resolved config of this step is saved as $RUN/validate/config.yaml (fit's stays $RUN/config.yaml).
"$BIN/resnet-ffcv" validate --config configs/demo_cpu.yaml --ckpt_path "$ckpt" --trainer.logger false

echo "== 5/5 drawing the curves of $RUN/metrics.csv"
"$BIN/resnet-ffcv" curves "$RUN" --output "$OUT/curves.png"

"$BIN/python" - "$ckpt" <<'PY'
import sys, torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
best = next(s["best_model_score"] for s in ckpt["callbacks"].values() if "best_model_score" in s)
monitor = next(s["monitor"] for s in ckpt["callbacks"].values() if "best_model_score" in s)
print(f"\ndemo finished: best {monitor} during fit {float(best):.1%} (chance 10.0%)")
print(f"checkpoint: {sys.argv[1]}")
PY
echo "run directory: $RUN (summary.json, metrics.csv, config.yaml, checkpoints/, logs/); curves: $OUT/curves.png"
