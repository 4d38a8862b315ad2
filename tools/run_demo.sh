#!/usr/bin/env bash
# Quick start, command 1: the real demo on the embedded dataset, on the CPU.
#   1. semi-supervised training of HierVL (tiny random-init CLIP, configs/demo/hiervl_demo.yaml);
#   2. evaluation of the EMA teacher on hiervl_demo_val with the per-class IoU table;
#   3. Visualizer pictures of predictions (next to the ground truth) in <output>/pictures.
# Usage: bash tools/run_demo.sh [output folder (default output/demo)] [extra config opts...]
# A second run with the same folder resumes the training where it stopped.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=$(bash "$repo/tools/setup_env.sh" | tail -n 1)
cd "$repo"
out=${1:-output/demo}
shift || true
config=configs/demo/hiervl_demo.yaml
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${MKL_NUM_THREADS:-2}

echo "[demo] 1/3 training -> $out"
"$py" train_net.py --config-file "$config" --resume OUTPUT_DIR "$out" "$@"

echo "[demo] 2/3 evaluation of $out/model_final.pth"
"$py" train_net.py --config-file "$config" --eval-only \
  OUTPUT_DIR "$out" MODEL.WEIGHTS "$out/model_final.pth" "$@"

echo "[demo] 3/3 pictures -> $out/pictures"
"$py" demo/demo.py --config-file "$config" --dataset hiervl_demo_val --limit 8 --show-gt \
  --output "$out/pictures" --opts MODEL.WEIGHTS "$out/model_final.pth" "$@"
echo "[demo] done: metrics in $out/inference, pictures in $out/pictures"
