"""Remote mode against a real eplb-planner on 127.0.0.1:0: the client API, and four stand-in engine
ranks (remote_engine.py) under torch.distributed (gloo) that report load and switch to agreed
plans, through a planner kill -9, a rank's death and bad input."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import eplb
from conftest import ENGINES, clean_env

HERE = Path(__file__).resolve().parent
PLANNER = Path(os.environ.get("EPLB_PLANNER_BINARY", HERE.parents[1] / "build/bin/eplb-planner"))


class Planner:
    """eplb-planner in a child process: a state directory, a fixed port across restarts."""

    def __init__(self, directory, *flags):
        if not PLANNER.is_file():
            pytest.fail(f"{PLANNER} is not built (set EPLB_PLANNER_BINARY to an eplb-planner)")
        self.directory = Path(directory)
        self.flags = list(flags)
        self.port = 0
        self.process = None
        self.start()

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        port_file = self.directory / "port"
        port_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [str(PLANNER), f"--listen=127.0.0.1:{self.port}", f"--port-file={port_file}",
             f"--state-dir={self.directory / 'state'}", "--metrics-port=0", "--log-level=warn",
             *self.flags],
            stdout=subprocess.DEVNULL, stderr=open(self.directory / "planner.log", "a"))
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            assert self.process.poll() is None, (self.directory / "planner.log").read_text()
            assert time.monotonic() < deadline, "the planner wrote no port file"
            time.sleep(0.02)
        self.port = int(port_file.read_text())

    def kill9(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def planner(tmp_path):
    p = Planner(tmp_path)
    yield p
    p.stop()


def client(planner, **options):
    from eplb.remote import PlannerClient

    return PlannerClient(planner.address, timeout=5.0, **options)


# ---- The client API ------------------------------------------------------------------------------

def test_import_eplb_does_not_load_grpc():
    code = ("import sys, eplb; print(sorted(m for m in sys.modules if m.startswith('eplb.') or "
            "m.startswith('grpc')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env())
    assert proc.returncode == 0, proc.stderr
    assert "_client" not in proc.stdout and "grpc" not in proc.stdout, proc.stdout


@pytest.mark.parametrize("grpcio_first", [True, False])
def test_works_in_one_process_with_grpcio(planner, grpcio_first):
    code = f"""
import sys
if {grpcio_first}:
    import grpc
from eplb.remote import PlannerClient
c = PlannerClient("{planner.address}", timeout=5)
c.create_deployment("g{int(grpcio_first)}", num_layers=1, num_logical_experts=4,
                    num_physical_experts=4, num_ranks=2)
import grpc
channel = grpc.insecure_channel("{planner.address}")
grpc.channel_ready_future(channel).result(timeout=10)
names = [d["spec"]["name"] for d in c.list_deployments()]
print(grpc.__version__, names)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"'g{int(grpcio_first)}'" in proc.stdout


