#!/usr/bin/env python3
"""Writes load-deepseek-v3.json: a synthetic DeepSeek-V3-shaped expert load (58 MoE layers x 256
experts), token counts of one prefill batch per layer. Each expert's share is log-normal
(sigma drawn per layer in [0.6, 1.4]) and a few experts per layer are hot, as routers produce.
Deterministic: the same seed gives the same file."""
import json
import math
import random

LAYERS, EXPERTS, TOKENS_PER_LAYER, TOP_K = 58, 256, 16384, 8


def main():
    rng = random.Random(20260101)
    rows = []
    for _ in range(LAYERS):
        sigma = rng.uniform(0.6, 1.4)
        weights = [math.exp(rng.gauss(0.0, sigma)) for _ in range(EXPERTS)]
        for hot in rng.sample(range(EXPERTS), 4):
            weights[hot] *= rng.uniform(3.0, 8.0)
        total = sum(weights)
        rows.append([round(w / total * TOKENS_PER_LAYER * TOP_K) for w in weights])
    with open("load-deepseek-v3.json", "w") as f:
        f.write('{"load": [\n')
        f.write(",\n".join("  " + json.dumps(row, separators=(",", ":")) for row in rows))
        f.write("\n]}\n")


if __name__ == "__main__":
    main()
