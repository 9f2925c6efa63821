"""Faults of model code and of model workers: each costs only the requests it touches, every request
gets one answer in bounded time, and the server stays up (and ready when it should be)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import NaiadServer, session_server, wait_until

# INPUT0's first value picks what the model does: 0 echoes; 1-4 raise SystemExit, KeyboardInterrupt,
# CancelledError or a BaseException of its own; 5 answers with numpy response parameters, 6 with one
# that is neither JSON nor picklable. Its finalize raises SystemExit.
RAISER = """
    import asyncio
    import numpy as np
    from naiad.backends.python_api import InferenceResponse, Tensor

    class Custom(BaseException):
        pass

    class TritonPythonModel:
        def execute(self, requests):
            out = []
            for r in requests:
                x = r.input("INPUT0")
                code = int(x.reshape(-1)[0])
                if code == 1:
                    raise SystemExit(3)
                if code == 2:
                    raise KeyboardInterrupt()
                if code == 3:
                    raise asyncio.CancelledError()
                if code == 4:
                    raise Custom("not an Exception")
                parameters = {5: {"count": np.int64(7), "ok": np.bool_(True)}, 6: {"bad": object()}}.get(code, {})
                out.append(InferenceResponse([Tensor("OUTPUT0", x)], parameters=parameters))
            return out

        def finalize(self):
            raise SystemExit("finalize exits")
