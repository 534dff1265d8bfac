#!/usr/bin/env bash
# The offline demo on files the repo ships: PASSL checkpoint -> PyTorch, -> safetensors (Burn
# layout, zstd), backbone extraction, and the PyTorch original back to PASSL, with inspection.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-demo-out}"
mkdir -p "$out"
cargo build --release --locked --bins -q
bin=target/release
F=tests/fixtures
$bin/swav-convert --inspect "$F/passl_swav_tiny_epoch_3.pd" | head -12
$bin/swav-convert "$F/passl_swav_tiny_epoch_3.pd" "$out/swav_tiny.pth"
$bin/swav-convert "$F/passl_swav_tiny_epoch_3.pd" "$out/swav_tiny.safetensors.zst"
$bin/swav-convert "$F/fair_swav_tiny.pth.tar" "$out/swav_tiny.pdparams" --dtype f32
$bin/swav-extract "$F/passl_swav_tiny_epoch_3.pd" --remove-prefix -o "$out/resnet_backbone.pth"
$bin/swav-convert --inspect "$out/resnet_backbone.pth" | head -4
$bin/swav-train make-synthetic "$out/synthetic" --train-per-class 50 --val-per-class 10
$bin/swav-train bench-data --data "$out/synthetic/train" --size-crops 64,32 --batch-size 50 --batches 5
echo "demo: outputs in $out/"
