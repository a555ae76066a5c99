"""Stand-in for vllm.plugins: loads the `vllm.general_plugins` entry points as vLLM does in every
process it starts. VLLM_PLUGINS filters them by name; a plugin whose module fails to import is
logged and skipped; an error raised by a plugin function propagates."""
import logging
import os
from importlib.metadata import entry_points

logger = logging.getLogger("vllm.plugins")


def load_general_plugins():
    allowed = os.environ.get("VLLM_PLUGINS")
    allowed = None if allowed is None else allowed.split(",")
    functions = []
    for plugin in entry_points(group="vllm.general_plugins"):
        if allowed is None or plugin.name in allowed:
            try:
                functions.append(plugin.load())
            except Exception:
                logger.exception("Failed to load plugin %s", plugin.name)
    for function in functions:
        function()
