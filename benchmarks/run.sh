#!/usr/bin/env bash
# Measures stickyproxy beside its peers (direct, HAProxy, nginx, stock
# Twisted) in one run of the shared harness, so every figure is a ratio
# taken side by side.  Not a test: nothing here passes or fails.
#
#   bash benchmarks/run.sh                        # L4 + L7 targets and peers, 1 round
#   bash benchmarks/run.sh --repeat 3             # medians of 3 interleaved rounds
#   bash benchmarks/run.sh --duration 3 --only 'haproxy-*,stickyproxy-*'
#
# Needs root for apt (haproxy, nginx, wrk, pen) on first use.  The harness
# lives in ../shared/bench (read-only), so it is copied to a scratch folder.
# Results: benchmarks/results/results-<date>.{json,md}.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
harness=${STICKYPROXY_BENCH_HARNESS:-$repo/../shared/bench}
scratch=${STICKYPROXY_BENCH_SCRATCH:-${TMPDIR:-/tmp}/stickyproxy-bench}

mkdir -p "$scratch" "$here/results"
cp -r "$harness"/. "$scratch"/
chmod -R u+w "$scratch"
[ -x "$scratch/.venv/bin/python" ] || bash "$scratch/setup.sh" --no-pypy
# stickyproxy goes into the harness's CPython venv, next to the stock Twisted peers.
"$scratch/.venv/bin/pip" install -q "$repo"

only='haproxy-*,nginx-*,twisted-revproxy,twisted-portforward,stickyproxy-*'
# Relative paths only, so that the results (which record the command line)
# name nothing of this machine.
cp "$here"/stickyproxy-l4.toml "$here"/stickyproxy-l7.toml "$scratch"/
out="results/results-$(date +%Y-%m-%d_%H%M%S).json"
cd "$scratch"
"$scratch/.venv/bin/python" bench.py --only "$only" \
  --target 'stickyproxy-l7={venv}/bin/twistd -n --pidfile= stickyproxy --config {config}' \
  --config-template "stickyproxy-l7=stickyproxy-l7.toml" \
  --sticky 'stickyproxy-l7=cookie-insert:SPSESSION' --layer stickyproxy-l7=L7 \
  --target 'stickyproxy-l4={venv}/bin/twistd -n --pidfile= stickyproxy --config {config}' \
  --config-template "stickyproxy-l4=stickyproxy-l4.toml" \
  --sticky 'stickyproxy-l4=source-ip' --layer stickyproxy-l4=L4 \
  --out "$out" \
  "$@"
cp "$out" "${out%.json}.md" "$here/results/"
