#!/usr/bin/env bash
# Installs what is needed, builds everything with g++ and runs all tests; builds the Python package's
# wheel, installs it into a fresh venv and runs its tests; then builds the tests with clang under
# AddressSanitizer and UndefinedBehaviorSanitizer and runs them again, with the file readers' fuzz
# targets (libFuzzer, a fixed number of inputs each).
set -euo pipefail
cd "$(dirname "$0")/../.."

deploy/scripts/install-deps.sh --python
jobs=$(nproc)
stage() { echo "== $1 (at ${SECONDS} s)"; }

stage "g++ build and tests"
deploy/scripts/build.sh
ctest --test-dir build --output-on-failure -j "$jobs"

stage "Python package (wheel, fresh venv, tests/python)"
deploy/scripts/test-python.sh

stage "deployment checks (Dockerfile, image build steps, Kubernetes manifests, flag file)"
deploy/scripts/check-deploy.sh

stage "clang, AddressSanitizer + UndefinedBehaviorSanitizer"
CXX=clang++ cmake -S . -B build-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug \
  -DEPLB_SANITIZE=address,undefined -DEPLB_BUILD_BENCH=OFF -DEPLB_FUZZ=ON
cmake --build build-sanitize -j "$jobs"
ctest --test-dir build-sanitize --output-on-failure -j "$jobs"
stage "done"