"""

# A value > 0 holds the call until the file `release` is in the model's folder (60 s at most).
# Its pid goes to `pid` at set-up; `running` appears while a call is held.
HOLDER = """
    import os
    import time
    from pathlib import Path
    from naiad.backends.python_api import InferenceResponse, Tensor

    def hold(folder):
        (folder / "running").touch()
        deadline = time.monotonic() + 60
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    class TritonPythonModel:
        def initialize(self, args):
            self.folder = Path(args["model_repository"])
            (self.folder / "pid").write_text(str(os.getpid()))
            if (self.folder / "hold_initialize").exists():
                hold(self.folder)

        def execute(self, requests):
            x = requests[0].input("INPUT0")
            if x.reshape(-1)[0] > 0:
                hold(self.folder)
            return [InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0"))]) for r in requests]
"""

# A negative value makes the process exit and leaves a file `broken` that makes every set-up fail.
CRASHER = """
    import os
    from pathlib import Path
    from naiad.backends.python_api import InferenceResponse, Tensor

    class TritonPythonModel:
        def initialize(self, args):
            self.marker = Path(args["model_repository"]) / "broken"
            if self.marker.exists():
                raise RuntimeError("set-up refused while the file 'broken' is there")

        def execute(self, requests):
            if requests[0].input("INPUT0").reshape(-1)[0] < 0:
                self.marker.touch()
                os._exit(7)
            return [InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0"))]) for r in requests]
"""

INIT_EXIT = """
    import sys

    class TritonPythonModel:
        def initialize(self, args):
            sys.exit("initialize exits")

        def execute(self, requests):
            return []
"""

EXECUTIONS = ("process", "thread", "inline")


def config(execution: str = "process", **parameters) -> dict:
    return models.batched("FP32", (-1,)) | {"parameters": {"execution": execution, **parameters}}


def write_models(repository: Path) -> None:
    models.write_model(repository, "identity", config(), models.IDENTITY)
    for execution in EXECUTIONS:
        models.write_model(repository, f"raiser_{execution}", config(execution), RAISER)
    for execution in ("process", "thread"):
        # load_timeout_seconds bounds the unload of a stuck thread; a process needs time to start
        load_timeout = "1" if execution == "thread" else "20"
        models.write_model(repository, f"stuck_{execution}",
                           config(execution, execution_timeout_seconds="1", load_timeout_seconds=load_timeout),
                           HOLDER)
        slow_init = models.write_model(repository, f"slow_init_{execution}",
                                       config(execution, load_timeout_seconds="1"), HOLDER)
        (slow_init / "hold_initialize").touch()
        models.write_model(repository, f"init_exit_{execution}", config(execution), INIT_EXIT)
    models.write_model(repository, "crasher", config(load_timeout_seconds="2"), CRASHER)
    models.write_model(repository, "crasher_unload", config(), CRASHER)


STARTUP = ("identity", "raiser_process", "raiser_thread", "raiser_inline", "stuck_process", "stuck_thread",
           "crasher", "crasher_unload")


@pytest.fixture(scope="module")
def repository_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("faults_repository")
    write_models(path)
    return path


@pytest.fixture(scope="module")
def server(repository_path, tmp_path_factory):
    """One server for the module; its /dev/shm is a small one of its own where this machine allows."""
    flags = ["--model-control-mode", "explicit"] + [f"--load-model={name}" for name in STARTUP]
    prefix = _private_shm_command()
    if prefix is None:
        yield from session_server(repository_path, tmp_path_factory, "faults", *flags)
        return
    log_path = tmp_path_factory.mktemp("faults") / "naiad.log"
    started = SmallShmServer(repository_path, log_path, prefix, SHM_MIB, *flags).wait_ready()
    yield started
    assert started.stop() == 0, started.log()


def infer(url: str, model: str, value: float, width: int = 3, client=None):
    data = np.full((1, width), value, np.float32)
    tensor = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    tensor.set_data_from_numpy(data, binary_data=True)
    own = client is None
    client = client or httpclient.InferenceServerClient(url, network_timeout=60, connection_timeout=60)
    try:
        result = client.infer(model, [tensor])
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), data)
        return result
    finally:
        if own:
            client.close()


def failure(url: str, model: str, value: float, width: int = 3, client=None) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as raised:
        infer(url, model, value, width, client)
    return raised.value


def index_row(client: httpclient.InferenceServerClient, name: str) -> dict:
    return next(row for row in client.get_model_repository_index() if row["name"] == name)


def children(pid: int) -> set[int]:
    """The process's child processes, from each of its threads (one that ends meanwhile has none)."""
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            found |= {int(p) for p in (task / "children").read_text().split()}
    return found


def assert_serving(server: NaiadServer, client: httpclient.InferenceServerClient, *names: str) -> None:
    assert client.is_server_live() and client.is_server_ready()
    for name in names:
        assert client.is_model_ready(name), name
        infer(server.http_url, name, 0)


# --- 2 and 13: BaseException from model code, and response parameters -----------------------------

@pytest.mark.parametrize("execution", EXECUTIONS)
def test_base_exceptions_fail_the_batch_and_the_worker_keeps_serving(server, execution):
    model = f"raiser_{execution}"
    client = httpclient.InferenceServerClient(server.http_url)
    for code, name in ((1, "SystemExit"), (2, "KeyboardInterrupt"), (3, "CancelledError"), (4, "Custom")):
        error = failure(server.http_url, model, code)
        assert error.status() == "500" and f"model '{model}' failed: {name}" in error.message()
        infer(server.http_url, model, 0)  # the same instance answers the next request
    # response parameters: numpy scalars become plain values; an object fails that response, by name
    assert infer(server.http_url, model, 5).get_response()["parameters"] == {"count": 7, "ok": True}
    error = failure(server.http_url, model, 6)
    assert error.status() == "500" and f"model '{model}' returned response parameter 'bad'" in error.message()
    assert "bool, int, float or str" in error.message()
    assert_serving(server, client, model, "identity")
    # finalize raising SystemExit: the unload completes, and the model loads again
    client.unload_model(model)
    assert not client.is_model_ready(model) and client.is_server_live()
    client.load_model(model)
    assert_serving(server, client, model, "identity")


@pytest.mark.parametrize("execution", ["process", "thread"])
def test_initialize_raising_system_exit_fails_only_that_load(server, execution):
    model = f"init_exit_{execution}"
    client = httpclient.InferenceServerClient(server.http_url)
    with pytest.raises(InferenceServerException) as raised:
        client.load_model(model)
    assert f"failed to load model '{model}'" in raised.value.message()
    assert "SystemExit: initialize exits" in raised.value.message()
    assert index_row(client, model)["state"] == "UNAVAILABLE"
    assert_serving(server, client, "identity")


# --- 6: execution and load timeouts -----------------------------------------------------------------

def test_a_stuck_worker_process_is_killed_at_its_execution_timeout_and_restarted(server, repository_path):
    client = httpclient.InferenceServerClient(server.http_url)
    pid = (repository_path / "stuck_process" / "pid").read_text()
    error = failure(server.http_url, "stuck_process", 1)
    assert error.status() == "503"
    assert "model 'stuck_process' exceeded its execution timeout of 1 s" in error.message()
    assert "killed and is being started again" in error.message()
    infer(server.http_url, "identity", 0)  # another model is untouched meanwhile
    wait_until(lambda: client.is_model_ready("stuck_process"), "the worker to be back")
    assert (repository_path / "stuck_process" / "pid").read_text() != pid
    assert index_row(client, "stuck_process")["state"] == "READY"
    assert_serving(server, client, "stuck_process", "identity")


def test_a_stuck_thread_fails_its_requests_and_is_not_ready_until_it_returns(server, repository_path):
    folder = repository_path / "stuck_thread"
    client = httpclient.InferenceServerClient(server.http_url)
    error = failure(server.http_url, "stuck_thread", 1)
    assert error.status() == "503"
    assert "model 'stuck_thread' exceeded its execution timeout of 1 s" in error.message()
    # not ready, and the index agrees and says why; requests fail at once instead of queueing
    assert not client.is_model_ready("stuck_thread")
    row = index_row(client, "stuck_thread")
    assert row["state"] == "UNAVAILABLE" and "is stuck" in row["reason"]
    error = failure(server.http_url, "stuck_thread", 0)
    assert error.status() == "503" and "model 'stuck_thread' has no instance able to run" in error.message()
    infer(server.http_url, "identity", 0)
    (folder / "release").touch()  # the call returns: the instance serves again
    wait_until(lambda: client.is_model_ready("stuck_thread"), "the thread to return")
    assert index_row(client, "stuck_thread")["state"] == "READY"
    infer(server.http_url, "stuck_thread", 0)
    # stuck again, then unloaded: the unload gives up on the thread (at load_timeout_seconds) and a
    # reload of the same name serves
    (folder / "release").unlink()
    failure(server.http_url, "stuck_thread", 1)
    client.unload_model("stuck_thread")
    client.load_model("stuck_thread")
    assert_serving(server, client, "stuck_thread", "identity")
    (folder / "release").touch()


@pytest.mark.parametrize("execution", ["process", "thread"])
def test_a_load_past_its_timeout_fails_and_leaves_nothing_running(server, execution):
    model = f"slow_init_{execution}"
    client = httpclient.InferenceServerClient(server.http_url)
    before = children(server.process.pid)
    with pytest.raises(InferenceServerException) as raised:
        client.load_model(model)
    assert f"failed to load model '{model}'" in raised.value.message()
    assert "did not finish within load_timeout_seconds (1 s)" in raised.value.message()
    assert children(server.process.pid) == before  # its worker process was killed
    row = index_row(client, model)
    assert row["state"] == "UNAVAILABLE" and "load_timeout_seconds" in row["reason"]
    assert not client.is_model_ready(model)
    assert_serving(server, client, "identity")


def test_requests_fail_while_a_worker_cannot_start_again(server, repository_path):
    """A restart that keeps failing: requests fail at once with UNAVAILABLE and the reason, readiness
    and the index agree; once the set-up works again, the model serves."""
    folder = repository_path / "crasher"
    client = httpclient.InferenceServerClient(server.http_url)
    error = failure(server.http_url, "crasher", -1)
    assert error.status() == "500" and "died (exit status 7)" in error.message()
    error = failure(server.http_url, "crasher", 0)
    assert error.status() == "503" and "model 'crasher' has no instance able to run" in error.message()
    wait_until(lambda: "failed to start again" in index_row(client, "crasher").get("reason", ""),
               "the failed restart to show in the index")
    assert index_row(client, "crasher")["state"] == "UNAVAILABLE" and not client.is_model_ready("crasher")
    error = failure(server.http_url, "crasher", 0)
    assert error.status() == "503" and "set-up refused while the file 'broken' is there" in error.message()
    assert_serving(server, client, "identity")
    (folder / "broken").unlink()
    wait_until(lambda: client.is_model_ready("crasher"), "the worker to start again")
    assert_serving(server, client, "crasher")


# --- 5: unloading while a restart backs off ------------------------------------------------------

def test_unload_during_restart_backoff_closes_only_its_own_descriptors(server, repository_path):
    folder = repository_path / "crasher_unload"
    client = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)  # a connection that must survive
    fds = Path(f"/proc/{server.process.pid}/fd")
    infer(server.http_url, "crasher_unload", 0, client=client)
    before_fds, before_children = len(list(fds.iterdir())), children(server.process.pid)
    for _ in range(2):  # a descriptor lost per round would show
        failure(server.http_url, "crasher_unload", -1, client=client)
        wait_until(lambda: "failed to start again" in index_row(client, "crasher_unload").get("reason", ""),
                   "the restart to back off")
        client.unload_model("crasher_unload")
        (folder / "broken").unlink()
        client.load_model("crasher_unload")
        infer(server.http_url, "crasher_unload", 0, client=client)
        assert grpc.is_model_ready("identity")
    assert len(list(fds.iterdir())) <= before_fds + 1  # nothing leaks (one fd of slack for the loop)
    assert len(children(server.process.pid)) == len(before_children)
    assert_serving(server, client, "crasher_unload", "identity")
    grpc.close()


# --- 6: shutdown while requests are stuck ------------------------------------------------------------

def post(server: NaiadServer, model: str, value: float) -> tuple[int, str]:
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, 1],
                                   "data": [value]}]}).encode()
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/infer", data=body,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_sigterm_with_stuck_requests_exits_within_the_exit_timeout(tmp_path, start_server):
    repository = tmp_path / "models"
    for execution in ("process", "thread"):
        models.write_model(repository, f"held_{execution}", config(execution), HOLDER)
    server = start_server(repository, "--exit-timeout-secs", "2")
    worker_pid = int((repository / "held_process" / "pid").read_text())
    answers: dict[str, tuple[int, str]] = {}
    calls = [threading.Thread(target=lambda m=m: answers.__setitem__(m, post(server, m, 1)))
             for m in ("held_process", "held_thread")]
    for call in calls:
        call.start()
    wait_until(lambda: all((repository / m / "running").exists() for m in ("held_process", "held_thread")),
               "both calls to run")
    server.process.send_signal(signal.SIGTERM)
    # the requests are answered at the exit timeout, and the server exits with status 0 soon after
    # (it used to take aiohttp's own 60 s and more, and exit 1)
    assert server.process.wait(timeout=15) == 0, server.log()
    for call in calls:
        call.join(timeout=15)
    for model in ("held_process", "held_thread"):
        status, text = answers[model]
        assert status == 503 and f"model '{model}' is unloading" in text and "within 2 s" in text
    assert not Path(f"/proc/{worker_pid}").exists()  # no orphan worker process
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"naiad-{server.process.pid}-")]


