"""A stand-in serving engine in remote mode: one EP rank per process, under torch.distributed
(gloo), written from an engine's call sites. Every step it routes skewed tokens through its current
map (tokens of an expert split over its replicas), records the per-slot counts through
eplb.remote.RemoteBalancer, and at the rebalance interval asks for the agreed plan, applies it and
acknowledges it. It runs `steps` steps (with `stop_file`, on until that file exists: the
ranks decide together at a rebalance interval). It logs one JSON line per step: [step, plan version, map hash, seconds the step's
eplb calls took], and at the end the total tokens it recorded per logical expert.

    python remote_engine.py '{"rank": 0, "world": 4, "port": 29500, "planner": "...", ...}'
"""
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import eplb
from eplb.remote import PlannerError, RemoteBalancer, RemoteConfig


def physical_counts(logical, phy2log, logcnt):
    """Each expert's tokens split over its replicas (the remainder to the first ones)."""
    layers, slots = phy2log.shape
    out = np.zeros((layers, slots), dtype=np.int64)
    for layer in range(layers):
        seen = np.zeros(logical.shape[1], dtype=np.int64)
        for slot, expert in enumerate(phy2log[layer]):
            count, replicas = logical[layer, expert], logcnt[layer, expert]
            out[layer, slot] = count // replicas + (1 if seen[expert] < count % replicas else 0)
            seen[expert] += 1
    return out


class VllmEngine:
    """vLLM's call sites (the stand-in in engines/vllm): the plugin loaded at start-up, the
    model's EplbState fed each step's per-slot counts and stepped."""

    def __init__(self, initial, experts, interval):
        from vllm.plugins import load_general_plugins

        load_general_plugins()
        from vllm.distributed.eplb.eplb_state import EplbState, Model

        self.state = EplbState(step_interval=interval)
        self.state.add_model(Model(), torch.from_numpy(initial), experts)
        self.model = self.state.model_states["model0"]
        self.experts = experts
        self.state.step(is_dummy=True)  # the first step starts remote mode (collective)

    @property
    def balancer(self):
        import eplb.vllm

        return eplb.vllm._remote.balancer

    def step(self, counts):
        self.model.expert_load_pass.copy_(counts)
        self.state.step()
        return eplb.ExpertMap.from_phy2log(self.model.physical_to_logical_map.numpy(),
                                           self.experts, dist.get_world_size())


class SglangEngine:
    """SGLang's call sites (the stand-in in engines/sglang): the scheduler's expert location,
    recorder and EPLBManager; each pass records its per-slot counts and ends with
    on_forward_pass_end()."""

    def __init__(self, layers, experts, slots, world, interval):
        from sglang.srt.eplb import eplb_manager, expert_distribution, expert_location
        from sglang.srt.server_args import ServerArgs

        self.location = expert_location
        self.recorder = expert_distribution.get_global_expert_distribution_recorder()
        self.server_args = ServerArgs(ep_size=world, ep_num_redundant_experts=slots - experts,
                                      eplb_rebalance_num_iterations=interval)
        self.model_config = expert_location.ModelConfigForExpertLocation(layers, experts)
        expert_location.set_global_expert_location_metadata(
            expert_location.ExpertLocationMetadata.init_trivial(self.server_args,
                                                                self.model_config))
        self.manager = eplb_manager.EPLBManager(self)
        self.experts = experts

    @property
    def balancer(self):
        import eplb.sglang

        remote = eplb.sglang._remote
        return remote.balancer if remote is not None and remote.balancer is not None else Idle()

    def update_expert_location(self, metadata, update_layer_ids):
        current = self.location.get_global_expert_location_metadata()
        for layer in update_layer_ids:  # the weights move here
            current.physical_to_logical_map[layer] = metadata.physical_to_logical_map[layer]
            current.physical_to_logical_map_cpu[layer] = metadata.physical_to_logical_map[layer]

    def step(self, counts):
        self.recorder.on_forward_pass(counts)
        self.manager.on_forward_pass_end()
        phy2log = self.location.get_global_expert_location_metadata().physical_to_logical_map_cpu
        return eplb.ExpertMap.from_phy2log(phy2log.numpy(), self.experts, dist.get_world_size())