def test_deployments_plans_and_load(planner):
    from eplb.remote import LoadReporter, PlanWatcher

    c = client(planner)
    initial = eplb.plan(None, 12, 4, policy="contiguous", num_layers=2, num_logical_experts=8)
    created = c.create_deployment("m", num_layers=2, num_logical_experts=8,
                                  num_physical_experts=12, num_ranks=4, commit="immediate",
                                  trigger={"interval_steps": 0},
                                  smoothing={"window_steps": 1000}, initial_map=initial)
    assert created["spec"]["commit_mode"] == "COMMIT_MODE_IMMEDIATE"
    assert created["committed_version"] == 1
    assert c.create_deployment("m", num_layers=2, num_logical_experts=8, num_physical_experts=12,
                               num_ranks=4, commit="immediate", trigger={"interval_steps": 0},
                               smoothing={"window_steps": 1000},
                               initial_map=initial) == c.get_deployment("m")
    assert c.get_plan("m")["map"] == initial

    plans = []
    watcher = PlanWatcher(c, "m", 0, on_plan=lambda v, m: plans.append((v, m.hash)))
    assert watcher.wait(0, 10) == 1
    assert watcher.latest() == (1, initial)
    reporter = LoadReporter(c, "m", 0, 2, 8, flush_every_steps=10)
    load = np.arange(16, dtype=np.int64).reshape(2, 8)
    for step in range(30):
        reporter.add_step(step, 1, load)
    assert reporter.flush(10)
    assert reporter.stats()["reports_accepted"] == 3
    got = c.get_load("m")
    assert got["smoothed_load"].shape == (2, 8)
    np.testing.assert_allclose(got["smoothed_load"] * (got["last_step"] - got["first_step"] + 1),
                               30 * load / 1.0)

    dry = c.rebalance("m", dry_run=True)
    assert dry["version"] == 0
    plan = c.rebalance("m")
    assert plan["version"] == 2 and plan["reason"] == "ON_DEMAND"
    assert plan["metrics"]["balancedness_after"] > plan["metrics"]["balancedness_before"]
    assert eplb.evaluate(plan["map"], load).mean_balancedness == pytest.approx(
        plan["metrics"]["balancedness_after"])
    assert watcher.wait(1, 10) == 2
    assert watcher.held() == [1, 2]
    assert watcher.map(2) == plan["map"]
    watcher.ack(2, "active", plan["map"].hash)
    deadline = time.monotonic() + 10
    while c.get_plan("m", 2)["ranks"][0]["state"] != "ACTIVE":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    status = c.status("m")
    assert [p["version"] for p in status["plans"]] == [2, 1]
    assert status["deployment"]["committed_version"] == 2
    deadline = time.monotonic() + 10
    while (2, plan["map"].hash) not in plans:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    watcher.close()
    reporter.close()
    c.delete_deployment("m")
    assert c.list_deployments() == []


def test_errors_carry_the_code_the_reason_and_the_field(planner):
    from eplb.remote import LoadReporter, PlannerError

    c = client(planner)
    with pytest.raises(PlannerError) as error:
        c.get_deployment("nope")
    assert (error.value.code, error.value.reason, error.value.field) == (
        "NOT_FOUND", "DEPLOYMENT_NOT_FOUND", "deployment")
    assert str(error.value) == ('NOT_FOUND: deployment "nope" not found '
                                "[DEPLOYMENT_NOT_FOUND deployment]")
    with pytest.raises(PlannerError) as error:
        c.create_deployment("m", num_layers=2, num_logical_experts=8, num_physical_experts=6,
                            num_ranks=2)
    assert error.value.code == "INVALID_ARGUMENT"
    assert error.value.field == "spec.shape"
    assert "num_physical_experts = 6" in error.value.message
    with pytest.raises(ValueError, match='commit = "later" is not one of: acked, immediate'):
        c.create_deployment("m", num_layers=1, num_logical_experts=2, num_physical_experts=2,
                            num_ranks=1, commit="later")
    with pytest.raises(ValueError, match="deployment spec: .*no_such_option"):
        c.create_deployment("m", num_layers=1, num_logical_experts=2, num_physical_experts=2,
                            num_ranks=1, trigger={"no_such_option": 1})
    assert c.list_deployments() == []
    with pytest.raises(ValueError, match="^timeout = 0 must be a positive number of seconds$"):
        client(planner).__class__(planner.address, timeout=0)
    with pytest.raises(FileNotFoundError, match="/nonexistent/ca.pem"):
        client(planner, tls_ca_file="/nonexistent/ca.pem")

    c.create_deployment("r", num_layers=1, num_logical_experts=4, num_physical_experts=4,
                        num_ranks=1)
    reporter = LoadReporter(c, "r", 0, 1, 4)
    with pytest.raises(ValueError, match=r"^counts has 3 entries, expected L × E = 4$"):
        reporter.add_step(0, 1, [[1, 2, 3]])
    with pytest.raises(ValueError, match=r"^counts\[0\]\[1\] = -1 must be finite and ≥ 0$"):
        reporter.add_step(0, 1, [[1, -1, 0, 0]])
    reporter.add_step(0, 1, [[1, 1, 1, 1]])
    with pytest.raises(ValueError, match=r"^step 0 must be ≥ 0 and after step 0$"):
        reporter.add_step(0, 1, [[1, 1, 1, 1]])
    assert reporter.stats()["steps_added"] == 1
    reporter.close()
    with pytest.raises(ValueError, match="the LoadReporter is closed"):
        reporter.add_step(1, 1, [[1, 1, 1, 1]])
    with pytest.raises(ValueError, match=r"LoadReporterOptions.flush_every_steps = 0 is out of "):
        LoadReporter(c, "r", 0, 1, 4, flush_every_steps=0)


