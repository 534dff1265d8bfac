#!/usr/bin/env bash
# GPU check (a machine with an NVIDIA GPU, the CUDA toolkit's NVRTC, PyTorch + torchvision):
#  1. parity: one SwAV step of the fixture model on the GPU against PyTorch's reference
#     (tests/fixtures/swav_step_tiny.safetensors: loss and codes);
#  2. speed: fixed-shape training steps (ResNet-50, 2x224 + 6x96, batch $BATCH, LARS) of
#     swav-train and of a PyTorch reimplementation of main_swav.py's step
#     (scripts/peer_swav_train.py --steps), images/s of both and the ratio.
# Binary: built elsewhere with `cargo build --release --features cuda --bin swav-train` and
# passed as $SWAV_TRAIN (default target/release/swav-train). With nothing cached, Burn's autotune
# times candidate kernels for every shape in the first step (kept under target/autotune after).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${SWAV_TRAIN:-target/release/swav-train}"
DEVICE="${DEVICE:-cuda:0}"
BATCH="${BATCH:-64}"
STEPS="${STEPS:-10}"
PY="${PYTHON:-python3}"
F=tests/fixtures
# Burn's CUDA backend compiles its kernels with NVRTC at run time and loads libnvrtc by name:
# where the loader does not know it, look in the CUDA toolkit and in PyTorch's CUDA wheels.
if [[ "$DEVICE" == cuda* ]] && ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so'; then
  for d in "${CUDA_PATH:-/usr/local/cuda}"/lib64 /usr/local/cuda*/lib64 \
           $("$PY" -c 'import nvidia, os; [print(os.path.join(p, d, "lib")) for p in nvidia.__path__ for d in os.listdir(p)]' 2>/dev/null); do
    if compgen -G "$d/libnvrtc.so*" >/dev/null; then
      export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break
    fi
  done
fi
if [[ "$DEVICE" == cuda* ]]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi
echo "== parity (one step, fixture model, $DEVICE)"
"$BIN" check-step --weights $F/fair_swav_tiny.pth.tar --reference $F/swav_step_tiny.safetensors --device "$DEVICE"
echo "== speed: ResNet-50, 2x224+6x96, batch $BATCH, $STEPS steps"
ours=$("$BIN" bench-step -c configs/swav/swav_r50_100ep.yaml -o dataloader.train.sampler.batch_size=$BATCH \
  --steps "$STEPS" --device "$DEVICE")
echo "swav-train: $ours"
peer_dev="cpu"; [[ "$DEVICE" == cuda* ]] && peer_dev="cuda:${DEVICE#cuda:}"
peer() {
  "$PY" scripts/peer_swav_train.py --data . --steps "$STEPS" --device "$peer_dev" --batch-size "$BATCH" \
    --depth 50 --width 64 --hidden 2048 --feat 128 --prototypes 3000 --size-crops 224 96 --nmb-crops 2 6 "$@"
}
# PyTorch lets cuDNN run f32 convolutions in TF32 by default; both settings are measured.
peer_default=$(peer)
echo "pytorch (default, TF32 convolutions): $peer_default"
peer_f32=$(peer --no-tf32)
echo "pytorch (--no-tf32, plain f32):       $peer_f32"
"$PY" - "$ours" "$peer_default" "$peer_f32" <<'PY'
import json, sys
o, *peers = (json.loads(a) for a in sys.argv[1:])
for name, p in zip(["pytorch default", "pytorch plain f32"], peers):
    print(f"ratio swav-train / {name}: {o['images_per_second'] / p['images_per_second']:.2f}x "
          f"({o['images_per_second']:.1f} vs {p['images_per_second']:.1f} images/s)")
PY