class Idle:
    """The balancer's fields before SGLang's first rebalance started remote mode."""

    version = 0
    agreement_broken = None

    def close(self, timeout):
        return {}


def main():
    a = json.loads(sys.argv[1])
    rank, world = a["rank"], a["world"]
    out = Path(a["out"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{a['port']}", rank=rank,
                            world_size=world)
    layers, experts, slots = a["layers"], a["experts"], a["slots"]
    config = RemoteConfig(planner=a["planner"], deployment=a["deployment"],
                          token=a.get("token", ""), report_every=a["report_every"],
                          agree_timeout=a["agree_timeout"], rpc_timeout=2.0)
    initial = np.tile(np.arange(slots) % experts, (layers, 1))
    engine = None
    try:
        if a.get("engine") == "vllm":
            engine = VllmEngine(initial, experts, a["interval"])
        elif a.get("engine") == "sglang":
            engine = SglangEngine(layers, experts, slots, world, a["interval"])
        else:
            balancer = RemoteBalancer(config, rank=rank, num_ranks=world, num_layers=layers,
                                      num_logical_experts=experts,
                                      num_physical_experts=a.get("engine_slots", slots))
    except (PlannerError, ValueError) as error:
        (out / f"error{rank}.txt").write_text(f"{type(error).__name__}: {error}")
        dist.destroy_process_group()
        return 3
    current = eplb.ExpertMap.from_phy2log(initial, experts, world)
    rng = np.random.default_rng(1000 + rank)
    weights = 1.0 / np.arange(1, experts + 1) ** 1.2  # Zipf-like: expert 0 is the hottest
    total = np.zeros((layers, experts), dtype=np.int64)
    log = open(out / f"rank{rank}.jsonl", "w", buffering=1)
    stop_file = Path(a["stop_file"]) if a.get("stop_file") else None
    step = -1
    while True:
        step += 1
        logical = rng.poisson(200 * np.roll(weights, step // 97 % experts)[None, :]
                              * np.ones((layers, 1)))
        # As an engine: one counter tensor and one map tensor, written in place.
        if step == 0:
            phy2log = torch.from_numpy(current.phy2log.copy())
            counts = torch.zeros(phy2log.shape, dtype=torch.int32)
        elif not np.array_equal(phy2log.numpy(), current.phy2log):
            phy2log.copy_(torch.from_numpy(current.phy2log))
        counts.copy_(torch.from_numpy(physical_counts(logical, current.phy2log, current.logcnt)))
        started = time.monotonic()
        if engine is not None:
            current = engine.step(counts)
            balancer = engine.balancer
        else:
            balancer.record_physical(counts, phy2log)
            if step % a["interval"] == a["interval"] - 1:
                agreed = balancer.agree()
                if agreed is not None:
                    version, new_map = agreed
                    current = new_map  # the engine moves its weights here
                    balancer.applied(version)
        spent = time.monotonic() - started
        total += logical
        log.write(json.dumps([step, balancer.version, f"{current.hash:016x}", spent]) + "\n")
        time.sleep(a["step_sleep"])
        if step + 1 >= a["steps"] and step % a["interval"] == a["interval"] - 1:
            if stop_file is None:
                break
            # Run on until the test says stop; all ranks stop at the same step.
            flag = torch.tensor([int(stop_file.exists() or step >= 100_000)])
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if flag.item():
                break
    dumped = getattr(getattr(engine, "recorder", None), "dumped", None)
    (out / f"total{rank}.json").write_text(json.dumps(
        {"total": total.tolist(), "broken": balancer.agreement_broken,
         "dumped": None if dumped is None else dumped.tolist()}))
    if a.get("engine") == "vllm":
        stats = importlib.import_module("eplb.vllm").shutdown(timeout=30)
    else:
        stats = balancer.close(timeout=30)
    (out / f"stats{rank}.json").write_text(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
