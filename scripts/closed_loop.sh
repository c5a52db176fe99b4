#!/usr/bin/env bash
# The closed loop on simulated GPUs (docs/adrs.md, "Fitting a policy to your cluster"):
#   1. gpuosd replays a window of a workload (its history), 2. exports it, 3. evolves a policy on it,
#   4. shadows the winner over the next window, 5. deploys it under a guard, replays the window after,
#   6. deploys a deliberately bad candidate (it starves the latency class) under the same guard: it is
#      rolled back by itself.
# Each step prints what it did; the last lines say whether the guard held or rolled back.
#
#   scripts/closed_loop.sh            # about two minutes on two cores
#   SCALE=200 HISTORY_JOBS=400 scripts/closed_loop.sh
#
# Needs the sim extra (numpy) for replay, evolve and the shadow's simulated effect.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
WORKLOAD=${WORKLOAD:-"synthetic:llm-decode?n=1000&seed=3&load=0.1"}
TOTAL=${TOTAL:-1000}          # the jobs WORKLOAD has (its n=)
SCALE=${SCALE:-500}           # replay this many times faster than the trace
HISTORY_JOBS=${HISTORY_JOBS:-300}
WINDOW_JOBS=${WINDOW_JOBS:-60}
GPUS=${GPUS:-4xH100-80GB}
WINDOW=${WINDOW:-2m}          # the guard's window

WORK=$(mktemp -d -t gpuos-loop.XXXXXX)
SOCK="$WORK/gpuos.sock"
ctl() { "$PYTHON" -m gpuos.cli.main --socket "$SOCK" "$@"; }
step() { printf '\n== %s\n' "$*"; }
start_of() { "$PYTHON" -c "print($1 / $TOTAL)"; }

"$PYTHON" -m gpuos.daemon.main --socket "$SOCK" --state-dir "$WORK/state" --backend sim --sim-gpus "$GPUS" \
    >"$WORK/gpuosd.log" 2>&1 &
GPUOSD=$!
trap 'kill "$GPUOSD" 2>/dev/null; wait "$GPUOSD" 2>/dev/null; echo; echo "gpuosd log and files: $WORK"' EXIT
for _ in $(seq 300); do
    [ -S "$SOCK" ] && ctl policy list >/dev/null 2>&1 && break
    sleep 0.1
done

step "1. replay the history: $HISTORY_JOBS jobs of $WORKLOAD at ${SCALE}x, policy fifo"
ctl replay --trace "$WORKLOAD" --jobs "$HISTORY_JOBS" --time-scale "$SCALE"
LIVE=$(ctl -o json policy | "$PYTHON" -c "import json,sys; print(json.load(sys.stdin)['active']['name'])")

step "2. export gpuosd's history"
ctl trace export -o "$WORK/history.jsonl"

step "3. evolve a policy on it (time-ordered split: train on the older part, judge on the newer)"
ctl evolve --trace "$WORK/history.jsonl" --objective latency_wait_p99 --iterations 3 --population 4 \
    --baseline-trials 3 --run-dir "$WORK/run" --emit "$WORK/winner.py"

step "4. shadow the winner over the next $WINDOW_JOBS jobs (its decisions are computed, never applied)"
ctl policy shadow "$WORK/winner.py"
ctl replay --trace "$WORKLOAD" --start "$(start_of "$HISTORY_JOBS")" --jobs "$WINDOW_JOBS" --time-scale "$SCALE" \
    >/dev/null
ctl policy shadow --report --examples 3
ctl policy shadow --off

# The bound: the latency class's p99 queueing delay (wall seconds) on the history under $LIVE.
BOUND=$("$PYTHON" - "$WORK/history.jsonl" <<'EOF'
import json, sys
from gpuos.guard import percentile
rows = [json.loads(line) for line in open(sys.argv[1])][1:]
waits = [r["wait"] for r in rows if r["qos"] == "LS"]
print(f"{max(percentile(waits, 99) if waits else 1.0, 0.05):.3f}s")
EOF
)

step "5. deploy the winner guarded by p99_queue_delay_ls<=$BOUND over $WINDOW; replay the next $WINDOW_JOBS jobs"
ctl policy set "$WORK/winner.py" --guard "p99_queue_delay_ls<=$BOUND" --window "$WINDOW"
ctl replay --trace "$WORKLOAD" --start "$(start_of $((HISTORY_JOBS + WINDOW_JOBS)))" --jobs "$WINDOW_JOBS" \
    --time-scale "$SCALE"
sleep 2
ctl policy

step "6. deploy a candidate that starves the latency class, under the same guard"
cat >"$WORK/starve.py" <<'EOF'
"""A deliberately bad candidate: it never places a latency-class job."""

from gpuos.scheduler import Policy


class StarveLatency(Policy):
    name = "starve-latency"
    description = "never places a latency-class job"

    def fits(self, job, node, gpus, snap):
        return job.qos not in ("LS", "Guaranteed")
EOF
ctl policy set "$WORK/starve.py" --guard "p99_queue_delay_ls<=$BOUND" --window "$WINDOW" --min-samples 3
ctl replay --trace "$WORKLOAD" --start "$(start_of $((HISTORY_JOBS + 2 * WINDOW_JOBS)))" --jobs "$WINDOW_JOBS" \
    --time-scale "$SCALE" >/dev/null
ctl policy
step "policy events"
ctl events | grep -E 'policy-|shadow-' || true
