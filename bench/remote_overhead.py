"""Remote mode's cost on the serving loop: a stand-in step of 1 ms (a busy wait, then the step's
per-slot counts written into one counter tensor, as vLLM's expert_load_pass), with and without
remote mode: --path vllm (default) runs vLLM's EplbState.step (the stand-in of
tests/python/engines) with and without eplb.vllm's adapter, which reads vLLM's window of load
passes once per report; --path generic calls RemoteBalancer.record_physical every step (an engine
without a window). Reports every --report-every steps. The blocks do not rebalance (the engine's
own rearrangement would drown the adapter's cost in noise): the agreement, the one thing remote
mode adds at a rebalance point, is timed on its own and shown spread over --agree-every steps. One
rank (a gloo group of one) against a real eplb-planner; DeepSeek-V3's shape (58 MoE layers, 256
experts, 288 slots). Runs alternate plain and instrumented blocks, so both see the same machine.

Then the same with the planner stopped (SIGSTOP: it holds connections but answers nothing, the
worst case for a client): the longest step shows whether any step waited on the network.

    build-python/venv/bin/python bench/remote_overhead.py [--planner build/bin/eplb-planner]
"""
import argparse
import datetime
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from eplb.remote import PlannerClient, RemoteBalancer, RemoteConfig

LAYERS, EXPERTS, SLOTS = 58, 256, 288


