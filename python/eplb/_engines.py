"""What the engine adapters share: their environment variables, the refusal of an engine whose
interface is not the one an adapter was written for, and the checks on an engine's current map."""

import dataclasses
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import inspect
import logging
import os

from _eplb_startup import when_imported
from eplb import _previous_map
from eplb._core import BalancedOptions

logger = logging.getLogger("eplb")

#: Options of the balanced policy for every adapter, e.g. "tolerance=0.02,threads=4".
OPTIONS_VARIABLE = "EPLB_BALANCED_OPTIONS"

_OPTION_TYPES = {
    "tolerance": float,
    "max_received_per_rank": int,
    "max_received_per_layer": int,
    "min_gain": float,
    "gain_per_move": float,
    "node_affinity": bool,
    "threads": int,
}


class EngineInterfaceError(RuntimeError):
    """The installed engine is not the one an adapter was written for; the adapter refuses."""


@dataclasses.dataclass(frozen=True)
class Adapter:
    """One engine adapter: what it reads and what it was written for."""

    name: str           # the adapter's module, e.g. "eplb.vllm"
    engine: str         # the engine's name in messages, e.g. "vLLM"
    distribution: str   # the engine's installed distribution, e.g. "vllm-ascend"
    package: str        # the engine's import package, e.g. "vllm_ascend"
    variable: str       # the variable naming the policy, e.g. "EPLB_VLLM_POLICY"
    policies: tuple     # the policies the variable may name
    expected: str       # the interface the adapter was written for, as messages name it

    def version(self):
        """The installed engine's version: its distribution's, else its package's __version__."""
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
        try:
            return importlib.import_module(self.package).__version__
        except Exception:  # noqa: BLE001 (only for messages)
            return "of unknown version"

    def mismatch(self, what):
        """The refusal of an engine that `what` shows to differ from the expected interface."""
        return EngineInterfaceError(f"{self.name}: {self.engine} {self.version()} {what}; "
                                    f"{self.name} was written for {self.expected}")

    def installed(self, policy):
        logger.info("eplb: %s %s plans EPLB with eplb's %s policy", self.engine, self.version(),
                    policy)

    def activate(self, modules, install):
        """Does nothing unless the variable names a policy (ValueError for a bad one, or for bad
        EPLB_BALANCED_OPTIONS). Then checks that the engine holds one of `modules` (its layout,
        found on disk: nothing is imported; EngineInterfaceError otherwise) and arranges for
        install(module, policy, options) to run on each of them when the engine imports it."""
        policy = policy_from_env(self.variable, self.policies)
        if policy is None:
            return
        options = options_from_env(policy)
        prefix = self.package + "."
        present = [name for name in modules
                   if package_has(self.package, name[len(prefix):].replace(".", "/"))]
        if not present:
            raise self.mismatch(f"has no {modules[0]}" if len(modules) == 1 else
                                f"has neither {' nor '.join(modules)}")
        for name in present:
            when_imported(name, lambda module: install(module, policy, options))


def policy_from_env(variable, allowed):
    """The policy named by `variable`, or None when it is unset or empty. ValueError for a name
    not in `allowed`."""
    name = os.environ.get(variable, "").strip()
    if not name:
        return None
    if name not in allowed:
        raise ValueError(f'{variable} = "{name}" is not one of: {", ".join(allowed)}')
    return name


def options_from_env(policy):
    """The balanced policy's options from EPLB_BALANCED_OPTIONS, as keyword arguments of
    BalancedOptions (validated), or None when unset. ValueError naming the variable and the
    entry for anything malformed; the variable is refused for another policy."""
    text = os.environ.get(OPTIONS_VARIABLE, "").strip()
    if not text:
        return None
    if policy != "balanced":
        raise ValueError(f"{OPTIONS_VARIABLE} is set, but the policy is {policy}, not balanced")
    options = {}
    for entry in text.split(","):
        key, sep, value = (part.strip() for part in entry.partition("="))
        if not sep or key not in _OPTION_TYPES:
            raise ValueError(f'{OPTIONS_VARIABLE}: "{entry.strip()}" is not KEY=VALUE with KEY '
                             f'one of: {", ".join(_OPTION_TYPES)}')
        if key in options:
            raise ValueError(f"{OPTIONS_VARIABLE}: {key} is given twice")
        kind = _OPTION_TYPES[key]
        try:
            if kind is bool:
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                options[key] = value.lower() in ("true", "1")
            else:
                options[key] = kind(value)
        except ValueError:
            raise ValueError(f'{OPTIONS_VARIABLE}: {key} = "{value}" is not a valid '
                             f'{kind.__name__}') from None
    try:
        BalancedOptions(**options)
    except ValueError as error:
        raise ValueError(f"{OPTIONS_VARIABLE}: {error}") from None
    return options


def package_has(package, *relative_paths):
    """Whether the importable package `package` holds one of `relative_paths` (a package
    directory, or a module as source, bytecode or extension), found on disk without importing
    anything."""
    spec = importlib.util.find_spec(package)
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        for relative in relative_paths:
            path = os.path.join(root, *relative.split("/"))
            if os.path.isdir(path) or any(os.path.isfile(path + suffix)
                                          for suffix in importlib.machinery.all_suffixes()):
                return True
    return False


def parameter_names(function):
    return list(inspect.signature(function).parameters)


def usable_previous(phy2log, num_layers, num_slots, num_experts, num_ranks):
    """The engine's current map [L, P] as an ExpertMap, or None when it cannot be the previous
    placement: absent, of another shape (an elastic scale-down), holding -1 (slots of new ranks
    after an elastic scale-up) or otherwise not a valid map of `num_experts` experts. It is
    ignored then, never trusted: the policy plans fresh."""
    if phy2log is None:
        return None
    shape = tuple(phy2log.shape)
    if shape != (num_layers, num_slots):
        logger.info("eplb: ignoring the engine's current map of shape %s (expected (%d, %d))",
                    shape, num_layers, num_slots)
        return None
    try:
        return _previous_map(phy2log, num_experts, num_ranks)
    except ValueError as error:
        logger.info("eplb: ignoring the engine's current map: %s", error)
        return None
