"""Planning time from Python: eplb.rebalance_experts (the binding, from a torch tensor, as the
engine adapters call it) against the same plan timed in C++ around Plan() alone, by the same
machine code in the same process (eplb._core._plan_seconds), and against the torch transcription
of the reference algorithm (tests/support/reference_eplb.py, as the engines' own Python
implementations run).

    build-python/venv/bin/python bench/python_bench.py     # after deploy/scripts/test-python.sh

Run it with the interpreter the eplb package is installed in. Prints a markdown table: the best
time of each (C++ and Python plans alternate, so drift hits both alike; the best of many is the
cost without interference, which on a shared virtual machine comes and goes), the binding's
overhead over C++ (best against best) and the speed-up over the reference. Loads are log-normal
(σ 1.5) token counts.
"""

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

import eplb

SHAPES = [  # name, L, E, G, N, R, P
    ("DeepSeek-V3 prefill", 58, 256, 8, 4, 32, 288),
    ("DeepSeek-V3 decode", 58, 256, 8, 18, 144, 288),
    ("Qwen3-235B", 94, 128, 1, 2, 16, 144),
    ("Kimi-K2", 61, 384, 1, 8, 64, 448),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--reference-repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(here, "..", "tests", "support"))
    import reference_eplb

    torch.set_num_threads(1)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"eplb {eplb.__version__}, torch {torch.__version__}, Python {platform.python_version()}")
    print()
    print("| shape | policy | C++ ms | Python ms | binding overhead | reference ms "
          "| vs reference |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(2026)
    for name, layers, experts, groups, nodes, ranks, slots in SHAPES:
        weight = torch.from_numpy(np.round(rng.lognormal(0, 1.5, (layers, experts)) * 1000)
                                  .astype(np.int64))
        drifted = torch.from_numpy(np.round(weight.numpy() * rng.uniform(0.5, 2.0, weight.shape))
                                   .astype(np.int64))
        previous = eplb.rebalance_experts(weight, slots, groups, nodes, ranks)
        reference = []
        for _ in range(args.reference_repeats):
            start = time.perf_counter()
            reference_eplb.rebalance_experts(drifted, slots, groups, nodes, ranks)
            reference.append(time.perf_counter() - start)
        for policy, prev in (("deepseek", None), ("balanced", None),
                             ("balanced, from previous", previous)):
            policy_name = policy.split(",")[0]
            prev_map = None if prev is None else eplb.ExpertMap.from_phy2log(prev, experts, ranks)
            cpp, python = [], []
            for _ in range(args.repeats):
                cpp += eplb._core._plan_seconds(drifted.numpy(), slots, ranks, groups, nodes,
                                                policy_name, prev_map, 1)
                start = time.perf_counter()
                eplb.rebalance_experts(drifted, slots, groups, nodes, ranks, policy=policy_name,
                                       previous=prev)
                python.append(time.perf_counter() - start)
            c, p, r = (min(times) * 1e3 for times in (cpp, python, reference))
            print(f"| {name} (L {layers}, E {experts}, R {ranks}, P {slots}) | {policy} | "
                  f"{c:.2f} | {p:.2f} | {100 * (p - c) / c:+.1f}% | {r:.0f} | {r / p:.1f}× |")


if __name__ == "__main__":
    main()
