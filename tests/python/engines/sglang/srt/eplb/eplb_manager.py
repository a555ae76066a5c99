"""Stand-in for SGLang's EPLBManager: ModelRunner.forward calls on_forward_pass_end() after every
pass; every eplb_rebalance_num_iterations passes the manager's generator runs rebalance() (looked
up on the instance then), which dumps the recorder, builds the new ExpertLocationMetadata with
init_by_eplb and applies it layer chunk by layer chunk through ModelRunner.update_expert_location,
yielding between chunks."""
from sglang.srt.eplb.expert_distribution import get_global_expert_distribution_recorder
from sglang.srt.eplb.expert_location import ExpertLocationMetadata


class EPLBManager:
    def __init__(self, model_runner):
        self._model_runner = model_runner
        self._server_args = model_runner.server_args
        self._rebalance_num_iterations = self._server_args.eplb_rebalance_num_iterations
        self._main_generator = self._entrypoint()

    def on_forward_pass_end(self):
        next(self._main_generator)

    def _entrypoint(self):
        while True:
            for _ in range(self._rebalance_num_iterations):
                yield
            yield from self.rebalance()

    def rebalance(self):
        dump = get_global_expert_distribution_recorder().dump_record(output_mode="object")
        metadata = ExpertLocationMetadata.init_by_eplb(
            self._server_args, self._model_runner.model_config, dump["logical_count"])
        num_layers = self._model_runner.model_config.num_layers
        chunks = [list(range(i, min(i + 2, num_layers))) for i in range(0, num_layers, 2)]
        for chunk in chunks:
            if len(chunks) > 1:
                yield
            self._model_runner.update_expert_location(metadata, update_layer_ids=chunk)
