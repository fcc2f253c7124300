#!/usr/bin/env bash
# Measures stickyproxy beside its peers (direct, HAProxy, nginx, stock
# Twisted) in one run of the shared harness, so every figure is a ratio
# taken side by side.  Not a test: nothing here passes or fails.
#
#   bash benchmarks/run.sh                        # L4 + L7 targets and peers, 1 round
#   bash benchmarks/run.sh --repeat 3             # medians of 3 interleaved rounds
#   bash benchmarks/run.sh --duration 3 --only 'haproxy-*,stickyproxy-*'
#   bash benchmarks/run.sh --baseline main~5 --repeat 3
#       # also measures the commit main~5 (targets stickyproxy-l7-base and
#       # stickyproxy-l4-base), in the same run: a before/after comparison
#   bash benchmarks/run.sh --workers 2 --only 'haproxy-http-*,stickyproxy-l7*'
#       # also measures the L7 target with 2 workers (stickyproxy-l7-w2)
#   (--baseline and --workers come first; the rest goes to bench.py)
#
# Then memory.py reads each target's memory per idle client connection (the
# same targets, --only and --skip; STICKYPROXY_BENCH_MEMORY=0 leaves it out).
#
# Needs root for apt (haproxy, nginx, wrk, pen) on first use.  The harness
# lives in ../shared/bench (read-only), so it is copied to a scratch folder.
# Results: benchmarks/results/results-<date>.{json,md} (the memory figures
# at the end of the .md, and in results-<date>-memory.json).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
harness=${STICKYPROXY_BENCH_HARNESS:-$repo/../shared/bench}
scratch=${STICKYPROXY_BENCH_SCRATCH:-${TMPDIR:-/tmp}/stickyproxy-bench}

baseline=""
workers=""
while [ $# -gt 0 ]; do
    case "$1" in
        --baseline) baseline=${2:?--baseline needs a git revision}; shift 2 ;;
        --workers) workers=${2:?--workers needs a count}; shift 2 ;;
        *) break ;;
    esac
done

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
targets=(
  --target 'stickyproxy-l7={venv}/bin/twistd -n --pidfile= stickyproxy --config {config}'
  --config-template "stickyproxy-l7=stickyproxy-l7.toml"
  --sticky 'stickyproxy-l7=cookie-insert:SPSESSION' --layer stickyproxy-l7=L7
  --target 'stickyproxy-l4={venv}/bin/twistd -n --pidfile= stickyproxy --config {config}'
  --config-template "stickyproxy-l4=stickyproxy-l4.toml"
  --sticky 'stickyproxy-l4=source-ip' --layer stickyproxy-l4=L4
)
if [ -n "$workers" ]; then
    # The L7 target again, with N worker processes.  Its workers may run on
    # every CPU (the harness pins targets to --proxy-cpu), so with 2 CPUs
    # the second worker shares CPU 1 with wrk and the backends.
    cpus="0-$(($(nproc) - 1))"
    targets+=(
      --target "stickyproxy-l7-w$workers=taskset -c $cpus {venv}/bin/twistd -n --pidfile= stickyproxy --config {config} --workers $workers"
      --config-template "stickyproxy-l7-w$workers=stickyproxy-l7.toml"
      --sticky "stickyproxy-l7-w$workers=cookie-insert:SPSESSION" --layer "stickyproxy-l7-w$workers=L7"
    )
fi
if [ -n "$baseline" ]; then
    # The baseline commit, installed into a venv of its own beside the
    # harness's one (same Python, same Twisted), from a clean export.
    rm -rf "$scratch/baseline-src"
    mkdir -p "$scratch/baseline-src"
    git -C "$repo" archive "$baseline" | tar -x -C "$scratch/baseline-src"
    [ -x "$scratch/.venv-base/bin/python" ] || "$scratch/.venv/bin/python" -m venv "$scratch/.venv-base"
    # Its dependencies with the harness's pins, then the commit itself (again
    # each run: every commit has the same version number).
    "$scratch/.venv-base/bin/pip" install -q -r "$scratch/requirements.txt" "$scratch/baseline-src"
    "$scratch/.venv-base/bin/pip" install -q --force-reinstall --no-deps "$scratch/baseline-src"
    echo "baseline: $(git -C "$repo" rev-parse --short "$baseline") ($baseline)"
    targets+=(
      --target 'stickyproxy-l7-base={venv}-base/bin/twistd -n --pidfile= stickyproxy --config {config}'
      --config-template "stickyproxy-l7-base=stickyproxy-l7.toml"
      --sticky 'stickyproxy-l7-base=cookie-insert:SPSESSION' --layer stickyproxy-l7-base=L7
      --target 'stickyproxy-l4-base={venv}-base/bin/twistd -n --pidfile= stickyproxy --config {config}'
      --config-template "stickyproxy-l4-base=stickyproxy-l4.toml"
      --sticky 'stickyproxy-l4-base=source-ip' --layer stickyproxy-l4-base=L4
    )
fi
out="results/results-$(date +%Y-%m-%d_%H%M%S).json"
cd "$scratch"
"$scratch/.venv/bin/python" bench.py --only "$only" "${targets[@]}" --out "$out" "$@"
if [ "${STICKYPROXY_BENCH_MEMORY:-1}" != 0 ]; then
    # Not CPU-bound: one pass, after the throughput runs.  memory.py takes
    # the targets and --only/--skip from the same arguments, ignoring the rest.
    memory="${out%.json}-memory.json"
    "$scratch/.venv/bin/python" "$here/memory.py" --harness "$scratch" \
        --only "$only" "${targets[@]}" "$@" --out "$memory"
    cat "${memory%.json}.md" >>"${out%.json}.md"
    cp "$memory" "$here/results/"
fi
cp "$out" "${out%.json}.md" "$here/results/"
