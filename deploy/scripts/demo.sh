#!/usr/bin/env bash
# The main job: installs what is needed, builds the planner, eplbctl and the load generator, then
# runs an embedded planner (state in ./eplb-state, no other services) with 32 simulated ranks of a
# DeepSeek-V3-shaped deployment (58 layers × 256 experts, 8 groups, 4 nodes, 288 slots) streaming
# skewed, drifting expert load. The ranks acknowledge plans like agents would; the planner
# rebalances when that gains at least 3% balancedness. It prints plan versions and balancedness as
# they improve, then the plan history, and stops the planner with SIGTERM.
#
#   DEMO_SECONDS=30 deploy/scripts/demo.sh   # run longer (default 20 s)
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/scripts/install-deps.sh
deploy/scripts/build.sh eplb-planner eplbctl planner_loadgen

state=eplb-state
mkdir -p "$state"
rm -f "$state/planner.port"
build/bin/eplb-planner --listen=127.0.0.1:0 --port-file="$state/planner.port" \
  --metrics-port=0 --state-dir="$state" --checkpoint-interval=5s &
planner=$!
trap 'kill -TERM $planner 2>/dev/null || true; wait $planner 2>/dev/null || true' EXIT
for _ in $(seq 100); do [[ -s "$state/planner.port" ]] && break; sleep 0.1; done
[[ -s "$state/planner.port" ]] || { echo "demo: the planner did not start" >&2; exit 1; }
server="127.0.0.1:$(cat "$state/planner.port")"

build/bin/planner_loadgen --server="$server" --deployment=demo-v3 \
  --layers=58 --experts=256 --groups=8 --nodes=4 --ranks=32 --slots=288 \
  --commit=acked --interval_steps=2000 --min_gain=0.03 --half_life_steps=2000 \
  --rate=20 --steps_per_report=100 --skew=1.0 --drift=0.15 \
  --duration="${DEMO_SECONDS:-20}s" --planner_pid=$planner

echo
build/bin/eplbctl list-plans --server="$server" --deployment=demo-v3
echo
build/bin/eplbctl status --server="$server" --deployment=demo-v3
