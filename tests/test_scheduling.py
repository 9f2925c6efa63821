"""Dynamic batching, queue policies, instances in threads and processes, worker crashes, statistics
and Prometheus metrics, through a real server and tritonclient."""
from __future__ import annotations

import asyncio
import re
import threading
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpc
from tritonclient.utils import InferenceServerException

from tests import models


def probe_input(module, command: float, width: int = 3, batch: int = 1):
    data = np.zeros((batch, width), np.float32)
    data[:, 0] = command
    tensor = module.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data)
    return [tensor], data


def serve_probe(start_server, repository, config: dict, *flags: str):
    models.write_model(repository, "probe", config, models.PROBE)
    return start_server(repository, *flags)


def call(url: str, command: float, width: int = 3, batch: int = 1, **options):
    with grpcclient.InferenceServerClient(url) as client:
        inputs, data = probe_input(grpcclient, command, width, batch)
        result = client.infer("probe", inputs, **options)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
        return {name: result.as_numpy(name)[0, 0] for name in ("BATCH", "SHAPES", "EXECUTION", "PID")} | {
            "window": result.as_numpy("WINDOW")[0]}


def in_background(function, *args, **kwargs) -> tuple[threading.Thread, dict]:
    """Run a call on a thread; its result or its exception lands in the returned dict."""
    box: dict = {}

    def run():
        try:
            box["result"] = function(*args, **kwargs)
        except Exception as e:
            box["error"] = e

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def occupy(url: str, ms: int = 600, batch: int = 1):
    """Keep the one instance busy for `ms`, so that the requests sent meanwhile queue up. The
    blocking request's batch should be max_batch_size: a full batch runs at once and alone."""
    thread, box = in_background(call, url, ms, batch=batch)
    time.sleep(0.1)
    return thread, box


def test_batches_form_under_concurrent_load(repository, start_server):
    server = serve_probe(start_server, repository,
                         models.probe_config(dynamic_batching={"max_queue_delay_microseconds": 20000}))

    async def burst():
        async with aiogrpc.InferenceServerClient(server.grpc_url) as client:
            async def one(i):
                inputs, data = probe_input(aiogrpc, 0)
                data[:, 1] = i
                inputs[0].set_data_from_numpy(data)
                result = await client.infer("probe", inputs)
                np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)  # its own slice
                return result.as_numpy("BATCH")[0, 0]
            return await asyncio.gather(*(one(i) for i in range(64)))

    sizes = asyncio.run(burst())
    assert max(sizes) > 1 and all(1 <= s <= 8 for s in sizes)
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics("probe", as_json=True)["model_stats"][0]
    assert int(stats["inference_count"]) == 64
    assert int(stats["execution_count"]) < 64
    assert any(int(b["batch_size"]) > 1 for b in stats["batch_stats"])


def test_delay_bound_holds(repository, start_server):
    """A lone request waits for company at most max_queue_delay_microseconds (0.3 s here)."""
    server = serve_probe(start_server, repository,
                         models.probe_config(dynamic_batching={"max_queue_delay_microseconds": 300000}))
    call(server.grpc_url, 0)  # warm
    start = time.monotonic()
    result = call(server.grpc_url, 0)
    waited = time.monotonic() - start
    assert result["BATCH"] == 1
    assert 0.29 <= waited < 2.0, waited


def test_full_batch_does_not_wait_for_the_delay(repository, start_server):
    server = serve_probe(start_server, repository,
                         models.probe_config(dynamic_batching={"max_queue_delay_microseconds": 5_000_000}))
    start = time.monotonic()
    assert call(server.grpc_url, 0, batch=8)["BATCH"] == 8  # max_batch_size: goes at once
    assert time.monotonic() - start < 2.0


def test_preferred_sizes_are_preferred(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        dynamic_batching={"preferred_batch_size": [4], "max_queue_delay_microseconds": 1_500_000}))
    blocker, _ = occupy(server.grpc_url, 800, batch=8)
    calls = [in_background(call, server.grpc_url, 0) for _ in range(6)]
    for thread, _ in calls:
        thread.join()
    blocker.join()
    sizes = sorted(box["result"]["BATCH"] for _, box in calls)
    assert sizes == [2, 2, 4, 4, 4, 4]  # cut at the preferred 4; the other two waited the delay


