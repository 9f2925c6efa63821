"""Runs the daemon: one asyncio event loop carries the schedulers, and the frontends too unless they
run in processes of their own (frontends.py)."""
from __future__ import annotations

import asyncio
import logging
import signal

from naiad.batching.processes import remove_stale_segments
from naiad.daemon import grpc_frontend, http_frontend, metrics
from naiad.daemon.dataplane import DataPlane
from naiad.daemon.frontends import ANSWER_GRACE_SECS, FrontendPool, fewer_collections
from naiad.daemon.registry import Registry
from naiad.daemon.shared_memory import SharedMemory
from naiad.daemon.settings import Settings

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    """Serve until SIGINT or SIGTERM; then stop taking requests, let those in flight finish (up to
    exit_timeout_secs: then they fail) and unload every model, killing worker processes that do not
    end in time."""
    remove_stale_segments()
    registry = Registry(settings.model_repository, settings.model_control_mode, settings.load_model,
                        settings.repository_poll_secs)
    shared_memory = SharedMemory(settings.allow_client_shm)
    plane = DataPlane(registry, shared_memory, settings.strict_readiness)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # The frontends start first: live answers at once, ready once the models have loaded.
    grpc_server = pool = http_runner = metrics_runner = None
    grace = settings.exit_timeout_secs + ANSWER_GRACE_SECS
    if settings.frontends > 1:
        pool = FrontendPool(settings, plane)
        try:
            await pool.start()
        except BaseException:
            await pool.stop(0)
            raise
    else:
        if settings.allow_grpc:
            grpc_server = await grpc_frontend.start(plane, settings.grpc_address, settings.grpc_port,
                                                    settings.max_request_bytes)
        if settings.allow_http:
            http_runner = await http_frontend.start(plane, settings, shutdown_timeout=grace)
    if settings.allow_metrics:
        metrics_runner = await metrics.start(registry, settings.metrics_address, settings.metrics_port)
    fewer_collections()
    try:
        starting = asyncio.create_task(registry.start())
        starting.add_done_callback(_report_failed_start)
        await stop.wait()
        log.info("shutting down")
        starting.cancel()
    finally:
        registry.ready = False
        # The frontends finish their requests while the models finish theirs, both within the exit
        # timeout: past it, the models fail what is left and the frontends send those answers.
        await asyncio.gather(_stop_frontends(pool, grpc_server, http_runner, grace),
                             _close_models(registry, settings.exit_timeout_secs))
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        shared_memory.close()
    log.info("stopped")


def _report_failed_start(task: asyncio.Task) -> None:
    """The server stays live but never ready; the log says why."""
    if not task.cancelled() and task.exception() is not None:
        error = task.exception()
        log.error("loading the models of the start failed: %s: %s; the server will not be ready",
                  type(error).__name__, error)


async def _stop_frontends(pool: FrontendPool | None, grpc_server, http_runner, grace: float) -> None:
    if pool is not None:
        await pool.stop(grace)
    if grpc_server is not None:
        await grpc_server.stop(grace)
    if http_runner is not None:
        await http_runner.cleanup()


async def _close_models(registry: Registry, timeout: float) -> None:
    try:
        await asyncio.wait_for(registry.close(timeout), timeout + ANSWER_GRACE_SECS)
    except TimeoutError:  # a model still loading, say: cancelled, which kills its worker processes
        log.error("the models did not all unload within --exit-timeout-secs (%g s); stopping anyway",
                  timeout)