def test_a_wrong_token_is_refused_with_unauthenticated(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("right-token-0123456789abcdef\n")
    p = Planner(tmp_path, f"--bearer-token-file={token_file}")
    try:
        from eplb.remote import PlannerError

        assert client(p, token="right-token-0123456789abcdef").list_deployments() == []
        with pytest.raises(PlannerError) as error:
            client(p, token="wrong-token-0123456789abcdef").list_deployments()
        assert error.value.code == "UNAUTHENTICATED"
    finally:
        p.stop()


# ---- Four engine ranks ---------------------------------------------------------------------------

LAYERS, EXPERTS, SLOTS, RANKS = 3, 12, 16, 4


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(out, planner, *, steps=300, world=RANKS, env=None, **overrides):
    port = free_port()
    procs = []
    for rank in range(world):
        args = dict(rank=rank, world=world, port=port, planner=planner.address,
                    deployment="engine", layers=LAYERS, experts=EXPERTS, slots=SLOTS,
                    report_every=10, interval=25, agree_timeout=20.0, steps=steps,
                    step_sleep=0.004, out=str(out))
        args.update(overrides)
        procs.append(subprocess.Popen(
            [sys.executable, str(HERE / "remote_engine.py"), json.dumps(args)],
            env=clean_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    return procs


def finish(procs, timeout=300):
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append((proc.returncode, err))
    return results


def step_logs(out, ranks):
    return {rank: [json.loads(line) for line in (out / f"rank{rank}.jsonl").read_text().splitlines()]
            for rank in ranks}


def create_engine_deployment(planner, **trigger):
    client(planner).create_deployment(
        "engine", num_layers=LAYERS, num_logical_experts=EXPERTS, num_physical_experts=SLOTS,
        num_ranks=RANKS, commit="immediate", smoothing={"window_steps": 100000},
        trigger={"interval_steps": 50, "min_gain": 0.0, **trigger})


def planner_total(planner):
    load = client(planner).get_load("engine")
    return load["smoothed_load"] * (load["last_step"] - load["first_step"] + 1)


def assert_same_map_every_step(logs):
    ranks = sorted(logs)
    steps = min(len(logs[r]) for r in ranks)
    for step in range(steps):
        seen = {tuple(logs[r][step][1:3]) for r in ranks}
        assert len(seen) == 1, f"step {step}: ranks hold different maps {seen}"


def test_four_ranks_report_and_switch_to_the_same_plans(planner, tmp_path):
    create_engine_deployment(planner)
    results = finish(start_ranks(tmp_path, planner))
    assert all(code == 0 for code, _ in results), results
    logs = step_logs(tmp_path, range(RANKS))
    assert_same_map_every_step(logs)
    versions = [entry[1] for entry in logs[0]]
    assert versions[-1] >= 2, "no plan was agreed on"
    assert versions == sorted(versions)  # plans only move forward
    # The planner counted exactly what the ranks recorded.
    recorded = sum(np.array(json.loads((tmp_path / f"total{r}.json").read_text())["total"])
                   for r in range(RANKS))
    np.testing.assert_allclose(planner_total(planner), recorded, rtol=1e-9)
    # The served plans balance the reported load better than the initial map.
    c = client(planner)
    initial = c.get_plan("engine", 1)["map"]
    final = c.get_plan("engine", versions[-1])["map"]
    assert (eplb.evaluate(final, recorded).mean_balancedness
            > eplb.evaluate(initial, recorded).mean_balancedness + 0.05)
    # Every rank acknowledged the version it serves.
    acks = {a["rank"]: a["state"] for a in c.get_plan("engine", versions[-1])["ranks"]}
    assert acks == {r: "ACTIVE" for r in range(RANKS)}


def test_a_planner_killed_and_restarted_loses_no_counts_and_blocks_no_rank(planner, tmp_path):
    create_engine_deployment(planner)
    stop = tmp_path / "stop"
    procs = start_ranks(tmp_path, planner, steps=300, stop_file=str(stop))
    c = client(planner)
    deadline = time.monotonic() + 120
    while c.get_deployment("engine")["steps_seen"] < 150:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    version_at_kill = c.get_deployment("engine")["committed_version"]
    planner.kill9()
    time.sleep(1.0)  # the ranks keep serving: their reports queue, their plans stay put
    planner.start()
    # The ranks run on until they serve a plan published after the restart.
    log0 = tmp_path / "rank0.jsonl"
    deadline = time.monotonic() + 120
    while json.loads(log0.read_text().splitlines()[-1])[1] <= version_at_kill:
        assert time.monotonic() < deadline, "no plan after the restart reached the ranks"
        time.sleep(0.05)
    stop.touch()
    results = finish(procs)
    assert all(code == 0 for code, _ in results), results
    logs = step_logs(tmp_path, range(RANKS))
    assert_same_map_every_step(logs)
    # No step waited on the planner (the eplb calls of a step take milliseconds).
    assert max(entry[3] for r in logs for entry in logs[r]) < 2.0
    recorded = sum(np.array(json.loads((tmp_path / f"total{r}.json").read_text())["total"])
                   for r in range(RANKS))
    np.testing.assert_allclose(planner_total(planner), recorded, rtol=1e-9)
    stats = [json.loads((tmp_path / f"stats{r}.json").read_text()) for r in range(RANKS)]
    assert all(s["reports_resent"] > 0 and s["reports_dropped"] == 0 for s in stats), stats


def test_a_dead_rank_makes_the_others_keep_a_consistent_map(planner, tmp_path):
    create_engine_deployment(planner)
    procs = start_ranks(tmp_path, planner, steps=400, agree_timeout=3.0)
    log3 = tmp_path / "rank3.jsonl"
    deadline = time.monotonic() + 120
    while not log3.is_file() or len(log3.read_text().splitlines()) < 120:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    procs[3].send_signal(signal.SIGKILL)
    results = finish(procs[:3])
    procs[3].wait()
    assert all(code == 0 for code, _ in results), results
    logs = step_logs(tmp_path, range(3))
    assert all(len(logs[r]) == 400 for r in range(3))  # nobody hung
    assert_same_map_every_step(logs)
    # The agreement failed once, within its timeout, and was not tried again.
    assert max(entry[3] for r in logs for entry in logs[r]) < 3.0 + 2.0
    for r in range(3):
        assert json.loads((tmp_path / f"total{r}.json").read_text())["broken"]


@pytest.mark.parametrize("case", ["bad shape", "other shape", "acked", "wrong token"])
def test_bad_input_is_one_clear_error_at_start_up_on_every_rank(tmp_path, case):
    flags = []
    if case == "wrong token":
        (tmp_path / "token").write_text("right-token-0123456789abcdef\n")
        flags.append(f"--bearer-token-file={tmp_path / 'token'}")
    p = Planner(tmp_path, *flags)
    try:
        overrides = {}
        if case == "bad shape":
            overrides["slots"] = 8  # fewer slots than the 12 experts
        elif case == "other shape":
            create_engine_deployment(p)
            overrides["layers"] = LAYERS + 1
        elif case == "acked":
            client(p).create_deployment("engine", num_layers=LAYERS, num_logical_experts=EXPERTS,
                                        num_physical_experts=SLOTS, num_ranks=RANKS)
        elif case == "wrong token":
            overrides["token"] = "wrong-token-0123456789abcdef"
        started = time.monotonic()
        results = finish(start_ranks(tmp_path, p, **overrides), timeout=120)
        assert time.monotonic() - started < 60
        assert [code for code, _ in results] == [3] * RANKS, results
        errors = [(tmp_path / f"error{r}.txt").read_text() for r in range(RANKS)]
        expected = {
            "bad shape": "EP rank 0 could not create deployment engine: num_physical_experts = 8",
            "other shape": "deployment engine exists with another shape: num_layers = 3 (the "
                           "engine has 4)",
            "acked": "deployment engine commits a plan once every rank staged it "
                     "(COMMIT_MODE_ACKED)",
            "wrong token": "UNAUTHENTICATED",
        }[case]
        for error in errors:
            assert expected in error, errors
    finally:
        p.stop()


# ---- Engine adapters ------------------------------------------------------------------------------

def vllm_env(planner, **extra):
    return dict(PYTHONPATH=ENGINES, EPLB_VLLM_PLANNER=planner.address, EPLB_DEPLOYMENT="engine",
                EPLB_REPORT_EVERY_STEPS=10, EPLB_AGREE_TIMEOUT=20, **extra)


@pytest.mark.parametrize("form", ["0.13", "0.23"])
def test_vllm_ranks_switch_to_agreed_plans_through_the_adapter(planner, tmp_path, form):
    create_engine_deployment(planner)
    results = finish(start_ranks(tmp_path, planner, engine="vllm",
                                 env=vllm_env(planner, STANDIN_VLLM_FORM=form)))
    assert all(code == 0 for code, _ in results), results
    logs = step_logs(tmp_path, range(RANKS))
    assert_same_map_every_step(logs)
    assert logs[0][-1][1] >= 2, "vLLM never rearranged to a planner's plan"
    assert len({entry[2] for entry in logs[0]}) >= 2  # the map vLLM serves changed
    recorded = sum(np.array(json.loads((tmp_path / f"total{r}.json").read_text())["total"])
                   for r in range(RANKS))
    np.testing.assert_allclose(planner_total(planner), recorded, rtol=1e-9)
    c = client(planner)
    version = logs[0][-1][1]
    # vLLM serves exactly the plan's map, and every rank acknowledged it once applied.
    assert f"{c.get_plan('engine', version)['map'].hash:016x}" == logs[0][-1][2]
    acks = {a["rank"]: a["state"] for a in c.get_plan("engine", version)["ranks"]}
    assert acks == {r: "ACTIVE" for r in range(RANKS)}


def test_sglang_ranks_switch_to_agreed_plans_through_the_adapter(planner, tmp_path):
    create_engine_deployment(planner)
    env = dict(PYTHONPATH=ENGINES, EPLB_SGLANG_PLANNER=planner.address, EPLB_DEPLOYMENT="engine",
               EPLB_AGREE_TIMEOUT=20)
    results = finish(start_ranks(tmp_path, planner, engine="sglang", env=env))
    assert all(code == 0 for code, _ in results), results
    logs = step_logs(tmp_path, range(RANKS))
    assert_same_map_every_step(logs)
    version = logs[0][-1][1]
    assert version >= 2, "SGLang never applied a planner's plan"
    assert len({entry[2] for entry in logs[0]}) >= 2
    # SGLang sums its counts over the ranks before the rebalance reads them: what reached the
    # planner is every dump, once.
    dumped = np.array(json.loads((tmp_path / "total0.json").read_text())["dumped"])
    np.testing.assert_allclose(planner_total(planner), dumped, rtol=1e-9)
    c = client(planner)
    assert f"{c.get_plan('engine', version)['map'].hash:016x}" == logs[0][-1][2]
    acks = {a["rank"]: a["state"] for a in c.get_plan("engine", version)["ranks"]}
    assert acks == {r: "ACTIVE" for r in range(RANKS)}


@pytest.mark.parametrize("env, message", [
    ({"EPLB_VLLM_PLANNER": "p:1"},
     "EPLB_VLLM_PLANNER is set but EPLB_DEPLOYMENT is not: name the deployment these ranks "
     "report to"),
    ({"EPLB_VLLM_PLANNER": "p:1", "EPLB_DEPLOYMENT": "d", "EPLB_REPORT_EVERY_STEPS": "0"},
     'EPLB_REPORT_EVERY_STEPS = "0" is not an integer in 1 … 1,000,000'),
    ({"EPLB_VLLM_PLANNER": "p:1", "EPLB_DEPLOYMENT": "d", "EPLB_AGREE_TIMEOUT": "soon"},
     'EPLB_AGREE_TIMEOUT = "soon" is not a number of seconds in (0, 3600]'),
    ({"EPLB_VLLM_PLANNER": "p:1", "EPLB_DEPLOYMENT": "d", "EPLB_VLLM_POLICY": "fastest"},
     'EPLB_VLLM_POLICY = "fastest" is not one of: balanced, deepseek'),
])
def test_bad_remote_variables_fail_the_plugin_with_the_variable_named(env, message):
    # vLLM loads its plugins at start-up: the error is there, naming the variable.
    code = "from vllm.plugins import load_general_plugins; load_general_plugins()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env(PYTHONPATH=ENGINES, **env), timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == f"ValueError: {message}", proc.stderr


def test_record_refuses_counts_of_another_shape(planner):
    code = f"""
import datetime, socket, torch, torch.distributed as dist
from eplb.remote import RemoteBalancer, RemoteConfig
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=0, world_size=1)
b = RemoteBalancer(RemoteConfig(planner="{planner.address}", deployment="one"), rank=0,
                   num_ranks=1, num_layers=2, num_logical_experts=4, num_physical_experts=4)
for counts, call in ((torch.ones(2, 5), b.record), (torch.ones(3, 4), b.record_physical)):
    try:
        call(counts) if call == b.record else call(counts, torch.zeros(2, 4, dtype=torch.long))
    except ValueError as error:
        print(error)
print(b.close(timeout=5)["steps_added"])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "counts has shape (2, 5), expected (num_layers, num_logical_experts) = (2, 4)",
        "counts has shape (3, 4), expected (num_layers, num_physical_experts) = (2, 4)",
        "0"]


@pytest.mark.parametrize("device_kind", ["tensor", "numpy"])
def test_empty_slots_count_nowhere_and_an_in_place_map_change_is_followed(planner, device_kind):
    # Slots holding -1 (ranks added by an elastic scale-up) are counted nowhere; a map tensor the
    # engine rewrites in place after a switch converts the counts routed after it.
    code = f"""
import datetime, socket, numpy as np, torch, torch.distributed as dist
from eplb.remote import PlannerClient, RemoteBalancer, RemoteConfig
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{{port}}", rank=0, world_size=1)
PlannerClient("{planner.address}").create_deployment(
    "slots", num_layers=1, num_logical_experts=3, num_physical_experts=4, num_ranks=1,
    policy="deepseek", commit="immediate", smoothing={{"window_steps": 1000}},
    trigger={{"interval_steps": 0}})
b = RemoteBalancer(RemoteConfig(planner="{planner.address}", deployment="slots",
                                report_every=4), rank=0, num_ranks=1, num_layers=1,
                   num_logical_experts=3, num_physical_experts=4)
phy2log = torch.tensor([[0, 1, 2, -1]])
counts = torch.tensor([[1, 10, 100, 1000]], dtype=torch.int32)
convert = (lambda t: t) if "{device_kind}" == "tensor" else (lambda t: t.numpy())
for step in range(6):
    b.record_physical(convert(counts), convert(phy2log))
b.flush_batch()                      # the engine switches its map in place
phy2log.copy_(torch.tensor([[2, 2, 1, 0]]))
for step in range(2):
    b.record_physical(convert(counts), convert(phy2log))
b.close(timeout=10)
load = PlannerClient("{planner.address}").get_load("slots")
steps = load["last_step"] - load["first_step"] + 1
print(steps, [round(x * steps) for x in load["smoothed_load"][0]])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    # 6 steps of [1, 10, 100] (slot 3 empty), then 2 steps with expert 0 in slot 3 (1000), expert
    # 1 in slot 2 (100), expert 2 in slots 0 and 1 (11).
    assert proc.stdout.split("\n")[-2] == "8 [2006, 260, 622]"


def test_ranks_started_again_continue_after_the_steps_the_planner_has(planner, tmp_path):
    create_engine_deployment(planner)
    recorded = 0
    for run in range(2):  # the engine restarts: new processes, the same deployment
        out = tmp_path / f"run{run}"
        out.mkdir()
        results = finish(start_ranks(out, planner, steps=100))
        assert all(code == 0 for code, _ in results), results
        recorded = recorded + sum(
            np.array(json.loads((out / f"total{r}.json").read_text())["total"])
            for r in range(RANKS))
    load = client(planner).get_load("engine")
    assert load["first_step"] == 1 and load["last_step"] == 200  # steps 1 … 100, then 101 … 200
    np.testing.assert_allclose(planner_total(planner), recorded, rtol=1e-9)
