#!/usr/bin/env bash
# Copies what a serving engine builds against into PREFIX: the headers of core/, client/, agent/,
# transfer/ and proto/ (with the generated protobuf headers) under PREFIX/include, and the static
# libraries of BUILD_DIR under PREFIX/lib. Used by the Dockerfile's worker target.
#
#   deploy/scripts/stage-sdk.sh BUILD_DIR PREFIX
set -euo pipefail
cd "$(dirname "$0")/../.."

if (($# != 2)); then
  echo "usage: deploy/scripts/stage-sdk.sh BUILD_DIR PREFIX" >&2
  exit 2
fi
build="$1"
prefix="$2"
if [[ ! -d "$build/lib" ]]; then
  echo "stage-sdk: $build/lib does not exist (build first: deploy/scripts/build.sh)" >&2
  exit 1
fi
mkdir -p "$prefix/include" "$prefix/lib"
for dir in core client agent transfer proto; do
  find "$dir" -name '*.h' -exec cp --parents {} "$prefix/include/" \;
done
(cd "$build/proto" && find . -name '*.pb.h' -exec cp --parents {} "$prefix/include/" \;)
for lib in "$build"/lib/*.a; do
  case "$(basename "$lib")" in
    libeplbctl_plan.a) ;;  # eplbctl's own code, not part of the SDK
    *) cp "$lib" "$prefix/lib/" ;;
  esac
done
echo "stage-sdk: $(find "$prefix/include" -name '*.h' | wc -l) headers, $(ls "$prefix/lib" | wc -l) libraries in $prefix"
