"""Shared by the tests of the installed `eplb` package (run with the interpreter it is installed
in; see deploy/scripts/test.sh)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ENGINES = HERE / "engines"
sys.path.insert(0, str(HERE.parent / "support"))  # reference_eplb


def pytest_configure(config):
    import eplb

    # The package under test is the installed one, never the source tree.
    assert "site-packages" in eplb.__file__, f"eplb imported from {eplb.__file__}"


def clean_env(**overrides):
    """The environment of a child Python: no EPLB_* or STANDIN_* variable but `overrides`."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("EPLB_", "STANDIN_", "VLLM_PLUGINS"))}
    env.update({k: str(v) for k, v in overrides.items() if v is not None})
    return env


def run_python(code, *, path=ENGINES, **env):
    """Runs `code` in a new interpreter with `path` on PYTHONPATH; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-c", code], env=clean_env(PYTHONPATH=path, **env),
                          capture_output=True, text=True, timeout=600)


def run_json(code, **kwargs):
    """run_python, which must succeed and print one JSON document last; returns it."""
    proc = run_python(code, **kwargs)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def rng():
    import numpy as np

    return np.random.default_rng(7)
