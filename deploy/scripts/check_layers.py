#!/usr/bin/env python3
"""Checks that the project's parts include only what they may (the layering of the README's
"Layout"): core depends on nothing of ours; transfer on core; agent on core and transfer (no gRPC);
client on core and proto (no transfer, no agent); server on core and proto; cli and python (its
_client module) on client; examples, bench and tests on top. Nothing outside tests/ includes tests/.

  python3 deploy/scripts/check_layers.py [ROOT]    exit 0: fine; 1: the includes, one a line
"""
import os
import re
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1
                       else os.path.join(os.path.dirname(__file__), "..", ".."))
PARTS = {"core", "proto", "transfer", "agent", "client", "server", "cli", "examples", "python",
         "bench", "tests"}
# What each part may include of the project, itself aside. "eplb" is generated protobuf code.
ALLOWED = {
    "core": set(),
    "proto": {"core", "eplb"},
    "transfer": {"core"},
    "agent": {"core", "transfer"},
    "client": {"core", "proto", "eplb"},
    "server": {"core", "proto", "eplb"},
    "cli": {"core", "proto", "eplb", "client"},
    "examples": {"core", "proto", "eplb", "client", "agent", "transfer"},
    "python": {"core", "proto", "eplb", "client"},  # _core: core only; _client: client/
    "bench": {"core", "proto", "eplb", "client", "agent", "transfer", "server"},
    "tests": PARTS | {"eplb"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"/]+)/', re.M)

problems = []
for part in sorted(PARTS):
    for directory, subdirs, files in os.walk(os.path.join(ROOT, part)):
        subdirs[:] = [s for s in subdirs if not s.startswith((".", "build"))]
        for name in files:
            if not name.endswith((".h", ".cc", ".cu", ".cuh")):
                continue
            path = os.path.join(directory, name)
            text = open(path, encoding="utf-8", errors="replace").read()
            for m in INCLUDE.finditer(text):
                top = m.group(1)
                if top == part or top not in PARTS | {"eplb"}:
                    continue  # itself, or a library (absl/, rapidjson/, grpcpp/, …)
                if top not in ALLOWED[part]:
                    line = text.count("\n", 0, m.start()) + 1
                    problems.append(f"{os.path.relpath(path, ROOT)}:{line}: {part}/ includes "
                                    f"{top}/ (allowed: {', '.join(sorted(ALLOWED[part])) or 'none'})")

for p in problems:
    print(p)
if problems:
    sys.exit(1)
print(f"check_layers: the includes of {len(PARTS)} parts follow the layering")
