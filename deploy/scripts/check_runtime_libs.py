#!/usr/bin/env python3
"""Checks that the planner image has every shared library its programs load.

The runtime stage of the Dockerfile starts from debian:12-slim and installs the packages of
`install-deps.sh --runtime`. For each program given, every library ldd resolves must belong to one
of those packages, to one of their dependencies (recursively), or to the base image (apt and its
dependencies).

  python3 deploy/scripts/check_runtime_libs.py PROGRAM...   exit 0: fine; 1: the libraries missing
"""
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
script = open(os.path.join(ROOT, "deploy", "scripts", "install-deps.sh")).read()
m = re.search(r"runtime_packages=\(([^)]*)\)", script)
runtime = m.group(1).split() if m else []
if not runtime:
    sys.exit("check_runtime_libs: no runtime_packages=(...) in install-deps.sh")


def closure(packages):
    out = subprocess.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
         "--no-breaks", "--no-replaces", "--no-enhances", *packages],
        capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines():
        line = line.strip()
        if not line:
            continue
        if ":" in line and line.split(":")[0] in ("Depends", "PreDepends"):
            line = line.split(":", 1)[1].strip()
        names.add(line.strip("<>").split(":")[0])
    return names


provided = closure(runtime + ["apt"])
problems = []
for program in sys.argv[1:]:
    ldd = subprocess.run(["ldd", program], capture_output=True, text=True, check=True).stdout
    for lib in re.findall(r"=> (/\S+)", ldd):
        candidates = [lib, os.path.realpath(lib)]
        candidates += [c.replace("/usr/lib/", "/lib/", 1) for c in candidates if c.startswith("/usr/lib/")]
        candidates += [c.replace("/lib/", "/usr/lib/", 1) for c in candidates if c.startswith("/lib/")]
        package = None
        for c in candidates:
            out = subprocess.run(["dpkg", "-S", c], capture_output=True, text=True)
            if out.returncode == 0:
                package = out.stdout.split(":")[0].strip()
                break
        if package is None:
            problems.append(f"{program}: {lib} belongs to no Debian package")
        elif package not in provided:
            problems.append(f"{program}: {lib} comes from {package}, which the runtime image does "
                            f"not install (add it to runtime_packages in install-deps.sh)")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"check_runtime_libs: {len(sys.argv) - 1} programs load only libraries of "
      f"{len(runtime)} runtime packages, their dependencies and the base image")
