"""Scheduling: a model version's queue (direct or dynamic batching) in front of its instances, each
run by a worker (a thread, a process, or the event loop itself)."""
from __future__ import annotations

import asyncio

from naiad import backends
from naiad.backends.base import ModelFiles
from naiad.batching.dynamic import DynamicScheduler
from naiad.batching.instances import InlineWorker, Worker, instance_specs
from naiad.batching.processes import ProcessWorker
from naiad.batching.scheduler import DirectScheduler, Scheduler
from naiad.daemon.statistics import ModelStatistics


def create_workers(files: ModelFiles, execution: str, gpu_count: int,
                   loop: asyncio.AbstractEventLoop) -> list:
    """Every instance the configuration asks for, each with its worker (blocking: runs the model's
    own set-up code, or starts its processes). On a failure, those made so far are stopped."""
    made = []
    try:
        for spec in instance_specs(files.config, gpu_count):
            if execution == "process":
                made.append(ProcessWorker(files, spec, loop))
            else:
                instance = backends.get(files.config.backend).create_instance(files, spec)
                worker_class = InlineWorker if execution == "inline" else Worker
                made.append(worker_class(files.name, spec.name, instance, loop))
    except BaseException:
        for worker in made:
            worker.stop()
        raise
    return made


def make_scheduler(files: ModelFiles, execution: str, workers: list, stats: ModelStatistics) -> Scheduler:
    """The dynamic batcher when the configuration has `dynamic_batching`, else direct scheduling.
    Called on the event loop."""
    if files.config.dynamic_batching is not None:
        return DynamicScheduler(files.name, workers, stats, files.config)
    return DirectScheduler(files.name, workers, stats, inline=execution == "inline")
