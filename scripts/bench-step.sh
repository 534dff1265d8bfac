#!/usr/bin/env bash
# The CPU training step against PyTorch's, in one run: fixed-shape steps of the tiny config
# (ResNet-18 width 16, 64 images a step: 2x64 + 4x32 crops, LARS) with `swav-train bench-step`
# and with scripts/peer_swav_train.py --steps (facebookresearch/swav main_swav.py's step in PyTorch,
# same model, crops already in memory in both). Prints images/s of both, the ratio (issue target:
# >= 0.5x, stretch 1.0x) and each side's CPU use (of 100% per core).
# BENCH_VENV: a Python with torch and torchvision (made under $BENCH_DIR when absent).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${BENCH_DIR:-/var/tmp/swav-bench}"
VENV="${BENCH_VENV:-$WORK/venv}"
STEPS="${STEPS:-10}"
mkdir -p "$WORK"
. scripts/venv.sh
python_venv "$VENV" numpy PIL=pillow torch torchvision
. scripts/bins.sh
swav_bins --bin swav-train
timed() {  # stdout of the command, then "cpu=NNN%" (user + system over wall)
  /usr/bin/time -f "cpu=%P" -o "$WORK/time.txt" "$@" 2>/dev/null | tail -1
  cat "$WORK/time.txt"
}
peer=$(timed "$VENV/bin/python" scripts/peer_swav_train.py --data . --steps "$STEPS")
ours=$(timed "$BIN_DIR"/swav-train bench-step -c configs/swav/swav_tiny_cpu.yaml --steps "$STEPS")
python3 - "$peer" "$ours" <<'PY'
import json, sys, os
def parse(text):
    lines = text.strip().splitlines()
    return json.loads(lines[0]), lines[1].split("=")[1]
(peer, pcpu), (ours, ocpu) = parse(sys.argv[1]), parse(sys.argv[2])
p, o = peer["images_per_second"], ours["images_per_second"]
print(f"tiny-config training step on {os.cpu_count()} cores: PyTorch {p:.1f} images/s (cpu {pcpu}), "
      f"swav-train {o:.1f} images/s (cpu {ocpu}): {o / p:.2f}x "
      f"(target >= 0.5x: {'ok' if o / p >= 0.5 else 'MISSED'})")
PY
