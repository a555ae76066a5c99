"""Start-up hooks of the eplb package: the standard library only, cheap to import.

`eplb_engines.pth` (installed beside this module) runs at every interpreter start:

    import os; (os.environ.get("EPLB_SGLANG_POLICY") or os.environ.get("EPLB_SGLANG_PLANNER")) and ...

so that SGLang's spawned scheduler processes get eplb's policy too, not only the launcher. With
the variable unset nothing is imported. vLLM's plugin entry points (vllm_plugin,
vllm_ascend_plugin) live here too, for the same reason: importing them costs nothing. This module
must not import numpy, torch or eplb: a .pth file runs while sys.path is still being built (a
venv's system site-packages come later).

`when_imported(name, callback)` calls `callback(module)` right after module `name` has executed
(or at once if it is already imported), without importing it; the engine adapters patch engine
modules this way, at the moment the engine itself imports them. An exception from the callback
fails that import, with the callback's message, and every later import of the module as well.
"""

import importlib.abc
import os
import sys
import threading

_lock = threading.Lock()
_callbacks = {}  # module name -> [callback]


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of modules that have callbacks."""

    def find_spec(self, name, path, target=None):
        if name not in _callbacks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec


class _Loader(importlib.abc.Loader):
    """Runs the real loader, puts it back in place, then the module's callbacks."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        with _lock:
            callbacks = _callbacks.pop(module.__name__, [])
        try:
            for callback in callbacks:
                callback(module)
        except BaseException:
            # The import fails (the module leaves sys.modules): a later import runs them again
            # and fails the same way, rather than succeed untouched.
            with _lock:
                _callbacks[module.__name__] = callbacks + _callbacks.get(module.__name__, [])
            raise


_finder = _Finder()


def when_imported(name, callback):
    """Calls callback(module) once module `name` is imported (now, if it already is)."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _callbacks.setdefault(name, []).append(callback)
            if _finder not in sys.meta_path:
                sys.meta_path.insert(0, _finder)
            return
    callback(module)


_sglang_installed = False


def install_sglang():
    """Activates eplb in SGLang (EPLB_SGLANG_POLICY or EPLB_SGLANG_PLANNER is set). Idempotent: an interpreter
    may process a .pth file twice (a venv with system site-packages does)."""
    global _sglang_installed
    with _lock:
        if _sglang_installed:
            return
        _sglang_installed = True

    def activate(module):
        from eplb import sglang

        sglang.activate()

    # Every SGLang process imports the package `sglang` first; its layout is checked there. (Not a
    # subpackage: those may be namespace packages, which have no loader to run a hook.)
    when_imported("sglang", activate)


# The `vllm.general_plugins` entry points. vLLM logs and skips a plugin whose module fails to
# import, but lets an error raised by the plugin function through: the adapters are imported here,
# only when their variable is set, so that an installation that cannot load them (numpy, the
# extension) fails the engine's start instead of leaving its own policy in place silently.
def vllm_plugin():
    """Activates eplb in vLLM when EPLB_VLLM_PLANNER (remote mode) or EPLB_VLLM_POLICY is set."""
    if (os.environ.get("EPLB_VLLM_PLANNER", "").strip()
            or os.environ.get("EPLB_VLLM_POLICY", "").strip()):
        from eplb import vllm

        vllm.register()


def vllm_ascend_plugin():
    """Activates eplb's policy in vllm-ascend when EPLB_VLLM_ASCEND_POLICY is set."""
    if os.environ.get("EPLB_VLLM_ASCEND_POLICY", "").strip():
        from eplb import vllm_ascend

        vllm_ascend.register()
