#!/usr/bin/env bash
# The whole path on a CPU in a few minutes: generate JPEGs -> write .ffcv -> fit -> validate from the checkpoint.
# Run from the repository root (make demo). Paths match configs/demo_cpu.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
OUT=demo_output
export WANDB_MODE=${WANDB_MODE:-offline}

if [ ! -d "$OUT/images/train" ]; then
  echo "== 1/4 generating a learnable 10-class image set as JPEG files in $OUT/images"
  "$BIN/resnet-ffcv" make-synthetic --root "$OUT/images"
fi
if [ ! -f "$OUT/ffcv/val.ffcv" ]; then
  echo "== 2/4 writing $OUT/ffcv/{train,val}.ffcv with our writer"
  "$BIN/resnet-ffcv" write-dataset --source_dir "$OUT/images" --output_dir "$OUT/ffcv" --num_workers 2
fi

echo "== 3/4 training ResNet-18 on the CPU (configs/demo_cpu.yaml)"
rm -rf "$OUT/checkpoints" "$OUT/logs"   # the demo always starts fresh
"$BIN/resnet-ffcv" fit --config configs/demo_cpu.yaml

ckpt="$OUT/checkpoints/best_model.ckpt"
echo "== 4/4 validating from the saved checkpoint $ckpt"
# No logger: LightningCLI saves the resolved config.yaml in default_root_dir, so give the step its own folder.
"$BIN/resnet-ffcv" validate --config configs/demo_cpu.yaml --ckpt_path "$ckpt" --trainer.logger false \
  --trainer.default_root_dir "$OUT/validate"

"$BIN/python" - "$ckpt" <<'PY'
import sys, torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
best = next(s["best_model_score"] for s in ckpt["callbacks"].values() if "best_model_score" in s)
monitor = next(s["monitor"] for s in ckpt["callbacks"].values() if "best_model_score" in s)
print(f"\ndemo finished: best {monitor} during fit {float(best):.1%} (chance 10.0%)")
print(f"checkpoint: {sys.argv[1]}")
PY
