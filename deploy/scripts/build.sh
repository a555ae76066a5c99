#!/usr/bin/env bash
# The build steps, in one place: the README's two commands (demo.sh, test.sh), CI and the
# Dockerfile all build through this script.
#
#   deploy/scripts/build.sh                      everything (planner, eplbctl, tests, benchmarks,
#                                                the Python extension; the wheel: test-python.sh)
#   deploy/scripts/build.sh --image              the planner and eplbctl only, for the planner image
#   deploy/scripts/build.sh --worker             the agent libraries and the worker example against
#                                                CUDA and NCCL (EPLB_WITH_CUDA=ON), for worker images
#   deploy/scripts/build.sh --dir DIR TARGET...  another build directory, only these targets
#
# Release build with Ninja in ./build unless --dir is given; -j is the number of CPUs.
set -euo pipefail
cd "$(dirname "$0")/../.."

dir=build
cuda=AUTO
python=ON
tests=ON
bench=ON
targets=()
while (($#)); do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --image) tests=OFF; bench=OFF; cuda=OFF; python=OFF; targets+=(eplb-planner eplbctl eplbctl-rpc); shift ;;
    --worker) tests=OFF; bench=OFF; cuda=ON; python=OFF
              targets+=(eplb_client eplb_agent eplb_transfer_cuda eplb-worker-example eplbctl eplbctl-rpc); shift ;;
    -*) echo "build.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done

cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DEPLB_WITH_CUDA="$cuda" \
  -DEPLB_BUILD_TESTS="$tests" -DEPLB_BUILD_BENCH="$bench" -DEPLB_PYTHON="$python"
if ((${#targets[@]})); then
  cmake --build "$dir" -j "$(nproc)" --target "${targets[@]}"
else
  cmake --build "$dir" -j "$(nproc)"
fi
