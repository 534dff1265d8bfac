#!/usr/bin/env bash
# GPU check (a machine with an NVIDIA GPU, the CUDA toolkit's NVRTC, PyTorch + torchvision):
#  1. parity: one SwAV step of the fixture model on the GPU against PyTorch's reference
#     (tests/fixtures/swav_step_tiny.safetensors: loss and codes);
#  2. speed: fixed-shape training steps (ResNet-50, 2x224 + 6x96, batch $BATCH, LARS) of
#     swav-train and of a PyTorch reimplementation of main_swav.py's step
#     (scripts/peer_swav_train.py --steps), images/s of both and the ratio.
# Binary: built elsewhere with `cargo build --release --features cuda --bin swav-train` and
# passed as $SWAV_TRAIN (default target/release/swav-train).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${SWAV_TRAIN:-target/release/swav-train}"
DEVICE="${DEVICE:-cuda:0}"
BATCH="${BATCH:-64}"
STEPS="${STEPS:-10}"
PY="${PYTHON:-python3}"
F=tests/fixtures
echo "== parity (one step, fixture model, $DEVICE)"
"$BIN" check-step --weights $F/fair_swav_tiny.pth.tar --reference $F/swav_step_tiny.safetensors --device "$DEVICE"
echo "== speed: ResNet-50, 2x224+6x96, batch $BATCH, $STEPS steps"
ours=$("$BIN" bench-step -c configs/swav/swav_r50_100ep.yaml -o dataloader.train.sampler.batch_size=$BATCH \
  --steps "$STEPS" --device "$DEVICE")
echo "swav-train: $ours"
peer_dev="cpu"; [[ "$DEVICE" == cuda* ]] && peer_dev="cuda:${DEVICE#cuda:}"
peer=$("$PY" scripts/peer_swav_train.py --data . --steps "$STEPS" --device "$peer_dev" --batch-size "$BATCH" \
  --depth 50 --width 64 --hidden 2048 --feat 128 --prototypes 3000 --size-crops 224 96 --nmb-crops 2 6)
echo "pytorch:    $peer"
"$PY" - "$ours" "$peer" <<'PY'
import json, sys
o, p = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ratio swav-train / pytorch: {o['images_per_second'] / p['images_per_second']:.2f}x "
      f"({o['images_per_second']:.1f} vs {p['images_per_second']:.1f} images/s)")
PY