def test_priorities_reorder(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        max_batch_size=1, dynamic_batching={"priority_levels": 2, "default_priority_level": 2}))
    blocker, _ = occupy(server.grpc_url)
    low = [in_background(call, server.grpc_url, 0) for _ in range(3)]
    time.sleep(0.1)
    high = in_background(call, server.grpc_url, 0, priority=1)
    for thread, _ in [*low, high]:
        thread.join()
    blocker.join()
    order = {"high": high[1]["result"]["EXECUTION"]} | {
        f"low{i}": box["result"]["EXECUTION"] for i, (_, box) in enumerate(low)}
    assert order["high"] == 2, order  # right after the blocker, ahead of the three sent before it


def test_full_queue_rejects_at_once(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        max_batch_size=1, dynamic_batching={"default_queue_policy": {"max_queue_size": 2}}))
    blocker, _ = occupy(server.grpc_url, 600)
    queued = [in_background(call, server.grpc_url, 0) for _ in range(2)]
    time.sleep(0.1)
    start = time.monotonic()
    with pytest.raises(InferenceServerException) as raised:
        call(server.grpc_url, 0)
    assert time.monotonic() - start < 0.3
    assert raised.value.status() == "StatusCode.UNAVAILABLE"
    assert "queue of priority level 1 is full (max_queue_size 2)" in raised.value.message()
    for thread, box in queued:
        thread.join()
        assert "result" in box
    blocker.join()
    metrics = server.metrics()
    assert 'nv_inference_request_failure{model="probe",version="1",reason="REJECTED"} 1' in metrics


def test_timeout_rejects(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        max_batch_size=1, dynamic_batching={"default_queue_policy": {"default_timeout_microseconds": 100000}}))
    blocker, _ = occupy(server.grpc_url, 700)
    start = time.monotonic()
    with pytest.raises(InferenceServerException) as raised:
        call(server.grpc_url, 0)
    assert time.monotonic() - start < 0.5  # rejected when its time was up, not when the blocker ended
    assert raised.value.status() == "StatusCode.UNAVAILABLE" and "timed out" in raised.value.message()
    blocker.join()


def test_timeout_delays(repository, start_server):
    """DELAY: a request past its own timeout (allowed to override) goes behind one that came later."""
    server = serve_probe(start_server, repository, models.probe_config(
        max_batch_size=1, dynamic_batching={"default_queue_policy": {
            "timeout_action": "DELAY", "allow_timeout_override": True}}))
    blocker, _ = occupy(server.grpc_url, 600)
    early = in_background(call, server.grpc_url, 0, timeout=50000)  # 50 ms, in microseconds
    time.sleep(0.2)
    late = in_background(call, server.grpc_url, 0)
    for thread, _ in (early, late, (blocker, None)):
        thread.join()
    assert late[1]["result"]["EXECUTION"] == 2 and early[1]["result"]["EXECUTION"] == 3


def test_different_shapes_are_not_merged(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        dynamic_batching={"max_queue_delay_microseconds": 200000}))
    blocker, _ = occupy(server.grpc_url, batch=8)
    calls = [in_background(call, server.grpc_url, 0, width=3 + i % 2) for i in range(6)]
    for thread, _ in calls:
        thread.join()
    blocker.join()
    results = [box["result"] for _, box in calls]
    assert all(r["SHAPES"] == 1 for r in results)
    assert sorted(r["BATCH"] for r in results) == [3] * 6  # three of each width, batched by width


def test_preserve_ordering(repository, start_server):
    """Two instances; the first request is slow: with preserve_ordering the quick one, though done
    long before, gets its response only after the slow one's."""
    server = serve_probe(start_server, repository, models.probe_config(
        max_batch_size=1, instance_group=[{"count": 2, "kind": "KIND_CPU"}],
        dynamic_batching={"preserve_ordering": True}))
    call(server.grpc_url, 0)
    slow = in_background(lambda: call(server.grpc_url, 600))
    time.sleep(0.1)
    quick = in_background(lambda: (call(server.grpc_url, 0), time.time()))
    slow[0].join()
    quick[0].join()
    quick_result, quick_returned = quick[1]["result"]
    slow_end = slow[1]["result"]["window"][1]
    assert quick_result["window"][1] < slow_end <= quick_returned


