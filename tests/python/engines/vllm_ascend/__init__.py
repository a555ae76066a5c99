"""Stand-in for vllm-ascend (see ../README.md)."""
import os

FORM = os.environ.get("STANDIN_VLLM_ASCEND_FORM", "0.20")
__version__ = {"0.11": "0.11.0", "0.20": "0.20.0"}.get(FORM, "0.99.0")
