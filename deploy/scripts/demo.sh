#!/usr/bin/env bash
# The main job: installs what is needed, builds eplbctl and plans the shipped DeepSeek-V3-shaped
# example (58 layers × 256 experts, 8 groups, 4 nodes, 32 ranks, 288 slots) with the deepseek
# policy, printing the per-layer balancedness before (contiguous map) and after. The planned map is
# written to ./eplb-state/plans/deepseek-v3.json.
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build --target eplbctl

mkdir -p eplb-state/plans
build/bin/eplbctl plan \
  --load deploy/examples/load-deepseek-v3.json \
  --num-physical-experts 288 --num-ranks 32 --num-groups 8 --num-nodes 4 \
  --policy deepseek --per-layer \
  --output eplb-state/plans/deepseek-v3.json
