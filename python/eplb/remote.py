"""Remote mode: ranks report load to an eplb-planner and switch to plans every rank agreed on.

    from eplb.remote import PlannerClient, RemoteBalancer
    client = PlannerClient("planner:50051", token=...)
    client.create_deployment("m", num_layers=58, num_logical_experts=256,
                             num_physical_experts=288, num_ranks=32, commit="immediate")

The engine side is RemoteBalancer (one per EP rank): the serving loop records each step's
expert counts (`record` / `record_physical`: an add on the counts' device, nothing else), and
every `report_every` steps the sum goes to the planner in the background (LoadReporter: buffered
and merged while the planner is away, nothing lost or doubled when it restarts gracefully). At
the engine's rebalance point every rank calls `agree()`: one small all-gather on a gloo group
finds the newest committed plan that every rank holds; all ranks get the same answer (that
version and its map, or None: keep the current map). After applying it the engine calls
`applied(version)`, which acknowledges ACTIVE to the planner.

Failures never stall serving for longer than `agree_timeout`: with the planner down, `record`
and `agree` cost what they always cost (reports queue, plans stay put); a rank that died makes
`agree()` time out on the others once, after which every rank keeps its current map (the group is
not used again). The agreement is consistent as long as no rank dies during the collective
itself.

This module loads eplb._client (gRPC) when first used; `import eplb` alone never does. Planner
errors raise PlannerError with the gRPC code, the planner's reason and the field it names.
"""

import dataclasses
import datetime
import json
import logging
import os
import secrets
import threading

import numpy as np

from eplb import ExpertMap
from eplb._arrays import as_numpy, is_tensor

logger = logging.getLogger("eplb")

__all__ = ["PlannerClient", "PlannerError", "PlanWatcher", "LoadReporter", "RemoteBalancer",
           "RemoteConfig"]


class PlannerError(Exception):
    """An error the planner returned (or the RPC's, e.g. UNAVAILABLE): `code` is the gRPC status
    code's name ("NOT_FOUND", ...), `reason` the planner's ErrorReason name and `field` the field
    it names (both None when the planner sent none)."""

    def __init__(self, message, code, reason=None, field=None):
        super().__init__(message, code, reason, field)
        self.message = message
        self.code = code
        self.reason = reason
        self.field = field

    def __str__(self):
        detail = f" [{self.reason}{' ' + self.field if self.field else ''}]" if self.reason else ""
        return f"{self.code}: {self.message}{detail}"


def _native():
    from eplb import _client

    return _client


# ---- Maps ----------------------------------------------------------------------------------------

def _map_from_wire(wire):
    """An ExpertMap from the planner's ExpertMap message (phy2log and replica_rank, L × P)."""
    layers, experts = wire["num_layers"], wire["num_logical_experts"]
    slots, ranks = wire["num_physical_experts"], wire["num_ranks"]
    phy2log = np.asarray(wire["phy2log"], dtype=np.int64).reshape(layers, slots)
    replica = np.asarray(wire["replica_rank"], dtype=np.int64).reshape(layers, slots)
    log2phy = np.full((layers, experts, slots - experts + 1), -1, dtype=np.int64)
    layer_index = np.repeat(np.arange(layers), slots)
    log2phy[layer_index, phy2log.ravel(), replica.ravel()] = np.tile(np.arange(slots), layers)
    logcnt = (log2phy >= 0).sum(axis=2)
    return ExpertMap.from_tables(phy2log, log2phy, logcnt, ranks)


def _map_to_wire(expert_map):
    """The planner's ExpertMap message (as JSON-ready dict) of an ExpertMap."""
    phy2log = expert_map.phy2log
    log2phy = expert_map.log2phy
    replica = np.zeros_like(phy2log)
    layer, _, k = np.nonzero(log2phy >= 0)
    replica[layer, log2phy[log2phy >= 0]] = k
    return {"num_layers": expert_map.num_layers,
            "num_logical_experts": expert_map.num_logical_experts,
            "num_physical_experts": expert_map.num_physical_experts,
            "num_ranks": expert_map.num_ranks,
            "phy2log": phy2log.ravel().tolist(), "replica_rank": replica.ravel().tolist()}


