#!/usr/bin/env bash
# `make bench`: install what the benchmark needs if missing, run it, write BENCHMARKS.md.
# Not part of `make test` or CI. Quick mode for development: BENCH_QUICK=1 make bench
# (short windows; writes bench/results/quick.* and leaves BENCHMARKS.md alone).
# Some rows only, e.g. HTTP: BENCH_TESTS=http,idle-http BENCH_OUT=bench/results/http.json
# make bench (writes bench/results/http.{json,md,png}; BENCHMARKS.md is left alone).
# wslb runs as the image ships it (bench/image_build.py); BENCH_WSLB=checkout runs this
# checkout's own package instead. Other settings: see bench/harness.py's docstring.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

# The project's virtualenv (`make venv`; `make bench VENV=dir` passes another), else python3.
venv="${VENV:-.venv}"
if [ -x "$venv/bin/python" ]; then PY="$venv/bin/python"; else PY=python3; fi

# HAProxy and nginx from Debian's packages (apt-get update once, only when one is missing).
missing=()
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "bench: need root to install ${missing[*]}" >&2; exit 1; fi
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v taskset >/dev/null || { echo "bench: taskset (util-linux) is missing" >&2; exit 1; }
command -v cc >/dev/null || { echo "bench: a C compiler (cc) is missing: it builds bench/httpload.c" >&2; exit 1; }

# picows (the load client and backend) and matplotlib (the plot) into the same Python.
if ! "$PY" -c 'import picows, matplotlib' 2>/dev/null; then
  "$PY" -m pip install -q 'picows>=1.5' 'matplotlib>=3.8'
fi

# wslb as the image ships it (BENCH_WSLB=image, the default): Debian's python3.11 with the
# mypyc-compiled wheel in bench/.build/wslb-venv, rebuilt only when its sources changed.
if [ "${BENCH_WSLB:-image}" = image ]; then
  case ",${BENCH_PROXIES:-wslb}," in *,wslb,*) "$PY" -m bench.image_build >/dev/null ;; esac
fi

if [ "${BENCH_QUICK:-0}" != 0 ]; then
  out="${BENCH_OUT:-bench/results/quick.json}"
  BENCH_OUT="$out" "$PY" -m bench.harness
  "$PY" -m bench.report "$out" --out "${out%.json}.md" --plot "${out%.json}.png"
elif [ -z "${BENCH_OUT:-}" ] || [ "$BENCH_OUT" = bench/results/results.json ]; then
  BENCH_OUT=bench/results/results.json "$PY" -m bench.harness
  "$PY" -m bench.report bench/results/results.json
else
  # Another results file (e.g. a run of some rows only): its report beside it, not BENCHMARKS.md.
  "$PY" -m bench.harness
  "$PY" -m bench.report "$BENCH_OUT" --out "${BENCH_OUT%.json}.md" --plot "${BENCH_OUT%.json}.png"
fi
