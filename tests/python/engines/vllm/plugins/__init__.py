"""Stand-in for vllm.plugins: loads the `vllm.general_plugins` entry points as vLLM does in every
process it starts (VLLM_PLUGINS filters them by name; an error inside a plugin propagates)."""
import os
from importlib.metadata import entry_points


def load_general_plugins():
    allowed = os.environ.get("VLLM_PLUGINS")
    allowed = None if allowed is None else allowed.split(",")
    for plugin in entry_points(group="vllm.general_plugins"):
        if allowed is None or plugin.name in allowed:
            plugin.load()()
