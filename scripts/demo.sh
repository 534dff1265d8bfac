#!/usr/bin/env bash
# The README's main job, offline, on what the repo ships and makes:
#  1. checkpoints: a PASSL trainer checkpoint to PyTorch and to safetensors, the facebookresearch
#     original back to PASSL, a backbone extracted (tests/fixtures/);
#  2. SwAV pretraining of a tiny ResNet on the built-in synthetic image set, on the CPU
#     (configs/swav/swav_tiny_cpu.yaml: 100 epochs, ~6 min on 2 cores; `epochs=6` for a smoke run of under a minute);
#  3. the backbone extracted from the training checkpoint (PASSL's .pdparams and torchvision names);
#  4. k-NN and linear evaluation of the SwAV features against the same network with random weights.
# Usage: scripts/demo.sh [OUT] [extra swav-train -o overrides...]
#   e.g. on a GPU: FEATURES=cuda scripts/demo.sh demo-gpu device=cuda:0
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-demo-out}"
shift || true
mkdir -p "$out"
. scripts/bins.sh
swav_bins --bins ${FEATURES:+--features "$FEATURES"}
bin=$BIN_DIR
F=tests/fixtures

echo "== 1. checkpoints"
$bin/swav-convert "$F/passl_swav_tiny_epoch_3.pd" "$out/swav_tiny.pth"
$bin/swav-convert "$F/passl_swav_tiny_epoch_3.pd" "$out/swav_tiny.safetensors.zst"
$bin/swav-convert "$F/fair_swav_tiny.pth.tar" "$out/swav_tiny.pdparams" --dtype f32
$bin/swav-extract "$F/passl_swav_tiny_epoch_3.pd" --remove-prefix -o "$out/resnet_backbone.pth"

echo "== 2. pretraining (swav-train -c configs/swav/swav_tiny_cpu.yaml)"
overrides=(-o "output_dir=$out/pretrain")
for o in "$@"; do overrides+=(-o "$o"); done
if [[ -d "$out/pretrain/checkpoints" ]]; then
  echo "(resuming $out/pretrain)"; overrides+=(--resume)
fi
$bin/swav-train -c configs/swav/swav_tiny_cpu.yaml "${overrides[@]}"

echo "== 3. backbone from the training checkpoint"
$bin/swav-extract "$out/pretrain" --remove-prefix -o "$out/swav_backbone.pdparams"
$bin/swav-extract "$out/pretrain" --remove-prefix -o "$out/swav_backbone.pth"

echo "== 4. evaluation on the synthetic set (val: 200 images, 10 classes, chance 10%)"
data="$out/pretrain/synthetic"
eval_args=(--data "$data" --resize 64 --size 64)
knn() { $bin/swav-lincls knn "${eval_args[@]}" "$@" --json 2>/dev/null | sed 's/.*"top1":\([0-9.]*\).*/\1/'; }
lin() { $bin/swav-lincls train "${eval_args[@]}" --train-size 64 --cache-features --epochs 30 --lr 0.1 \
        --output-dir "$out/lincls-$1" "${@:2}" 2>/dev/null | tail -1 | sed 's/.*"top1":\([0-9.]*\).*/\1/'; }
random=(--random-init 18 --width 16)
k_swav=$(knn --pretrained "$out/swav_backbone.pth"); k_rand=$(knn "${random[@]}")
l_swav=$(lin swav --pretrained "$out/swav_backbone.pth"); l_rand=$(lin random "${random[@]}")
printf '%-28s %10s %10s\n' "top-1 (%)" "k-NN" "linear"
printf '%-28s %10s %10s\n' "SwAV (swav-train)" "$k_swav" "$l_swav"
printf '%-28s %10s %10s\n' "random weights" "$k_rand" "$l_rand"
# Margins, in standard errors of a difference of two accuracies on the 200 validation images.
awk -v ks="$k_swav" -v kr="$k_rand" -v ls="$l_swav" -v lr="$l_rand" 'BEGIN {
  split("k-NN linear", name, " "); s[1] = ks; r[1] = kr; s[2] = ls; r[2] = lr
  for (i = 1; i <= 2; i++) {
    a = s[i] / 100; b = r[i] / 100; se = 100 * sqrt(a * (1 - a) / 200 + b * (1 - b) / 200); d = s[i] - r[i]
    v = d > 3 * se ? "SwAV wins clearly" : (d > -3 * se ? "no clear win (within 3 standard errors)" : "random weights win")
    printf "%-8s SwAV - random = %+.1f points (%+.1f standard errors): %s\n", name[i], d, d / se, v
  }
}'
$bin/swav-train plot "$out/pretrain" >/dev/null
echo "demo: outputs in $out/ (training curves: $out/pretrain/training.png)"
