"""Stand-in for SGLang (see ../README.md)."""
import os

FORM = os.environ.get("STANDIN_SGLANG_FORM", "0.5")
__version__ = "0.5.6" if FORM == "0.5" else "0.99.0"
