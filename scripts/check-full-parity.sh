#!/usr/bin/env bash
# Full-size ResNet-50 parity (outside CI: needs torch + paddle and ~1.5 GB of disk): generate the
# full SwAV fixtures with tests/fixtures/generate/make_fixtures.py --config full (PyTorch and
# PaddlePaddle compute the references), run every model file through `swav-lincls features
# --tensors`, and compare features, embedding and scores with both frameworks' outputs.
# Usage: scripts/check-full-parity.sh [FIXTURE_DIR]   (reuses FIXTURE_DIR when it has the files)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-${BENCH_VENV:-/var/tmp/swav-bench/venv}/bin/python}"
dir="${1:-/var/tmp/swav-full-fixtures}"
if [[ ! -f "$dir/reference_full.safetensors" ]]; then
  mkdir -p "$dir"
  "$PY" tests/fixtures/generate/make_fixtures.py "$dir" --seed 0 --config full
fi
. scripts/bins.sh
swav_bins --bins
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for f in "$dir"/*.pdparams "$dir"/*.pd "$dir"/*.pth "$dir"/*.pth.tar; do
  [[ -f "$f" ]] || continue
  name=$(basename "$f")
  "$BIN_DIR"/swav-lincls features --pretrained "$f" --tensors "$dir/reference_full.safetensors" \
    --batch-size 2 -o "$out/$name.safetensors" 2>/dev/null >/dev/null
done
"$PY" - "$dir/reference_full.safetensors" "$out" <<'PY'
import os, sys
import numpy as np
from safetensors.numpy import load_file
ref = load_file(sys.argv[1])
worst = 0.0
for name in sorted(os.listdir(sys.argv[2])):
    got = load_file(os.path.join(sys.argv[2], name))
    half = "fp16" in name or "bf16" in name
    row = []
    # A backbone alone has no head: its features are compared, nothing else.
    keys = ("features", "embedding", "scores") if "scores" in got else ("features",)
    for key in keys:
        for src in ("", "paddle."):
            want = ref[src + key]
            d = float(np.abs(got[key] - want).max())
            # f32 weights: 1e-4 absolute. Half-precision weights are rounded (the references come
            # from the f32 model): 1% of the largest value.
            tol = 1e-2 * float(np.abs(want).max()) if half else 1e-4
            row.append(f"{src or 'torch.'}{key} {d:.1e}")
            assert d <= tol, f"{name}: {src}{key} differs by {d} (tolerance {tol:.1e})"
            if not half:
                worst = max(worst, d)
    print(f"{name:45s} " + "  ".join(row))
print(f"all within tolerance (1e-4 for f32 weights, 1% of the largest value for half-precision weights); "
      f"worst f32 difference {worst:.1e}")
PY
