#!/usr/bin/env bash
# User-space instructions per operation of the data plane, pure Python against compiled:
#   bash hack/mypyc-count.sh [TREE...]      (default: this checkout)
# For each source tree (a checkout, with or without the mypyc .so files beside the .py: setup.py's
# COMPILED, the connection core and the HTTP request path), one
# data plane runs under callgrind with instrumentation off until the load starts; each load
# phase is then counted on its own (callgrind_control dumps and zeroes between phases):
#   hs      2,000 WS handshakes (open + close), 50 at a time
#   small   64 B echo on 100 connections, a short and a long run: the difference divided by
#           the difference in messages cancels the 100 handshakes both runs include
#   bulk    64 KiB echo on 10 connections, the same way
# Load client and backend: the perfcheck C client and picows echo backend
# (../shared/perfcheck, its scratch venv made by its run.sh). Instruction counts are the
# figure to compare; wall time under valgrind means nothing. About 3 minutes per tree.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
perf=${PERFCHECK:-$here/../shared/perfcheck}
[ -d "$perf" ] || perf=/work/shared/perfcheck
scratch="${XDG_CACHE_HOME:-$HOME/.cache}/wslb-perfcheck"
wsb=$scratch/wsb
[ -x "$wsb" ] || cc -O2 -o "$wsb" "$perf/wsb.c"
[ -x "$scratch/venv/bin/python" ] || { echo "run bash $perf/run.sh once first" >&2; exit 2; }
py=$here/.venv/bin/python
out=$(mktemp -d /tmp/wslb-count.XXXXXX)
BACK=27911 PORT=27913 ADMIN=27914
trees=("$@"); [ ${#trees[@]} -gt 0 ] || trees=("$here")

cat >"$out/wslb.yaml" <<EOF
version: count
loadBalancer:
  name: count
  limits: {maxConnections: 1000000, newConnectionsPerSecond: 1000000}
listeners:
  - name: ws
    protocol: HTTP
    address: 127.0.0.1
    port: $PORT
    idleTimeoutSeconds: 3600
    accessLog: {enabled: false}
    limits: {maxConnections: 1000000, newConnectionsPerSecond: 1000000, maxMessageBytes: 16777216}
    backends: {endpoints: [{address: 127.0.0.1, port: $BACK}]}
EOF

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

wait_port() {
  for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2; return 1
}

total() { awk '/^(summary|totals):/ {print $2; exit}' "$1"; }
# memcpy's own count: valgrind counts each byte of a `rep movsb` copy as one instruction, so
# the copies of received data (uvloop's read into a bytes object) dominate bulk counts.
memcpy() {
  callgrind_annotate --threshold=100 "$1" 2>/dev/null \
    | awk '/memmove-vec-unaligned-erms.S:__memcpy/ {gsub(",", "", $1); s += $1} END {print s + 0}'
}
load() { "$wsb" -p "$PORT" "$@"; }
count() { sed -nE 's/.*(cycles|msgs)=([0-9]+).*/\2/p' <<<"$1"; }

"$scratch/venv/bin/python" "$perf/perf_echo_backend.py" "$BACK" >"$out/backend.log" 2>&1 &
pids+=($!)
wait_port "$BACK"

for tree in "${trees[@]}"; do
  tag=$(basename "$tree")
  where=$(cd "$tree" && "$py" -c 'import dataplane.relay as r, dataplane.frames as f; print(r.__file__.rsplit(".", 1)[1], f.__file__.rsplit(".", 1)[1])')
  (cd "$tree" && exec valgrind --tool=callgrind --instr-atstart=no \
      --callgrind-out-file="$out/$tag.%p.out" \
      "$py" -m dataplane.cli --config "$out/wslb.yaml" --admin "127.0.0.1:$ADMIN" \
      --workers 1 --no-watch --log-level WARNING) >"$out/$tag.log" 2>&1 &
  vg=$!
  pids+=($vg)
  wait_port "$PORT"
  callgrind_control -i on "$vg" >/dev/null 2>&1
  phase() {  # name, wsb args...: run the load, dump the counters, print "count instructions"
    local name=$1; shift
    callgrind_control -z "$vg" >/dev/null 2>&1
    local said; said=$(load "$@")
    callgrind_control -d "$name" "$vg" >/dev/null 2>&1
    local file; file=$(ls -t "$out/$tag.$vg.out".* | head -1)
    echo "$(count "$said") $(total "$file") $(memcpy "$file")"
  }
  load -m hs -c 50 -d 60 -n 200 >/dev/null  # warm-up, counted nowhere
  read -r n ir _ < <(phase hs -m hs -c 50 -d 300 -n 2000)
  read -r s1 i1 _ < <(phase small1 -m echo -c 100 -D 1 -s 64 -d 5)
  read -r s2 i2 _ < <(phase small2 -m echo -c 100 -D 1 -s 64 -d 15)
  read -r b1 j1 c1 < <(phase bulk1 -m echo -c 10 -D 1 -s 65536 -d 5)
  read -r b2 j2 c2 < <(phase bulk2 -m echo -c 10 -D 1 -s 65536 -d 15)
  kill "$vg"; wait "$vg" 2>/dev/null || true
  awk -v t="$tag" -v w="$where" -v n="$n" -v ir="$ir" -v s1="$s1" -v i1="$i1" -v s2="$s2" \
      -v i2="$i2" -v b1="$b1" -v j1="$j1" -v b2="$b2" -v j2="$j2" -v c1="$c1" -v c2="$c2" 'BEGIN { split(w, a, " ")
    printf "%s [relay.%s frames.%s]: per WS handshake %.1fk (%d); per 64 B message %.2fk (%d-%d msgs); per 64 KiB message %.1fk, %.1fk without memcpy (%d-%d msgs)\n",
      t, a[1], a[2], ir / n / 1000, n, (i2 - i1) / (s2 - s1) / 1000, s1, s2, (j2 - j1) / (b2 - b1) / 1000, (j2 - c2 - j1 + c1) / (b2 - b1) / 1000, b1, b2 }'
done
echo "callgrind files: $out"
