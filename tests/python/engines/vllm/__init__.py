"""Stand-in for vLLM (see ../README.md)."""
import os

FORM = os.environ.get("STANDIN_VLLM_FORM", "0.23")
__version__ = {"0.13": "0.13.0", "0.18": "0.18.1", "0.23": "0.23.0"}.get(FORM, "0.99.0")
