"""Random malformed input to every entry point of the package: it is refused with ValueError (or
FileNotFoundError for a path), never a crash or another exception, and leaves no file behind."""
import json

import numpy as np
import pytest

import eplb

DTYPES = [np.int8, np.int32, np.int64, np.uint64, np.float16, np.float32, np.float64, bool,
          np.complex64, object, "U3"]
DIMS = [0, 1, 2, 3, 7, 12, 16, 64]


# Shapes that fit the calls below (2 layers, 12 experts, 16 slots), so that input gets past the
# shape checks as often as not.
PLAUSIBLE = [(2, 12), (2, 16), (2, 12, 5), (1, 12), (2, 40), (2, 12, 29)]


def random_array(rng):
    if rng.random() < 0.5:
        shape = PLAUSIBLE[rng.integers(len(PLAUSIBLE))]
        dtype = [np.int64, np.int32, np.float64][rng.integers(3)]
        values = rng.integers(0, 12, size=shape)
        for _ in range(rng.integers(0, 3)):  # a few bad entries
            values.flat[rng.integers(values.size)] = rng.choice([-1, 12, 2 ** 31, -(2 ** 40)])
        return values.astype(dtype)
    shape = tuple(int(rng.choice(DIMS)) for _ in range(rng.integers(0, 4)))
    dtype = DTYPES[rng.integers(len(DTYPES))]
    values = rng.choice([-(2 ** 40), -1, 0, 1, 3, 11, 2 ** 31, 2 ** 62], size=shape)
    if dtype in ("U3", object):
        return values.astype(str).astype(dtype)
    with np.errstate(all="ignore"):
        array = values.astype(dtype)
    if array.dtype.kind == "f" and array.size and rng.random() < 0.3:
        array.flat[rng.integers(array.size)] = rng.choice([np.nan, np.inf, -np.inf])
    return array


def refused_or_fine(call):
    try:
        call()
    except ValueError:
        pass


@pytest.mark.parametrize("seed", range(4))
def test_random_arrays_are_refused_cleanly(seed):
    rng = np.random.default_rng(seed)
    valid = eplb.ExpertMap.from_phy2log(np.arange(16)[None, :] % 12, 12, 8)
    for _ in range(300):
        a, b, c = random_array(rng), random_array(rng), random_array(rng)
        slots = int(rng.choice([0, 1, 12, 16, 40, 2 ** 31, -(2 ** 40)]))
        ranks = int(rng.choice([0, 1, 8, 5, 2 ** 32, -1]))
        policy = str(rng.choice(["balanced", "deepseek", "contiguous", "x"]))
        refused_or_fine(lambda: eplb.rebalance_experts(a, slots, 4, 2, ranks, policy=policy,
                                                       previous=b if rng.random() < 0.5 else None))
        refused_or_fine(lambda: eplb.plan(a, slots, ranks, policy=policy))
        refused_or_fine(lambda: eplb.ExpertMap.from_phy2log(a, int(rng.choice([0, 12, 2 ** 40])),
                                                            ranks))
        refused_or_fine(lambda: eplb.ExpertMap.from_tables(a, b, c, ranks))
        refused_or_fine(lambda: eplb.evaluate(valid, a, previous=b if rng.random() < 0.5 else None))


def mutate(text, rng):
    data = bytearray(text.encode())
    for _ in range(rng.integers(1, 6)):
        position = int(rng.integers(len(data)))
        action = rng.integers(3)
        if action == 0:
            data[position] = int(rng.integers(32, 127))
        elif action == 1:
            del data[position:position + int(rng.integers(1, 20))]
        else:
            data[position:position] = rng.choice([b"-1", b"1e999", b"[", b"}", b"99999999999",
                                                  b'"x"', b"null", b"0.5"])
    return data.decode("utf-8", "replace")


def test_mutated_map_files_are_refused_cleanly(tmp_path):
    rng = np.random.default_rng(17)
    m = eplb.ExpertMap.from_phy2log(np.arange(32).reshape(2, 16) % 12, 12, 8)
    texts = [m.to_text(fmt) for fmt in eplb.MAP_FORMATS]
    for i in range(600):
        text = mutate(texts[i % len(texts)], rng)
        refused_or_fine(lambda: eplb.ExpertMap.from_text(text, num_ranks=8))
        path = tmp_path / "map.json"
        path.write_text(text)
        refused_or_fine(lambda: eplb.ExpertMap.read(str(path), num_ranks=8))
    assert [p.name for p in tmp_path.iterdir()] == ["map.json"]
    json.loads(texts[0])  # the unmutated text is JSON: the mutations, not the writer, break it