def _plan_with_map(plan):
    """A plan dict with its map (when sent) as an ExpertMap, checked against the plan's hash."""
    wire = plan.get("map")
    if wire is not None:
        expert_map = _map_from_wire(wire)
        if expert_map.hash != plan["map_hash"]:
            raise PlannerError(f"plan {plan['version']}: its map hashes to {expert_map.hash:016x}, "
                               f"the plan says {plan['map_hash']:016x}", "DATA_LOSS")
        plan["map"] = expert_map
    return plan


# ---- Client --------------------------------------------------------------------------------------

_COMMIT_MODES = {"acked": "COMMIT_MODE_ACKED", "immediate": "COMMIT_MODE_IMMEDIATE"}


class PlannerClient:
    """The planner's RPC client (as eplbctl): deployments, plans, rebalance, load, status.

    token: sent as a bearer token. tls_ca_file: PEM of the planner's CA (set: TLS);
    tls_cert_file and tls_key_file: a client certificate (mutual TLS); tls_server_name: the name
    checked in the planner's certificate. timeout: seconds per call. Connecting happens on the
    first call. Thread-safe."""

    def __init__(self, server, *, token=None, tls_ca_file=None, tls_cert_file=None,
                 tls_key_file=None, tls_server_name=None, timeout=30.0):
        self.server = server
        self._native = _native().Client(
            server, (token or "").strip(), os.fspath(tls_ca_file or ""),
            os.fspath(tls_cert_file or ""), os.fspath(tls_key_file or ""),
            tls_server_name or "", float(timeout))

    def create_deployment(self, name, *, num_layers, num_logical_experts, num_physical_experts,
                          num_ranks, num_groups=1, num_nodes=1, policy=None, commit="acked",
                          initial_map=None, bytes_per_expert=0, smoothing=None, trigger=None,
                          balanced=None, ack_timeout_ms=0, plan_history=0):
        """Creates the deployment, or returns the existing one if its spec is the same
        (ALREADY_EXISTS naming the field that differs otherwise). smoothing: e.g.
        {"ema_half_life_steps": 1000} or {"window_steps": 500}; trigger: e.g.
        {"interval_steps": 1000, "min_gain": 0.01}; balanced: the balanced policy's options
        (planner.proto's BalancedOptions); initial_map: an ExpertMap for version 1."""
        if commit not in _COMMIT_MODES:
            raise ValueError(f'commit = "{commit}" is not one of: {", ".join(_COMMIT_MODES)}')
        spec = {"name": name,
                "shape": {"num_layers": num_layers, "num_logical_experts": num_logical_experts,
                          "num_physical_experts": num_physical_experts, "num_ranks": num_ranks,
                          "num_groups": num_groups, "num_nodes": num_nodes},
                "policy": policy or "", "commit_mode": _COMMIT_MODES[commit],
                "bytes_per_expert": bytes_per_expert, "ack_timeout_ms": ack_timeout_ms,
                "plan_history": plan_history}
        for key, value in (("smoothing", smoothing), ("trigger", trigger),
                           ("balanced", balanced)):
            if value is not None:
                spec[key] = value
        if initial_map is not None:
            spec["initial_map"] = _map_to_wire(initial_map)
        return self._native.create_deployment(json.dumps(spec))

    def get_deployment(self, name):
        return self._native.get_deployment(name)

    def list_deployments(self):
        return self._native.list_deployments()

    def delete_deployment(self, name):
        self._native.delete_deployment(name)

    def get_plan(self, deployment, version=0):
        """The newest committed plan (version 0) or the given version, with its map as an
        ExpertMap (checked against the plan's map_hash)."""
        return _plan_with_map(self._native.get_plan(deployment, int(version)))

    def list_plans(self, deployment, include_maps=False):
        return [_plan_with_map(plan) for plan in self._native.list_plans(deployment, include_maps)]

    def rebalance(self, deployment, dry_run=False):
        return _plan_with_map(self._native.rebalance(deployment, dry_run))

    def get_load(self, deployment):
        """The smoothed load (as `smoothed_load` [L, E]) and its step range."""
        load = self._native.get_load(deployment)
        load["smoothed_load"] = load["smoothed_load"].reshape(load["num_layers"],
                                                              load["num_logical_experts"])
        return load

    def status(self, deployment):
        """What `eplbctl status` shows: the deployment, its retained plans (newest first, with
        every rank's acknowledgement) and the live load."""
        return {"deployment": self.get_deployment(deployment),
                "plans": self.list_plans(deployment), "load": self.get_load(deployment)}


