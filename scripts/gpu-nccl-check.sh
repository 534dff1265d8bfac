#!/usr/bin/env bash
# NCCL check on one GPU (run after scripts/gpu-check.sh, with the same binary): the tiny SwAV
# config trained for 2 epochs on cuda:0 twice — as one rank without a collective engine, and as
# a group of one rank whose every collective (Sinkhorn-Knopp's sums, the gradients and the loss)
# goes through NCCL (`--collective nccl`). An NCCL sum over one rank is the identity, so both runs
# print the same losses up to the GPU's run-to-run differences; the script fails when they differ
# by more than 1e-3 (relative), or when the NCCL run fails.
# With two GPUs or more it also trains on cuda:0 and cuda:1 as two ranks of one process and as two
# processes (torchrun-style variables on 127.0.0.1, the NCCL id sent at the rendezvous), and
# compares their losses the same way. NCCL refuses two ranks on one GPU, so a one-GPU host cannot
# run this part.
# Binary: `cargo build --release --features cuda --bin swav-train`, passed as $SWAV_TRAIN.
# NCCL: libnccl.so (or .so.12/.so.13) on the loader's path; pip's nvidia-nccl-cu12 ships only
# libnccl.so.2, which this script links as libnccl.so in a temporary folder.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${SWAV_TRAIN:-target/release/swav-train}"
PY="${PYTHON:-python3}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
if ! ldconfig -p 2>/dev/null | grep -q 'libnccl\.so '; then
  for d in /usr/lib/x86_64-linux-gnu "${CUDA_PATH:-/usr/local/cuda}"/lib64 \
           $("$PY" -c 'import nvidia, os; [print(os.path.join(p, d, "lib")) for p in nvidia.__path__ for d in os.listdir(p)]' 2>/dev/null); do
    if [[ -e "$d/libnccl.so.2" ]]; then
      mkdir -p "$out/lib"; ln -sf "$d/libnccl.so.2" "$out/lib/libnccl.so"
      export LD_LIBRARY_PATH="$out/lib:$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break
    fi
  done
fi
run() {
  "$BIN" -c configs/swav/swav_tiny_cpu.yaml --device "$2" -o epochs=2 -o "output_dir=$out/$1" \
    "${@:3}" 2>&1 | grep -E 'event=(start|epoch)' | tee "$out/$1.log"
}
echo "== one rank, no collective engine"
run solo cuda:0 --collective burn-collective
echo "== one rank, every collective through NCCL"
run nccl cuda:0 --collective nccl
compare() {
"$PY" - "$@" <<'PY'
import re, sys
def losses(path):
    return [float(m) for m in re.findall(r"event=epoch .*?\bloss=([0-9.eE+-]+)", open(path).read())]
a, b = losses(sys.argv[1]), losses(sys.argv[2])
assert a and len(a) == len(b), f"epochs: {a} vs {b}"
worst = max(abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a, b))
print(f"epoch losses {sys.argv[1]} {a}, {sys.argv[2]} {b}: largest relative difference {worst:.2e}")
sys.exit(0 if worst < 1e-3 else 1)
PY
}
compare "$out/solo.log" "$out/nccl.log"
gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
if (( gpus < 2 )); then
  echo "== $gpus GPU: NCCL between processes needs two (skipped)"; exit 0
fi
echo "== two ranks of one process, NCCL"
run ranks cuda:0,cuda:1 --collective nccl
echo "== two processes of one rank, NCCL between them"
port=$(( 20000 + RANDOM % 20000 ))
pids=()
for r in 1 0; do
  MASTER_ADDR=127.0.0.1 MASTER_PORT=$port WORLD_SIZE=2 RANK=$r LOCAL_RANK=$r \
    "$BIN" -c configs/swav/swav_tiny_cpu.yaml --device "cuda:$r" -o epochs=2 -o "output_dir=$out/procs" \
    --collective nccl --dist-timeout 120 >"$out/procs$r.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || { cat "$out"/procs?.log; exit 1; }; done
grep -E 'event=(start|epoch)' "$out/procs0.log" | tee "$out/procs.log"
compare "$out/ranks.log" "$out/procs.log"
