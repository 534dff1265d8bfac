#!/usr/bin/env bash
# Benchmark the multi-crop image pipeline (2x224 + 6x96) against the Python peer
# (torchvision + Pillow with facebookresearch/swav's exact transforms, one process, one thread)
# on the same real JPEG photos (tests/fixtures/photos, ~500x375), in one run.
# Prints images/s per core for both and the ratio (target >= 5x torchvision, >= 150 images/s
# per core), and our images/s with all cores.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${BENCH_DIR:-/var/tmp/swav-bench}"
VENV="${BENCH_VENV:-$WORK/venv}"
SECONDS_PEER="${SECONDS_PEER:-20}"
mkdir -p "$WORK/photos"
. scripts/venv.sh
python_venv "$VENV" numpy PIL=pillow torch torchvision
# 200 images: the five photos, 40 times.
for i in $(seq 0 39); do for f in tests/fixtures/photos/*.jpg; do cp -n "$f" "$WORK/photos/$(basename "$f" .jpg)_$i.jpg"; done; done
. scripts/bins.sh
swav_bins --bins
peer=$("$VENV/bin/python" scripts/peer_multicrop.py "$WORK/photos" "$SECONDS_PEER")
one=$("$BIN_DIR"/swav-train bench-data --data "$WORK/photos" --workers 1 --batch-size 20 --batches 15 --json)
all=$("$BIN_DIR"/swav-train bench-data --data "$WORK/photos" --batch-size 20 --batches 30 --json)
python3 - "$peer" "$one" "$all" <<'PY'
import json, sys, os
peer, one, allc = float(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
ours = one["images_per_second"]
print(f"multi-crop 2x224+6x96 on ~500x375 JPEGs: torchvision+Pillow {peer:.1f} images/s/core, "
      f"swav-rs {ours:.1f} images/s/core: {ours/peer:.1f}x (target >= 5x, >= 150/core) "
      f"{'ok' if ours >= 150 and ours / peer >= 5 else 'MISSED'}; all {allc['workers']} cores: {allc['images_per_second']:.1f} images/s")
PY
