#!/usr/bin/env bash
# The Python package as a user installs it: builds the eplb wheel (the project's CMake, driven by
# python/setup.py, with the build machine's packages: no package index), installs it into a fresh
# venv that sees Debian's numpy, torch and pytest (--system-site-packages), and runs tests/python
# with that venv's interpreter. Everything lands in build-python/ (the CMake tree itself beside the
# other build directories, so that ccache serves the objects build/ compiled).
set -euo pipefail
cd "$(dirname "$0")/../.."

out="$PWD/build-python"
rm -rf "$out/dist" "$out/venv" python/build
EPLB_CMAKE_BUILD_DIR="$out" /usr/bin/python3 -m pip wheel --no-build-isolation --no-deps \
  --no-index --quiet ./python -w "$out/dist"
/usr/bin/python3 -m venv --system-site-packages "$out/venv"
"$out/venv/bin/python" -m pip install --no-index --no-deps --quiet "$out"/dist/eplb-*.whl
exec "$out/venv/bin/python" -m pytest -q -p no:cacheprovider tests/python
