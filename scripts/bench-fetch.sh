#!/usr/bin/env bash
# Benchmark swav-fetch against curl over loopback, and check that a resumed download re-sends
# none of the bytes already on disk.
#
# Serves a 1 GiB random file from 127.0.0.1 with nginx (Debian's nginx-light: sendfile, Range,
# ETag; started here on a free port, stopped on exit) and prints, best of three each: curl's
# time, ours (download + SHA-256 + fsync + atomic install into the cache), the ratio (target
# >= 0.9x curl's throughput); then kills a download half-way, resumes it, and prints how many
# bytes the server sent in all against the file size. The page cache is flushed (`sync`)
# before each timed run, so no run pays for the previous one's writes.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${BENCH_DIR:-/var/tmp/swav-bench}/fetch"
mkdir -p "$WORK/www"
FILE="$WORK/www/blob.bin"
[ -f "$FILE" ] || head -c $((1 << 30)) /dev/urandom > "$FILE"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "bench-fetch: nginx not found (apt-get install nginx-light)" >&2; exit 2; }
. scripts/bins.sh
swav_bins --bins
BIN=$BIN_DIR/swav-fetch
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOG="$WORK/access.log"; : > "$LOG"
cat > "$WORK/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 64; }
http {
  access_log off;
  log_format ranges '\$http_range \$status \$body_bytes_sent';
  sendfile on;
  tcp_nopush on;
  client_body_temp_path $WORK/tmp; proxy_temp_path $WORK/tmp; fastcgi_temp_path $WORK/tmp;
  uwsgi_temp_path $WORK/tmp; scgi_temp_path $WORK/tmp;
  types { application/octet-stream bin; }
  server {
    listen 127.0.0.1:$PORT;
    root $WORK/www;
    access_log $LOG ranges;
  }
}
CONF
mkdir -p "$WORK/tmp"
"$NGINX" -p "$WORK" -c "$WORK/nginx.conf" & SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
URL="http://127.0.0.1:$PORT/blob.bin"
for _ in $(seq 50); do curl -s -o /dev/null -r 0-0 "$URL" && break; sleep 0.1; done
SIZE=$(stat -c %s "$FILE")
cat "$FILE" > /dev/null

best() { for _ in 1 2 3; do "$@"; done | sort -n | head -1; }
t_curl() { rm -f "$WORK/curl.out"; sync; /usr/bin/time -f %e -o "$WORK/t" curl -s --fail -o "$WORK/curl.out" "$URL"; cat "$WORK/t"; }
t_ours() { rm -rf "$WORK/cache"; sync; /usr/bin/time -f %e -o "$WORK/t" "$BIN" --url "$URL" --cache-dir "$WORK/cache" -q > /dev/null; cat "$WORK/t"; }
curl_s=$(best t_curl)
ours_s=$(best t_ours)
python3 - "$SIZE" "$curl_s" "$ours_s" <<'PY'
import sys
size, c, o = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print(f"1 GiB from nginx over loopback: curl {c:.2f} s ({size/c/1e6:.0f} MB/s), swav-fetch {o:.2f} s ({size/o/1e6:.0f} MB/s) "
      f"incl. sha256 + fsync; ratio {c/o:.2f}x curl (target >= 0.9) {'ok' if c/o >= 0.9 else 'MISSED'}")
PY

# Resume: kill half-way (throttled by a slow reader is not needed: kill after a fraction of the time).
rm -rf "$WORK/cache"; : > "$LOG"
"$BIN" --url "$URL" --cache-dir "$WORK/cache" -q > /dev/null & PID=$!
half=$(python3 -c "print(max(0.05, $ours_s / 2))")
sleep "$half"; kill -9 $PID 2>/dev/null || true; wait $PID 2>/dev/null || true
on_disk=$(find "$WORK/cache" -name '*.part' -printf '%s\n' | sort -n | tail -1)
"$BIN" --url "$URL" --cache-dir "$WORK/cache" --json -q > "$WORK/resume.json"
python3 - "$SIZE" "${on_disk:-0}" "$LOG" "$WORK/resume.json" <<'PY'
import json, sys
size, on_disk, log, res = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], json.load(open(sys.argv[4]))
lines = [l.split() for l in open(log) if l.strip()]
resumed = [l for l in lines if l[1] == "206"]
start = int(resumed[-1][0].split("=")[1].rstrip("-")) if resumed else 0
resent = max(0, on_disk - start)
print(f"resume: killed with {on_disk} of {size} bytes on disk; the rerun asked for bytes={start}- "
      f"and received {res['received']} bytes: re-sent {resent} of the bytes on disk "
      f"({'ok' if resent == 0 and res['received'] == size - start else 'MISSED'}); status {res['status']}")
PY
