#!/usr/bin/env bash
# The deployment checks CI runs (deploy/scripts/test.sh, after the tests). No Docker engine or
# cluster is needed:
#   1. the Dockerfile lints clean, the Kubernetes manifests pass the schema and reference checks,
#      the sources' includes follow the layering (check_layers.py), and each checker catches a
#      broken copy;
#   2. the Dockerfile's planner build step runs (build.sh --image, into build-image/), its programs
#      load only libraries the runtime stage installs, and the worker image's SDK staging runs;
#   3. deploy/config/planner.flags (which the ConfigMap must copy exactly) is accepted by the
#      planner (--check-flags) and documents every flag the planner has;
#   4. where CUDA and NCCL are installed, the worker image's build step (build.sh --worker) runs.
set -euo pipefail
cd "$(dirname "$0")/../.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "-- Dockerfile, manifests and layering"
python3 deploy/scripts/check_dockerfile.py
python3 deploy/scripts/check_manifests.py
python3 deploy/scripts/check_layers.py

# A checker that passes everything checks nothing: each must reject a broken copy.
expect_rejected() {  # CHECKER FILE SED-EXPRESSION EXPECTED-MESSAGE
  local copy="$tmp/broken"
  rm -rf "$copy" && mkdir -p "$copy"
  cp -r Dockerfile .dockerignore CMakeLists.txt deploy client agent cli examples server core proto \
    transfer "$copy/"
  sed -i "$3" "$copy/$2"
  if out=$(python3 "deploy/scripts/$1" "$copy" 2>&1); then
    echo "check-deploy: $1 accepted $2 after '$3'" >&2
    exit 1
  fi
  if ! grep -qF -- "$4" <<<"$out"; then
    echo "check-deploy: $1 rejected $2 after '$3' without saying: $4" >&2
    echo "$out" >&2
    exit 1
  fi
}
expect_rejected check_dockerfile.py Dockerfile 's|COPY core core|COPY kore core|' \
  "COPY source kore does not exist"
expect_rejected check_dockerfile.py Dockerfile 's|^COPY cli cli$||' \
  "the build stage does not copy cli/, which CMakeLists.txt adds"
expect_rejected check_dockerfile.py Dockerfile 's|EXPOSE 50051 9464|EXPOSE 50051|' \
  "EXPOSE [50051] differs"
expect_rejected check_dockerfile.py Dockerfile 's|build.sh --image|build.sh --images|' \
  "build.sh has no option --images"
expect_rejected check_layers.py client/plan_watcher.h \
  's|#include "core/plan_delivery.h"|#include "agent/placement_agent.h"|' "client/ includes agent/"
expect_rejected check_manifests.py deploy/kubernetes/planner.yaml 's|targetPort: metrics|targetPort: stats|' \
  "targetPort stats is not a port"
expect_rejected check_manifests.py deploy/kubernetes/planner.yaml 's|type: Recreate|type: RollingUpdate|' \
  "must use strategy Recreate"
expect_rejected check_manifests.py deploy/kubernetes/worker-statefulset.yaml 's|name: EPLB_RANK$|name: EPLB_RANKS|' \
  "the worker needs EPLB_RANK"
expect_rejected check_manifests.py deploy/config/planner.flags 's|--plan-threads=4|--plan-threads=8|' \
  "differs from deploy/config/planner.flags"
echo "check-deploy: the checkers reject broken copies"

echo "-- the planner image's build step"
deploy/scripts/build.sh --image --dir build-image
python3 deploy/scripts/check_runtime_libs.py build-image/bin/eplb-planner build-image/bin/eplbctl \
  build-image/bin/eplbctl-rpc
deploy/scripts/stage-sdk.sh build-image "$tmp/sdk"

echo "-- flag files"
# (check_manifests.py above holds the ConfigMap's copy equal to this file.)
# As the manifests run it: the token comes from the eplb-token Secret as EPLB_TOKEN.
EPLB_TOKEN=check-0123456789abcdef build-image/bin/eplb-planner --flagfile=deploy/config/planner.flags --check-flags
if env -u EPLB_TOKEN build-image/bin/eplb-planner --flagfile=deploy/config/planner.flags \
    --check-flags 2>/dev/null; then
  echo "check-deploy: --check-flags accepted serving 0.0.0.0 without credentials" >&2
  exit 1
fi
missing=()
for flag in $(sed -n 's/^ABSL_FLAG([^,]*, *\([a-z_]*\),.*/\1/p' server/main.cc); do
  [[ "$flag" == check_flags ]] && continue
  grep -q -- "^--${flag//_/-}=" deploy/config/planner.flags || missing+=("--${flag//_/-}")
done
if ((${#missing[@]})); then
  echo "check-deploy: deploy/config/planner.flags does not document ${missing[*]}" >&2
  exit 1
fi
if EPLB_TOKEN=check-0123456789abcdef build-image/bin/eplb-planner --flagfile=deploy/config/planner.flags \
    --plan-threads=2000 --check-flags 2>/dev/null; then
  echo "check-deploy: --check-flags accepted --plan-threads=2000" >&2
  exit 1
fi
echo "check-deploy: planner.flags documents every planner flag"

echo "-- the worker image's build step"
if command -v nvcc >/dev/null || [[ -x /usr/local/cuda/bin/nvcc ]]; then
  deploy/scripts/build.sh --worker --dir build-worker
else
  echo "check-deploy: no CUDA toolkit here; build.sh --worker runs in the worker image build only"
fi
echo "check-deploy: all deployment checks passed"
