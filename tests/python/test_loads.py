"""eplb.read_load: loads as engines record them (the golden files of tests/core/golden)."""
import numpy as np
import pytest
import torch

import eplb
from conftest import HERE

GOLDEN = HERE.parent / "core" / "golden"


def test_eplb_load_files(tmp_path):
    path = tmp_path / "load.json"
    path.write_text('{"load": [[1, 2.5], [0, 4]]}')
    load = eplb.read_load(path)
    assert load.dtype == np.float64 and load.tolist() == [[1, 2.5], [0, 4]]


def test_sglang_logical_count_json_and_pt(tmp_path):
    load = eplb.read_load(GOLDEN / "sglang_logical_count.json", "sglang", layer_ids="1-3")
    assert load.tolist() == [[6, 1, 3, 2], [2, 7, 1, 2], [1, 4, 1, 4]]
    # The same counts as SGLang's dump_expert_distribution_record writes them (torch.save).
    counts = torch.tensor([[[0, 0, 0, 0], [5, 0, 2, 1], [0, 7, 1, 0], [1, 1, 1, 1]],
                           [[0, 0, 0, 0], [1, 1, 1, 1], [2, 0, 0, 2], [0, 3, 0, 3]]],
                          dtype=torch.int32)
    dump = tmp_path / "expert_distribution_recorder_1.pt"
    torch.save({"rank": 0, "logical_count": counts}, dump)
    assert eplb.read_load(dump, "sglang", layer_ids=range(1, 4),
                          num_hidden_layers=4).tolist() == load.tolist()
    with pytest.raises(ValueError) as error:
        eplb.read_load(dump, "sglang", layer_ids="1-4")
    assert str(error.value) == ("the load has 4 rows, but the layer ids name 5 hidden layers (MoE "
                                "layers 1-4 of 5 hidden layers)")
    torch.save({"rank": 0}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="expected a dict with logical_count"):
        eplb.read_load(tmp_path / "other.pt", "sglang")
    # A pickle that would run code is not loaded.
    torch.save({"logical_count": counts, "payload": Exploding()}, tmp_path / "unsafe.pt")
    with pytest.raises(ValueError, match="cannot be read safely"):
        eplb.read_load(tmp_path / "unsafe.pt", "sglang")
    assert not Exploding.ran


class Exploding:
    ran = False

    def __reduce__(self):
        return (Exploding.run, ())

    @staticmethod
    def run():
        Exploding.ran = True


def test_trtllm_statistics():
    stats = GOLDEN / "trtllm_stats"
    assert eplb.read_load(stats, "trtllm-stats").tolist() == [[10, 4, 3, 5], [3, 8, 8, 3]]
    assert eplb.read_load(stats, "trtllm-stats", iterations=(100, 101)).tolist() == [
        [5, 3, 2, 4], [1, 8, 2, 1]]
    assert eplb.read_load(stats, "trtllm-stats", layer_ids=[2],
                          num_hidden_layers=3).tolist() == [[3, 8, 8, 3]]
    with pytest.raises(ValueError, match="holds no statistics of iterations 7 to 8"):
        eplb.read_load(stats, "trtllm-stats", iterations=(7, 9))
    with pytest.raises(ValueError, match="iterations apply to trtllm-stats only"):
        eplb.read_load(GOLDEN / "sglang_logical_count.json", "sglang", iterations=(1, 2))
    with pytest.raises(ValueError, match='unknown load format "csv"'):
        eplb.read_load(stats, "csv")
    with pytest.raises(FileNotFoundError):
        eplb.read_load(stats / "missing", "trtllm-stats")
    assert eplb.LOAD_FORMATS == ("eplb", "sglang", "trtllm-stats")