def test_two_instances_run_at_the_same_time(repository, start_server):
    server = serve_probe(start_server, repository,
                         models.probe_config(instance_group=[{"count": 2, "kind": "KIND_CPU"}]))
    calls = [in_background(call, server.grpc_url, 500) for _ in range(2)]
    for thread, _ in calls:
        thread.join()
    first, second = (box["result"] for _, box in calls)
    assert first["PID"] != second["PID"]  # two processes
    assert first["window"][0] < second["window"][1] and second["window"][0] < first["window"][1]


@pytest.mark.parametrize("execution", ["thread", "inline"])
def test_other_execution_modes(repository, start_server, execution):
    import os
    server = serve_probe(start_server, repository, models.probe_config(
        parameters={"execution": execution}, dynamic_batching={"max_queue_delay_microseconds": 1000}))
    assert call(server.grpc_url, 0)["PID"] == server.process.pid  # in the server's own process
    assert os.getpid() != server.process.pid


def test_killed_worker_fails_only_its_request_and_recovers(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        dynamic_batching={"max_queue_delay_microseconds": 1000}))
    first_pid = call(server.grpc_url, 0)["PID"]
    with pytest.raises(InferenceServerException) as raised:
        call(server.grpc_url, -9)
    assert raised.value.status() == "StatusCode.INTERNAL"
    assert "died (killed by SIGKILL)" in raised.value.message() and "started again" in raised.value.message()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    assert not client.is_model_ready("probe")  # while it starts again (its set-up takes 1.5 s now)
    assert client.is_server_live() and client.is_server_ready()
    waiting = in_background(call, server.grpc_url, 0)  # queued meanwhile: served once it is back
    waiting[0].join()
    assert "result" in waiting[1] and waiting[1]["result"]["PID"] != first_pid
    assert client.is_model_ready("probe")
    assert "the worker process of instance 'probe_0_0' died (killed by SIGKILL)" in server.log()
    assert 'reason="BACKEND"} 1' in server.metrics()


def test_statistics_and_metrics_count_what_happened(repository, start_server):
    server = serve_probe(start_server, repository, models.probe_config(
        dynamic_batching={"max_queue_delay_microseconds": 1000}))
    for _ in range(3):
        call(server.grpc_url, 0, batch=2)
    with pytest.raises(InferenceServerException):
        call(server.grpc_url, 0, batch=9)  # over max_batch_size
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        stats = client.get_inference_statistics("probe", as_json=True)["model_stats"][0]
    inference = stats["inference_stats"]
    assert int(inference["success"]["count"]) == 3 and int(inference["fail"]["count"]) == 1
    assert int(stats["inference_count"]) == 6 and int(stats["execution_count"]) == 3
    assert [(int(b["batch_size"]), int(b["compute_infer"]["count"])) for b in stats["batch_stats"]] == [(2, 3)]
    assert int(inference["queue"]["count"]) == 3 and int(inference["compute_infer"]["ns"]) > 0
    metrics = server.metrics()
    labels = '{model="probe",version="1"}'
    for line in (f"nv_inference_request_success{labels} 3", f"nv_inference_count{labels} 6",
                 f"nv_inference_exec_count{labels} 3", f"nv_inference_pending_request_count{labels} 0",
                 'nv_inference_request_failure{model="probe",version="1",reason="OTHER"} 1',
                 'nv_inference_request_duration_histogram_us_count{model="probe",version="1"} 4',
                 'nv_inference_queue_duration_histogram_us_bucket{model="probe",version="1",le="+Inf"} 3'):
        assert line in metrics, line
    duration = re.search(rf"nv_inference_request_duration_us{re.escape(labels)} (\d+)", metrics)
    assert duration and int(duration.group(1)) > 0
    assert "# TYPE nv_inference_compute_duration_histogram_us histogram" in metrics


def test_shared_memory_of_a_killed_server_is_removed(repository, start_server):
    from pathlib import Path

    from naiad.batching.processes import SHM_DIR
    server = serve_probe(start_server, repository, models.probe_config())
    call(server.grpc_url, 0)
    mine = lambda pid: sorted(Path(SHM_DIR).glob(f"naiad-{pid}-*"))
    assert mine(server.process.pid)  # the worker's input and output files
    server.kill()
    assert mine(server.process.pid)  # a killed server cannot clean up
    second = start_server(repository)
    assert call(second.grpc_url, 0)["BATCH"] == 1
    assert not mine(server.process.pid)