class LoadReporter:
    """Reports one rank's load (client/load_reporter.h): add_step / add_steps only add into the
    open batch; a background thread sends every `flush_every_steps` steps, retrying with backoff
    while the planner is away and merging unsent batches beyond `max_pending_reports`."""

    def __init__(self, client, deployment, rank, num_layers, num_experts, *,
                 flush_every_steps=100, max_pending_reports=64, max_report_bytes=1 << 20,
                 session=0, max_backoff=10.0):
        self._native = _native().Reporter(client._native, deployment, rank, num_layers,
                                          num_experts, flush_every_steps, max_pending_reports,
                                          max_report_bytes, session, float(max_backoff))

    def add_step(self, step, plan_version, counts):
        """counts: [L, E] tokens per logical expert of one step (numpy, CPU tensor or list)."""
        self._native.add_step(step, plan_version, as_numpy(counts)[0])

    def add_steps(self, first_step, last_step, plan_version, counts):
        """counts: [L, E] summed over steps first_step … last_step."""
        self._native.add_steps(first_step, last_step, plan_version, as_numpy(counts)[0])

    def flush(self, timeout=10.0):
        """Closes the open batch and waits until the planner accepted everything; False if that
        did not happen within `timeout` seconds (the reports stay queued)."""
        return self._native.flush(timeout)

    def stats(self):
        return self._native.stats()

    def close(self):
        """Closes the open batch, tries once more to send what is pending, stops the thread."""
        self._native.close()


class PlanWatcher:
    """Keeps a WatchPlans stream open for one rank (reconnecting while the planner is away) and
    holds the newest `keep` committed plans. `latest()` never blocks; with `on_plan`, a thread of
    the watcher calls on_plan(version, ExpertMap) for each new committed plan."""

    def __init__(self, client, deployment, rank, *, keep=8, on_plan=None, max_backoff=5.0):
        self._native = _native().Watcher(client._native, deployment, rank, keep,
                                         float(max_backoff))
        self._maps = {}  # version -> ExpertMap, made on first use
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = None
        if on_plan is not None:
            self._thread = threading.Thread(target=self._deliver, args=(on_plan,),
                                            name=f"eplb-plans-{rank}", daemon=True)
            self._thread.start()

    def held(self):
        """The committed versions held, oldest first (at most `keep`)."""
        return self._native.held()

    def map(self, version):
        """The ExpertMap of a committed version held, or None."""
        with self._lock:
            cached = self._maps.get(version)
        if cached is not None:
            return cached
        tables = self._native.plan(version)
        if tables is None:
            return None
        map_hash, phy2log, log2phy, logcnt, ranks = tables
        expert_map = ExpertMap.from_tables(phy2log, log2phy, logcnt, ranks)
        held = set(self.held())
        with self._lock:
            self._maps[version] = expert_map
            for old in [v for v in self._maps if v not in held]:
                del self._maps[old]
        return expert_map

    def latest(self):
        """(version, ExpertMap) of the newest committed plan held, or None. Never blocks on the
        network."""
        held = self.held()
        expert_map = self.map(held[-1]) if held else None
        return None if expert_map is None else (held[-1], expert_map)

    def wait(self, after=0, timeout=None):
        """Waits for a committed plan newer than `after` (at most `timeout` seconds; None: until
        there is one or the watcher stops); returns the newest version held."""
        while True:
            newest = self._native.wait(after, 1.0 if timeout is None else timeout)
            if newest > after or timeout is not None or self._closing.is_set():
                return newest
            self._native.raise_if_stopped()

    def ack(self, version, state, map_hash=0, error=""):
        """Acknowledges `version`: state "staged", "active" or "failed" (with `error`)."""
        self._native.ack(version, state, map_hash, error)

    def stats(self):
        return self._native.stats()

    def raise_if_stopped(self):
        """Raises the PlannerError that stopped the watcher (e.g. NOT_FOUND: the deployment was
        deleted), if one did."""
        self._native.raise_if_stopped()

    def close(self):
        self._closing.set()
        self._native.close()
        if self._thread is not None:
            self._thread.join()

    def _deliver(self, on_plan):
        seen = 0
        while not self._closing.is_set():
            newest = self._native.wait(seen, 0.5)
            if newest > seen and not self._closing.is_set():
                expert_map = self.map(newest)
                if expert_map is not None:
                    try:
                        on_plan(newest, expert_map)
                    except Exception:  # noqa: BLE001 (a callback's error must not stop plans)
                        logger.exception("eplb: on_plan(%d) raised", newest)
                seen = newest


