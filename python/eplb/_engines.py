"""What the engine adapters share: their environment variables, the refusal of an engine whose
interface is not the one an adapter was written for, and the checks on an engine's current map."""

import importlib
import importlib.metadata
import importlib.util
import inspect
import logging
import os

import numpy as np

from eplb._core import BalancedOptions, ExpertMap

logger = logging.getLogger("eplb")

#: Options of the balanced policy for every adapter, e.g. "tolerance=0.02,threads=4".
OPTIONS_VARIABLE = "EPLB_BALANCED_OPTIONS"

_OPTION_TYPES = {
    "tolerance": float,
    "max_received_per_rank": int,
    "max_received_per_layer": int,
    "min_gain": float,
    "node_affinity": bool,
    "threads": int,
}


class EngineInterfaceError(RuntimeError):
    """The installed engine is not the one an adapter was written for; the adapter refuses."""


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
            raise ValueError(f'{OPTIONS_VARIABLE}: "{entry.strip()}" is not KEY=VALUE with KEY one of: '
                             f'{", ".join(_OPTION_TYPES)}')
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


def engine_version(distribution, module_name):
    """The installed engine's version: its distribution's, else its module's __version__."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        return importlib.import_module(module_name).__version__
    except Exception:  # noqa: BLE001 (only for an error message)
        return "of unknown version"


def package_has(package, *relative_paths):
    """Whether the importable package `package` holds one of `relative_paths` (a module file or a
    package directory), found on disk without importing anything."""
    spec = importlib.util.find_spec(package)
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        for relative in relative_paths:
            path = os.path.join(root, *relative.split("/"))
            if os.path.isdir(path) or os.path.isfile(path + ".py"):
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
    table = np.asarray(phy2log.cpu() if hasattr(phy2log, "cpu") else phy2log)
    if table.shape != (num_layers, num_slots) or table.dtype.kind not in "iu":
        logger.info("eplb: ignoring the engine's current map of shape %s (expected (%d, %d))",
                    table.shape, num_layers, num_slots)
        return None
    try:
        return ExpertMap.from_phy2log(table, num_experts, num_ranks)
    except ValueError as error:
        logger.info("eplb: ignoring the engine's current map: %s", error)
        return None
