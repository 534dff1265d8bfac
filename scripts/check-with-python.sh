#!/usr/bin/env bash
# Check conversions with the real frameworks (not part of CI: needs torch and paddle).
# Converts the shipped fixtures across layouts with swav-convert, then loads them with
# torch.load(weights_only=True) + load_state_dict(strict=True), safetensors, and paddle.load +
# set_state_dict, and compares the model outputs with the fixtures' references.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${BENCH_VENV:-/var/tmp/swav-bench/venv}"
. scripts/venv.sh
python_venv "$VENV" numpy safetensors torch paddle=paddlepaddle
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
. scripts/bins.sh
swav_bins --bins
bin=$BIN_DIR/swav-convert
F=tests/fixtures
$bin "$F/passl_swav_tiny_epoch_3.pd" "$out/swav.pth" > /dev/null        # PASSL trainer checkpoint -> torch
$bin "$F/fair_swav_tiny.pth.tar" "$out/swav.pdparams" > /dev/null       # facebookresearch -> PASSL
$bin "$F/passl_swav_tiny.pdparams" "$out/swav_torch.safetensors" --layout torch > /dev/null
"$VENV/bin/python" scripts/check_converted.py "$out"