# ---- The engine side -----------------------------------------------------------------------------

@dataclasses.dataclass
class RemoteConfig:
    """Where the planner is and how a rank talks to it (see from_env for the variables)."""

    planner: str
    deployment: str
    token: str = ""
    tls_ca_file: str = ""
    report_every: int = 100     # steps per load report
    agree_timeout: float = 30.0  # seconds a collective of the agreement may take
    rpc_timeout: float = 10.0   # seconds per planner call
    max_backoff: float = 2.0    # the longest wait between tries while the planner is away
    policy: str = ""            # the deployment's policy; empty: the planner's default

    @staticmethod
    def from_env(planner_variable, policy=""):
        """The configuration when `planner_variable` (e.g. EPLB_VLLM_PLANNER) is set, else None:
        EPLB_DEPLOYMENT (required), EPLB_TOKEN, EPLB_TLS_CA, EPLB_REPORT_EVERY_STEPS
        (1 … 1,000,000, default 100), EPLB_AGREE_TIMEOUT (seconds, > 0, default 30).
        ValueError naming the variable for anything malformed."""
        planner = os.environ.get(planner_variable, "").strip()
        if not planner:
            return None
        deployment = os.environ.get("EPLB_DEPLOYMENT", "").strip()
        if not deployment:
            raise ValueError(f"{planner_variable} is set but EPLB_DEPLOYMENT is not: name the "
                             "deployment these ranks report to")
        config = RemoteConfig(planner=planner, deployment=deployment,
                              token=os.environ.get("EPLB_TOKEN", "").strip(),
                              tls_ca_file=os.environ.get("EPLB_TLS_CA", "").strip(),
                              policy=policy)
        text = os.environ.get("EPLB_REPORT_EVERY_STEPS", "").strip()
        if text:
            if not text.isdigit() or not 1 <= int(text) <= 1_000_000:
                raise ValueError(f'EPLB_REPORT_EVERY_STEPS = "{text}" is not an integer in '
                                 "1 … 1,000,000")
            config.report_every = int(text)
        text = os.environ.get("EPLB_AGREE_TIMEOUT", "").strip()
        if text:
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not 0 < value <= 3600:
                raise ValueError(f'EPLB_AGREE_TIMEOUT = "{text}" is not a number of seconds in '
                                 "(0, 3600]")
            config.agree_timeout = value
        return config


