#!/usr/bin/env bash
# Installs the Debian 12 packages eplb needs to build, test and benchmark.
# Idempotent: packages already present are left alone. Used by the README, .ci/run and the Dockerfile.
#
#   deploy/scripts/install-deps.sh          build + test dependencies
#   deploy/scripts/install-deps.sh --python   and what the Python package's wheel and tests need
#   deploy/scripts/install-deps.sh --runtime  only the shared libraries the binaries load
set -euo pipefail

build_packages=(
  build-essential cmake ninja-build ccache pkg-config git python3 python3-yaml clang libclang-rt-14-dev openssl
  libabsl-dev libspdlog-dev libfmt-dev libyaml-cpp-dev rapidjson-dev zlib1g-dev libssl-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libgtest-dev libgmock-dev libbenchmark-dev prometheus-cpp-dev
  pybind11-dev python3-dev
)
# What the Python package's wheel build and tests add (torch: the engines' tensors; grpcio:
# eplb._client must work in a process that also loads Python's gRPC).
python_test_packages=(
  python3-numpy python3-torch python3-pytest python3-venv python3-pip python3-setuptools
  python3-wheel python3-grpcio
)
runtime_packages=(
  libabsl20220623 libspdlog1.10 libfmt9 libgrpc++1.51 libprotobuf32 libyaml-cpp0.7
  libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 zlib1g libssl3
)

case "${1:-}" in
  "") packages=("${build_packages[@]}") ;;
  --python) packages=("${build_packages[@]}" "${python_test_packages[@]}") ;;
  --runtime) packages=("${runtime_packages[@]}") ;;
  *) echo "install-deps: unknown option $1" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
fi
echo "install-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