# --- 1 and 4: a small /dev/shm -----------------------------------------------------------------------

def _private_shm_command() -> list[str] | None:
    """A prefix that runs a command with a /dev/shm of its own, or None where this machine cannot."""
    for prefix in (["unshare", "--mount", "--map-root-user"], ["unshare", "--mount"]):
        probe = prefix + ["sh", "-c", "mount -t tmpfs -o size=1m tmpfs /dev/shm"]
        try:
            if subprocess.run(probe, capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            pass
    return None


class SmallShmServer(NaiadServer):
    """A naiad whose /dev/shm is a tmpfs of `shm_mib` MiB in a mount namespace of its own."""

    def __init__(self, repository: Path, log_path: Path, prefix: list[str], shm_mib: int, *args: str):
        mount = f'mount -t tmpfs -o size={shm_mib}m tmpfs /dev/shm && exec "$@"'
        super().__init__(repository, log_path, *args, prefix=(*prefix, "sh", "-c", mount, "sh"))

    def shm_files(self) -> dict[str, int]:
        """The files in its /dev/shm and their sizes (seen through its root in /proc)."""
        folder = Path(f"/proc/{self.process.pid}/root/dev/shm")
        return {path.name: path.stat().st_size for path in folder.iterdir()}


SHM_MIB = 48


@pytest.fixture
def small_shm_server(server):
    if not isinstance(server, SmallShmServer):
        pytest.skip("this machine cannot give a process a /dev/shm of its own (unshare --mount)")
    return server


def big_infer(server: NaiadServer, mib: int):
    return infer(server.http_url, "identity", 0, width=mib * 2**20 // 4)


TOO_BIG_MIB = 56  # more than the whole /dev/shm (and less than the largest HTTP body)


def test_a_full_dev_shm_fails_that_request_clearly_and_the_server_stays_up(small_shm_server):
    server = small_shm_server
    client = httpclient.InferenceServerClient(server.http_url, network_timeout=60)
    big_infer(server, 24)  # fits: its segment grows for it, and is given back after it
    wait_until(lambda: max(server.shm_files().values()) <= 16 << 20, "the grown segment to be given back")
    error = failure(server.http_url, "identity", 0, width=TOO_BIG_MIB * 2**20 // 4)
    assert error.status() == "503"
    message = error.message()
    assert f"model 'identity': the batch's inputs need {TOO_BIG_MIB}.0 MiB of shared memory" in message
    assert f"of {SHM_MIB}.0 MiB" in message and "make /dev/shm larger" in message
    assert server.process.poll() is None
    assert_serving(server, client, "identity", "raiser_process")
    big_infer(server, 24)
    client.close()


def test_a_failed_hand_over_answers_its_batch_and_leaves_the_worker_serving(small_shm_server):
    """The hand-over of a batch to a worker process fails (no room to grow its segment): that batch
    fails, the requests beside it are answered, and the worker takes the next ones."""
    server = small_shm_server
    results: dict[int, object] = {}

    def one(i: int, width: int) -> None:
        try:
            results[i] = infer(server.http_url, "identity", i, width=width)
        except InferenceServerException as e:
            results[i] = e

    widths = [TOO_BIG_MIB * 2**20 // 4, 3, 3, 3]
    calls = [threading.Thread(target=one, args=(i, w)) for i, w in enumerate(widths)]
    for call in calls:
        call.start()
    for call in calls:
        call.join(timeout=60)
    assert isinstance(results[0], InferenceServerException) and results[0].status() == "503"
    assert all(not isinstance(results[i], Exception) for i in (1, 2, 3))
    client = httpclient.InferenceServerClient(server.http_url)
    assert_serving(server, client, "identity", "raiser_process")
    client.close()
