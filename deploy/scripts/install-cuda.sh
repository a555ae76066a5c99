#!/usr/bin/env bash
# Installs the CUDA toolkit and NCCL on Debian 12 from NVIDIA's repository, for the worker image
# (Dockerfile, target worker). Not needed for the planner, eplbctl or the tests.
#
#   deploy/scripts/install-cuda.sh            toolkit + NCCL headers (to build)
#   deploy/scripts/install-cuda.sh --runtime  the CUDA runtime and NCCL libraries only
#
# CUDA_VERSION (default 13-0) picks the toolkit; the NVIDIA driver comes from the host.
set -euo pipefail

cuda="${CUDA_VERSION:-13-0}"
packages=("cuda-toolkit-${cuda}" libnccl2 libnccl-dev)
if [[ "${1:-}" == "--runtime" ]]; then
  packages=("cuda-cudart-${cuda}" libnccl2)
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
  sudo=(sudo)
fi
if ! dpkg-query -W -f='${Status}' cuda-keyring 2>/dev/null | grep -q "install ok installed"; then
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    ca-certificates curl
  keyring=$(mktemp)
  curl -fsSL -o "$keyring" \
    https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb
  "${sudo[@]}" dpkg -i "$keyring"
  rm -f "$keyring"
fi
echo "install-cuda: installing ${packages[*]}"
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
  "${packages[@]}"
