#!/usr/bin/env python3
"""Lints the Dockerfile without a Docker engine.

Checks: every stage is named and every FROM names an image or an earlier stage; every COPY source
exists in the repository and is not excluded by .dockerignore; COPY --from names an earlier stage
and copies paths that stage produces (a build directory of a build.sh call, or a path the stage
creates); every script a RUN line calls exists and is executable, and build.sh options exist;
the entrypoint programs are CMake targets; EXPOSE matches the ports of deploy/config/planner.flags;
the targets the file's header documents (--target NAME) exist; the build stage copies every
source directory the top-level CMakeLists.txt adds (tests, bench and python aside: the images
build without them).

  python3 deploy/scripts/check_dockerfile.py [ROOT]    exit 0: fine; 1: the problems, one a line
"""
import fnmatch
import json
import os
import re
import shlex
import sys

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1
                       else os.path.join(os.path.dirname(__file__), "..", ".."))
problems = []


def problem(line, message):
    problems.append(f"Dockerfile:{line}: {message}")


text = open(os.path.join(ROOT, "Dockerfile")).read()
ignored = [p.strip() for p in open(os.path.join(ROOT, ".dockerignore")).read().splitlines()
           if p.strip() and not p.startswith("#")]

# Logical lines (backslash continuations joined), with their first line number.
lines, current, start = [], "", 0
for number, raw in enumerate(text.splitlines(), 1):
    stripped = raw.strip()
    if not current and (not stripped or stripped.startswith("#")):
        continue
    if not current:
        start = number
    current += raw.rstrip("\\").rstrip() + " " if raw.rstrip().endswith("\\") else raw
    if not raw.rstrip().endswith("\\"):
        lines.append((start, current.strip()))
        current = ""

args = {}
stages = []          # names, in order
stage_outputs = {}   # stage -> paths it produces (build dirs, created dirs)
copied = {}          # stage -> repository paths it copies
def source_dirs():
    for d, subdirs, fs in os.walk(ROOT):
        subdirs[:] = [s for s in subdirs if not s.startswith((".", "build"))]
        yield d, fs


cmake_targets = set(re.findall(r"add_executable\(\s*([\w-]+)",
                               "".join(open(os.path.join(d, f)).read()
                                       for d, fs in source_dirs()
                                       for f in fs if f == "CMakeLists.txt")))
build_sh = open(os.path.join(ROOT, "deploy", "scripts", "build.sh")).read()
build_options = set(re.findall(r"^\s+(--[a-z-]+)\)", build_sh, re.M))
exposed, entrypoints = set(), []
stage = None

for number, line in lines:
    instruction, _, rest = line.partition(" ")
    instruction = instruction.upper()
    if instruction == "ARG":
        name, _, value = rest.partition("=")
        args[name.strip()] = value.strip()
    elif instruction == "FROM":
        m = re.match(r"(\S+)(?:\s+AS\s+(\S+))?$", rest, re.I)
        if not m or not m.group(2):
            problem(number, f"stage '{rest}' has no name (FROM IMAGE AS NAME)")
            continue
        image = re.sub(r"\$\{(\w+)\}", lambda a: args.get(a.group(1), ""), m.group(1))
        if ":" not in image and image not in stages:
            problem(number, f"FROM {m.group(1)} is neither an earlier stage nor an image:tag")
        stage = m.group(2)
        if stage in stages:
            problem(number, f"stage {stage} is defined twice")
        stages.append(stage)
        stage_outputs[stage] = set(stage_outputs.get(image, set()))
    elif instruction == "COPY":
        words = shlex.split(rest)
        source_stage = None
        if words and words[0].startswith("--from="):
            source_stage = words[0].split("=", 1)[1]
            words = words[1:]
        words = [w for w in words if not w.startswith("--")]
        sources = words[:-1]
        if source_stage is not None:
            if source_stage not in stages[:-1]:
                problem(number, f"COPY --from={source_stage} names no earlier stage")
                continue
            produced = stage_outputs.get(source_stage, set())
            for s in sources:
                if not any(s == p or s.startswith(p.rstrip("/") + "/") for p in produced):
                    problem(number, f"COPY --from={source_stage} {s}: the stage produces no such path")
            continue
        copied.setdefault(stage, set()).update(s.rstrip("/") for s in sources)
        for s in sources:
            if not os.path.exists(os.path.join(ROOT, s)):
                problem(number, f"COPY source {s} does not exist")
            for pattern in ignored:
                if fnmatch.fnmatch(s, pattern) or s.split("/")[0] == pattern:
                    problem(number, f"COPY source {s} is excluded by .dockerignore ({pattern})")
    elif instruction == "RUN":
        for script in re.findall(r"((?:/tmp/eplb|deploy/scripts)/[\w.-]+\.sh)", rest):
            path = os.path.join(ROOT, "deploy", "scripts", os.path.basename(script))
            if not os.path.exists(path):
                problem(number, f"RUN calls {script}, which does not exist")
            elif not os.access(path, os.X_OK):
                problem(number, f"RUN calls {script}, which is not executable")
        for call in re.findall(r"build\.sh([^&;]*)", rest):
            words = shlex.split(call)
            for w in words:
                if w.startswith("--") and w not in build_options:
                    problem(number, f"build.sh has no option {w}")
            if "--dir" in words:
                stage_outputs[stage].add("/src/" + words[words.index("--dir") + 1] + "/bin")
        for call in re.findall(r"stage-sdk\.sh\s+(\S+)\s+(\S+)", rest):
            stage_outputs[stage].add(call[1])
    elif instruction == "EXPOSE":
        exposed.update(int(p.split("/")[0]) for p in rest.split())
    elif instruction == "ENTRYPOINT":
        entrypoints.append((number, json.loads(rest)[0]))

cmake_top = open(os.path.join(ROOT, "CMakeLists.txt")).read()
for directory in sorted(set(re.findall(r"add_subdirectory\(\s*([\w-]+)\s*\)", cmake_top))
                        - {"tests", "bench", "python"}):
    if "build" in stages and directory not in copied.get("build", set()):
        problems.append(f"Dockerfile: the build stage does not copy {directory}/, which "
                        "CMakeLists.txt adds")

for number, program in entrypoints:
    if os.path.basename(program) not in cmake_targets:
        problem(number, f"ENTRYPOINT {program} is not a CMake target")

flags = open(os.path.join(ROOT, "deploy", "config", "planner.flags")).read()
wanted = set()
m = re.search(r"^--listen=\S*:(\d+)$", flags, re.M)
if m:
    wanted.add(int(m.group(1)))
m = re.search(r"^--metrics-port=(\d+)$", flags, re.M)
if m:
    wanted.add(int(m.group(1)))
if exposed != wanted:
    problems.append(f"Dockerfile: EXPOSE {sorted(exposed)} differs from the ports of "
                    f"deploy/config/planner.flags {sorted(wanted)}")

for target in re.findall(r"--target (\S+)", text):
    if target not in stages:
        problems.append(f"Dockerfile: the documented target {target} is not a stage")
if stages and stages[-1] != "planner":
    problems.append("Dockerfile: the last stage (the default target) should be planner")

if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"check_dockerfile: {len(stages)} stages ({', '.join(stages)}) are fine")