def busy(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def run_block(balancer, counts, phy2log, steps, step_seconds, agree_every, durations):
    load_pass = torch.zeros_like(counts[0])  # the engine's per-step counter, written in place
    for i in range(steps):
        started = time.perf_counter()
        busy(step_seconds)
        load_pass.copy_(counts[i % len(counts)])  # the step's MoE layers count their tokens
        if balancer is not None:
            balancer.record_physical(load_pass, phy2log)
            if (i + 1) % agree_every == 0:
                agreed = balancer.agree()
                if agreed is not None:
                    balancer.applied(agreed[0])
        durations.append(time.perf_counter() - started)


class VllmLoop:
    """vLLM's call sites (the stand-in of tests/python/engines/vllm): per step the MoE layers
    write expert_load_pass, then EplbState.step() runs, as vLLM's model runner calls it; with
    the adapter installed or, for the plain blocks, vLLM's own step."""

    def __init__(self, config, step_interval):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests/python/engines"))
        import eplb.vllm
        from vllm.distributed.eplb import eplb_state, policy

        self.plain_step = eplb_state.EplbState.step
        eplb.vllm.install_remote(eplb_state, config)
        eplb.vllm.install_remote_policy(policy)
        # vLLM's window is 1000 steps by default; a shorter one keeps the engine's own
        # rearrangement (a scatter over the window, in both kinds of block) from drowning the
        # adapter's cost in noise. The adapter reads the window once per report.
        self.state = eplb_state.EplbState(step_interval=step_interval, window_size=128)
        phy2log = torch.from_numpy(np.tile(np.arange(SLOTS) % EXPERTS, (LAYERS, 1)))
        self.state.add_model(eplb_state.Model(), phy2log, EXPERTS)
        self.model = self.state.model_states["model0"]
        self.state.step(is_dummy=True)  # starts remote mode
        self.remote = eplb.vllm._remote

    def run(self, counts, steps, step_seconds, with_adapter, durations):
        step = type(self.state).step if with_adapter else self.plain_step
        for i in range(steps):
            started = time.perf_counter()
            busy(step_seconds)
            self.model.expert_load_pass.copy_(counts[i % len(counts)])
            step(self.state)
            durations.append(time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planner", default=str(Path(__file__).resolve().parents[1] /
                                                 "build/bin/eplb-planner"))
    parser.add_argument("--step-ms", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=2000, help="steps per block")
    parser.add_argument("--blocks", type=int, default=6, help="blocks of each kind, alternated")
    parser.add_argument("--report-every", type=int, default=100)
    parser.add_argument("--agree-every", type=int, default=3000,
                        help="steps between rebalance points (vLLM's step_interval, 3000 by "
                             "default), to spread the agreement's cost over")
    parser.add_argument("--path", choices=("vllm", "generic"), default="vllm",
                        help="vllm: eplb.vllm's adapter around vLLM's EplbState.step (the "
                             "stand-in); generic: RemoteBalancer.record_physical every step")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="eplb-remote-bench-"))
    # In a cluster the planner runs elsewhere, and a serving process has cores to spare for
    # eplb's background threads: here the planner and every thread but the serving loop get the
    # last CPU, the serving loop the first (on a machine with at least two).
    cpus = sorted(os.sched_getaffinity(0))
    pin = ["taskset", "-c", str(cpus[-1])] if len(cpus) > 1 and shutil.which("taskset") else []
    if pin:
        os.sched_setaffinity(0, {cpus[-1]})  # threads made from now on inherit it
    planner = subprocess.Popen(
        [*pin, args.planner, "--listen=127.0.0.1:0", f"--port-file={work / 'port'}",
         f"--state-dir={work / 'state'}", "--metrics-port=0", "--log-level=warn"])
    try:
        while not (work / "port").is_file() or not (work / "port").read_text().strip():
            time.sleep(0.02)
        address = f"127.0.0.1:{(work / 'port').read_text().strip()}"
        PlannerClient(address).create_deployment(
            "bench", num_layers=LAYERS, num_logical_experts=EXPERTS, num_physical_experts=SLOTS,
            num_ranks=1, policy="deepseek", commit="immediate", trigger={"interval_steps": 0})
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                                world_size=1, timeout=datetime.timedelta(seconds=60))
        config = RemoteConfig(planner=address, deployment="bench", report_every=args.report_every)
        rng = np.random.default_rng(1)
        counts = [torch.from_numpy(rng.poisson(30, (LAYERS, SLOTS)).astype(np.int32))
                  for _ in range(16)]
        phy2log = torch.from_numpy(np.tile(np.arange(SLOTS) % EXPERTS, (LAYERS, 1)))
        step = args.step_ms / 1000
        plain, remote = [], []
        if args.path == "vllm":
            loop = VllmLoop(config, 1 << 62)
            balancer = loop.remote.balancer

            def block(with_adapter, steps, durations):
                loop.run(counts, steps, step, with_adapter, durations)
        else:
            balancer = RemoteBalancer(config, rank=0, num_ranks=1, num_layers=LAYERS,
                                      num_logical_experts=EXPERTS, num_physical_experts=SLOTS)

            def block(with_adapter, steps, durations):
                run_block(balancer if with_adapter else None, counts, phy2log, steps, step,
                          1 << 62, durations)
        if pin:
            # This thread, the serving loop, moves to the first CPU; the threads started so far
            # (eplb's, gRPC's, gloo's) stay on the last.
            os.sched_setaffinity(0, {cpus[0]})
        block(False, 200, [])  # warm-up
        block(True, 200, [])
        longest = {False: 0.0, True: 0.0}
        for _ in range(args.blocks):
            for target, with_adapter in ((plain, False), (remote, True)):
                durations = []
                block(with_adapter, args.steps, durations)
                target.append(sum(durations) / len(durations))
                longest[with_adapter] = max(longest[with_adapter], max(durations))
        assert balancer.reporter.flush(30), "the planner did not take the reports"
        stats = balancer.reporter.stats()

        per_plain = statistics.median(plain) * 1e6
        per_remote = statistics.median(remote) * 1e6
        agreements = []
        for _ in range(200):
            started = time.perf_counter()
            balancer.agree()
            agreements.append(time.perf_counter() - started)
        agree_us = statistics.median(agreements) * 1e6
        print(f"path {args.path}: shape {LAYERS} x {EXPERTS} ({SLOTS} slots), step "
              f"{args.step_ms} ms, report every {args.report_every} steps; {args.blocks} blocks "
              f"of {args.steps} steps each")
        print(f"plain step        median of blocks {per_plain:8.1f} us")
        print(f"with remote mode  median of blocks {per_remote:8.1f} us")
        print(f"overhead          {per_remote - per_plain:8.1f} us per step = "
              f"{(per_remote - per_plain) / per_plain * 100:.2f}% of the step "
              f"(blocks: {', '.join(f'{(r - p) * 1e6:.1f}' for p, r in zip(plain, remote))} us)")
        print(f"agreement         {agree_us:8.1f} us per call (median of 200; one rank), "
              f"{agree_us / args.agree_every:.2f} us per step over {args.agree_every} steps")
        print(f"reports accepted  {stats['reports_accepted']}, failed attempts "
              f"{stats['failed_attempts']}; longest step plain {longest[False] * 1e6:.1f} us, "
              f"with remote mode {longest[True] * 1e6:.1f} us")

        # The planner stops answering: steps go on as before.
        planner.send_signal(signal.SIGSTOP)
        durations = []
        block(True, args.steps * 2, durations)
        planner.send_signal(signal.SIGCONT)
        print(f"planner stopped   mean step {statistics.mean(durations) * 1e6:8.1f} us, longest "
              f"{max(durations) * 1e6:.1f} us over {len(durations)} steps "
              f"(pending reports {balancer.reporter.stats()['reports_pending']})")
        if args.path == "vllm":
            import eplb.vllm

            eplb.vllm.shutdown(timeout=30)
        else:
            balancer.close(timeout=30)
    finally:
        planner.send_signal(signal.SIGCONT)
        planner.terminate()
        planner.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
