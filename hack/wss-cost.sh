#!/usr/bin/env bash
# The WSS cost table of issue 13 without the bench harness: per-handshake instructions
# (callgrind) and RSS per idle connection for wslb, HAProxy and the bare TLS lab server.
# Bounded: 200 handshakes and 2000 idle connections per row. Needs valgrind and haproxy.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
N_HS=${N_HS:-200}
N_IDLE=${N_IDLE:-2000}
for server in "wslb" "haproxy" "lab --variant front" "lab --variant plain"; do
    # shellcheck disable=SC2086
    $PY hack/wss_cost.py handshakes --server $server -n "$N_HS" 2>/dev/null | tail -1
    # shellcheck disable=SC2086
    $PY hack/wss_cost.py idle --server $server -n "$N_IDLE" 2>/dev/null | tail -1
done