class RemoteBalancer:
    """One EP rank's side of remote mode (see the module documentation).

    Collective: every rank of `group` constructs it at start-up, in the same order, and calls
    agree() at the same steps. group: a gloo process group of the EP ranks whose group rank is
    `rank` (default: one made over the whole world with timeout `config.agree_timeout`).

    Start-up: EP rank 0 creates the deployment from the shape unless it exists (commit
    "immediate": the engine moves the weights itself; an operator may create it beforehand with
    eplbctl, e.g. to choose the smoothing and the trigger), the others wait for it in the same
    collective; every rank then checks the deployment's shape, its commit mode and its own access. A bad shape, a deployment that exists with
    another spec, an unknown token or an unreachable planner raise on every rank (PlannerError
    or ValueError, the same message everywhere) instead of hanging."""

    def __init__(self, config, *, rank, num_ranks, num_layers, num_logical_experts,
                 num_physical_experts, num_groups=1, num_nodes=1, initial_map=None, group=None,
                 keep=8):
        import torch.distributed as dist

        self.config = config
        self.rank = rank
        self.shape = dict(num_layers=num_layers, num_logical_experts=num_logical_experts,
                          num_physical_experts=num_physical_experts, num_ranks=num_ranks,
                          num_groups=num_groups, num_nodes=num_nodes)
        self._dist = dist
        self._own_group = group is None
        if group is None:
            group = dist.new_group(backend="gloo",
                                   timeout=datetime.timedelta(seconds=config.agree_timeout))
        self._group = group
        if dist.get_rank(group) != rank or dist.get_world_size(group) != num_ranks:
            raise ValueError(f"rank = {rank} of num_ranks = {num_ranks}, but the group has this "
                             f"process as rank {dist.get_rank(group)} of "
                             f"{dist.get_world_size(group)}")
        self._broken = None  # why the agreement stopped, once a collective failed
        self._closed = False
        self.version = 0     # the plan in use; 0: the engine's own map
        self._acc = None     # counts since the last report: [L, E] logical or [L, P] physical
        self._acc_wide = None  # the 64-bit part of that sum (see _add)
        self._acc_narrow = False
        self._fold_at = 0  # see _add
        self._same_counts = None  # the counts tensor of the last step, shape checked (see _add)
        self._spare = None  # a handed-over sum's buffer, for the next batch
        self._slot_map = None  # the map of the epoch below (the engine's object)
        self._slot_map_epoch = 0
        self._slot_map_dirty = True  # the map's content may have changed since it was copied
        self._acc_phy2log = None
        self._acc_first = 0
        self._step = 0

        try:
            # Start-up's collectives wait for rank 0's calls: those end well within the group's
            # timeout, so that every rank gets rank 0's error rather than a collective's.
            self.client = PlannerClient(config.planner, token=config.token,
                                        tls_ca_file=config.tls_ca_file,
                                        timeout=min(config.rpc_timeout, config.agree_timeout / 3))
            deployment = self._start(initial_map)
        except BaseException:
            if self._own_group:
                dist.destroy_process_group(group)
            raise
        self._report_version = deployment["committed_version"]
        self.reporter = LoadReporter(self.client, config.deployment, rank, num_layers,
                                     num_logical_experts, flush_every_steps=config.report_every,
                                     session=secrets.randbits(63) + 1,
                                     max_backoff=config.max_backoff)
        self._pending_copy = None  # (event, host counts, first, last, version) of a GPU sum
        self.watcher = PlanWatcher(self.client, config.deployment, rank, keep=keep,
                                   max_backoff=config.max_backoff)

    # -- start-up --

    def _everyone(self, value):
        """All ranks' `value`, by group rank (one all_gather_object on the group)."""
        values = [None] * self.shape["num_ranks"]
        self._dist.all_gather_object(values, value, group=self._group)
        return values

    def _start(self, initial_map):
        """Creates (EP rank 0) and checks the deployment; returns it. Steps continue after the
        newest step the planner has seen (the largest over ranks)."""
        config = self.config
        outcome = None
        if self.rank == 0:
            try:
                try:
                    self.client.get_deployment(config.deployment)
                except PlannerError as error:
                    if error.code != "NOT_FOUND":
                        raise
                    self.client.create_deployment(config.deployment, **self.shape,
                                                  policy=config.policy, commit="immediate",
                                                  initial_map=initial_map)
            except Exception as error:  # noqa: BLE001 (every rank raises it, none hangs)
                outcome = _describe(error)
        created = self._everyone(outcome)[0]
        if created is not None:
            _raise(created, f"EP rank 0 could not create deployment {config.deployment}: ")
        deployment = None
        try:
            deployment = self.client.get_deployment(config.deployment)
            spec = deployment["spec"]
            differs = [f"{key} = {spec['shape'].get(key)} (the engine has {value})"
                       for key, value in self.shape.items() if spec["shape"].get(key) != value]
            if differs:
                raise ValueError(f"deployment {config.deployment} exists with another shape: "
                                 + ", ".join(differs))
            if spec["commit_mode"] != "COMMIT_MODE_IMMEDIATE":
                raise ValueError(f"deployment {config.deployment} commits a plan once every rank "
                                 f"staged it ({spec['commit_mode']}); engines move weights "
                                 "themselves and need commit: immediate")
            last_step = self.client.get_load(config.deployment)["last_step"]
            outcome = (None, last_step)
        except Exception as error:  # noqa: BLE001 (every rank raises it, none hangs)
            outcome = (_describe(error), 0)
        results = self._everyone(outcome)
        for rank, (error, _) in enumerate(results):
            if error is not None:
                _raise(error, "" if rank == self.rank else f"EP rank {rank}: ")
        self._step = max(last for _, last in results) + 1
        return deployment

    # -- every step --

    def record(self, counts):
        """Adds one step's tokens per logical expert [L, E] (any device: summed there; copied to
        the host once per report)."""
        self._add(counts, None)

    def record_physical(self, counts, phy2log):
        """Adds one step's tokens per slot [L, P] of the map `phy2log` [L, P] in use (summed per
        slot; turned into logical counts once per report)."""
        # The common step: the engine's own counter tensor again (checked when first seen), the
        # same map: one add, nothing else. (Even a shape comparison costs more than the add.)
        if (counts is self._same_counts and phy2log is self._acc_phy2log
                and self._step - self._acc_first + 1 < self._fold_at
                and self._pending_copy is None):
            self._acc.add_(counts)
            self._step += 1
            return
        self._add(counts, phy2log)

    def record_window(self, counts, steps, phy2log=None):
        """Adds tokens summed over the last `steps` steps, for an engine that keeps its own window
        of counts: per logical expert [L, E], or with `phy2log` per slot [L, P] of that map."""
        self._check_shape(counts, "num_logical_experts" if phy2log is None
                          else "num_physical_experts")
        if int(steps) < 1:
            raise ValueError(f"steps = {steps} must be ≥ 1")
        self._close_batch()
        self._collect()
        self._acc_first = self._step
        self._step += int(steps)
        self._acc = counts.detach().clone() if is_tensor(counts) else \
            np.array(as_numpy(counts)[0])
        self._acc_wide, self._acc_narrow, self._acc_phy2log = None, False, phy2log
        self._close_batch()

    def _check_shape(self, counts, width):
        expected = (self.shape["num_layers"], self.shape[width])
        if tuple(counts.shape) != expected:
            raise ValueError(f"counts has shape {tuple(counts.shape)}, expected (num_layers, "
                             f"{width}) = {expected}")

    def _add(self, counts, phy2log):
        self._check_shape(counts, "num_logical_experts" if phy2log is None
                          else "num_physical_experts")
        self._collect()
        if self._acc is not None and phy2log is not self._acc_phy2log:
            self._close_batch()
        tensor = is_tensor(counts)
        if self._acc is None:
            self._acc_first = self._step
            self._acc_phy2log = phy2log
            self._acc_wide = None
            # Summed in the counts' own dtype (an add without conversion: the cheapest on a CPU,
            # one kernel on a GPU), folded into 64-bit every _FOLD_EVERY steps so that 32-bit
            # counts cannot overflow (that takes 2^31 / 1024 = 2M tokens in one slot in one
            # step, beyond any batch).
            spare, self._spare = self._spare, None
            if tensor:
                narrow = not counts.dtype.is_floating_point and counts.element_size() < 8
                if (spare is not None and is_tensor(spare) and spare.dtype == counts.dtype
                        and spare.shape == counts.shape and spare.device == counts.device):
                    self._acc = spare.copy_(counts)  # the last batch's buffer, handed over
                elif not counts.dtype.is_floating_point:
                    self._acc = counts.detach().clone()
                else:
                    self._acc = counts.detach().to(dtype=torch_float64(), copy=True)
            else:
                array = np.asarray(as_numpy(counts)[0])
                narrow = array.dtype.kind in "iub" and array.dtype.itemsize < 8
                self._acc = array.copy() if array.dtype.kind in "iu" else array.astype(np.float64)
            self._acc_narrow = narrow
        elif tensor:
            self._acc.add_(counts.detach())
        else:
            np.add(self._acc, as_numpy(counts)[0], out=self._acc, casting="unsafe")
        self._same_counts = counts if tensor else None
        self._step += 1
        steps = self._step - self._acc_first
        if self._acc_narrow and steps % _FOLD_EVERY == 0:
            self._fold()
        if steps >= self.config.report_every:
            self._close_batch()
            return
        # The next step (counted from the batch's first) that needs more than an add.
        self._fold_at = min(self.config.report_every,
                            (steps // _FOLD_EVERY + 1) * _FOLD_EVERY if self._acc_narrow
                            else self.config.report_every)

    def _fold(self):
        """Moves the narrow sum into the 64-bit one."""
        acc = self._acc
        wide = acc.long() if is_tensor(acc) else acc.astype(np.int64)
        self._acc_wide = wide if self._acc_wide is None else self._acc_wide + wide
        if is_tensor(acc):
            acc.zero_()
        else:
            acc.fill(0)

    def _close_batch(self):
        """Hands the open sum to the reporter (from a GPU: an asynchronous copy, handed over
        when it has landed)."""
        if self._acc is None:
            return
        acc, wide = self._acc, self._acc_wide
        phy2log, self._acc, self._acc_wide = self._acc_phy2log, None, None
        self._same_counts = None
        first, last, version = self._acc_first, self._step - 1, self._version_for_reports()
        on_cpu = not is_tensor(acc) or acc.device.type == "cpu"
        if phy2log is not None and on_cpu and wide is None:
            # Per slot, as summed: the reporter's own thread turns the sum into logical counts
            # (through a copy of the map, taken when the map may have changed), so the serving
            # thread only copies it. The buffer is reused for the next batch.
            native = self.reporter._native
            if self._slot_map is not phy2log or self._slot_map_dirty:
                self._slot_map_epoch += 1
                table = phy2log.cpu().numpy() if is_tensor(phy2log) else np.asarray(phy2log)
                native.set_slot_map(self._slot_map_epoch, table,
                                    self.shape["num_logical_experts"])
                self._slot_map, self._slot_map_dirty = phy2log, False
            native.add_slots_later(first, last, version, self._slot_map_epoch,
                                   acc.numpy() if is_tensor(acc) else acc)
            self._spare = acc
            self._report_later_error()
            return
        acc = acc.double() if is_tensor(acc) else acc.astype(np.float64)
        if wide is not None:
            acc += wide.double() if is_tensor(wide) else wide
        if phy2log is not None:
            acc = _to_logical(acc, phy2log, self.shape["num_logical_experts"])
        if is_tensor(acc) and acc.device.type != "cpu":
            import torch

            self._flush_copy()  # at most one copy in flight
            host = torch.empty(acc.shape, dtype=acc.dtype, pin_memory=True)
            host.copy_(acc, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._pending_copy = (event, host, first, last, version)
            return
        self._hand_over(acc, first, last, version)

    def _collect(self):
        """Hands over a sum copied from the GPU once the copy has landed (never waits)."""
        if self._pending_copy is not None and self._pending_copy[0].query():
            self._flush_copy()

    def _flush_copy(self):
        if self._pending_copy is None:
            return
        event, host, first, last, version = self._pending_copy
        self._pending_copy = None
        event.synchronize()
        self._hand_over(host, first, last, version)

    def _hand_over(self, counts, first, last, version):
        # Copied here, added to the reporter's batch by a C++ thread (a Python thread would make
        # the serving thread wait for the GIL). Bad counts (negative, say) are logged, never
        # raised into the serving loop.
        array = counts.numpy() if is_tensor(counts) else counts  # CPU float64 here
        self.reporter._native.add_steps_later(first, last, version, array)
        self._report_later_error()

    def _report_later_error(self):
        error = self.reporter._native.take_later_error()
        if error:
            logger.error("eplb: load not reported: %s", error)


    def _version_for_reports(self):
        # The plan in use, or (on the engine's own map) the committed one at start-up. Reports
        # must name a plan the planner retains: when the plan in use is older than every plan the
        # watcher holds (the agreement stopped, or is behind), the oldest held.
        version = self.version or self._report_version
        held = self.watcher.held()
        return held[0] if held and version < held[0] else version

    # -- at the rebalance point --

    def agree(self):
        """The newest committed plan every rank holds, if newer than the one in use:
        (version, ExpertMap), the same on every rank; None to keep the current map. Collective;
        takes at most agree_timeout (then None now and at every later call)."""
        if self._broken is not None:
            return None
        # The maps are taken now: a plan arriving during the collective may evict one.
        maps = {v: m for v in self.watcher.held()[-8:] if (m := self.watcher.map(v)) is not None}
        mine = sorted(maps) + [0] * (8 - len(maps))
        try:
            everyone = self._everyone(mine)
        except Exception as error:  # noqa: BLE001 (gloo's timeout or a peer's death)
            self._broken = str(error)
            logger.error("eplb: the EP ranks could not agree on a plan (%s); keeping plan %d "
                         "from now on", str(error).splitlines()[0][:300], self.version)
            return None
        common = set(everyone[0])
        for versions in everyone[1:]:
            common &= set(versions)
        common.discard(0)
        agreed = max(common, default=0)
        if agreed <= self.version:
            return None
        # Counts so far were routed under the map in use: report them against it before the
        # engine switches (an engine may update its map tensor in place).
        self.flush_batch()
        return agreed, maps[agreed]

    def flush_batch(self):
        """Closes the open sum now: for an engine whose map changes step by step (vLLM's
        asynchronous rearrangement moves one layer per step), so that each step's counts are
        turned into logical counts through the map they were routed with."""
        self._close_batch()
        self._slot_map_dirty = True

    def applied(self, version):
        """The engine serves with plan `version` from now on: acknowledges ACTIVE."""
        self.flush_batch()
        self.version = version
        expert_map = self.watcher.map(version)
        self.watcher.ack(version, "active", expert_map.hash if expert_map is not None else 0)

    @property
    def closed(self):
        return self._closed

    @property
    def agreement_broken(self):
        """Why the agreement stopped (a collective failed), or None while it works."""
        return self._broken

    def close(self, timeout=5.0):
        """Reports what was recorded (waiting at most `timeout` seconds), stops the threads;
        returns the reporter's final statistics (LoadReporter.stats); None if closed already."""
        if self._closed:
            return None
        self._closed = True
        try:
            self._close_batch()
            self._flush_copy()
            self.reporter.flush(timeout)
            self._report_later_error()
            return self.reporter.stats()
        finally:
            self.watcher.close()
            self.reporter.close()


_FOLD_EVERY = 1024


def torch_float64():
    import torch

    return torch.float64


def _to_logical(counts, phy2log, num_experts):
    """Counts per slot [L, P] summed into counts per logical expert [L, E] through phy2log."""
    if is_tensor(counts):
        import torch

        index = torch.as_tensor(phy2log, device=counts.device)
        if index.dtype != torch.int64:
            index = index.long()
        empty = index < 0  # slots of ranks added by an elastic scale-up: counted nowhere
        out = torch.zeros(counts.shape[0], num_experts, dtype=counts.dtype, device=counts.device)
        return out.scatter_add_(1, index.clamp(min=0), counts.masked_fill(empty, 0))
    phy2log = np.asarray(as_numpy(phy2log)[0], dtype=np.int64)
    layers = counts.shape[0]
    used = phy2log >= 0
    flat = (phy2log + np.arange(layers)[:, None] * num_experts)[used]
    return np.bincount(flat, weights=counts[used],
                       minlength=layers * num_experts).reshape(layers, num_experts)


def _describe(error):
    """A picklable description of an error, to raise the same on every rank."""
    if isinstance(error, PlannerError):
        return ("PlannerError", error.message, error.code, error.reason, error.field)
    if isinstance(error, ValueError):
        return ("ValueError", str(error))
    return ("RuntimeError", f"{type(error).__name__}: {error}")


def _raise(description, prefix):
    if description[0] == "PlannerError":
        _, message, code, reason, field = description
        raise PlannerError(prefix + message, code, reason, field)
    raise (ValueError if description[0] == "ValueError" else RuntimeError)(
        prefix + description[1])
