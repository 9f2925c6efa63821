"""Scheduling: a model version's queue (direct or dynamic batching) in front of its instances, each
run by a worker (a thread, a process, or the event loop itself)."""
from __future__ import annotations

import asyncio

from naiad.backends import python_api
from naiad.backends.base import ModelFiles
from naiad.backends.bls import BlsClient, Models, start_in_process
from naiad.batching.dynamic import DynamicScheduler
from naiad.batching.instances import InlineWorker, Limits, Worker, create_in_thread, instance_specs
from naiad.batching.processes import ProcessWorker
from naiad.batching.scheduler import DirectScheduler, Scheduler
from naiad.daemon.statistics import ModelStatistics


async def create_workers(files: ModelFiles, execution: str, gpu_count: int, models: Models | None = None
                         ) -> list:
    """Every instance the configuration asks for, each with its worker, set up (the model's own set-up
    code runs off the event loop, each instance within load_timeout_seconds). On a failure or when
    cancelled, those made so far are stopped and nothing is left running. `models`: where the
    instances' calls to other models (BLS) go."""
    loop = asyncio.get_running_loop()
    if models is not None:  # for model code in this process
        python_api.connect(BlsClient(start_in_process(models, loop)))
    limits = Limits.of(files.config)
    made = []
    try:
        for spec in instance_specs(files.config, gpu_count):
            if execution == "process":
                worker = ProcessWorker(files, spec, loop, limits, models)
                await worker.start()
            else:
                instance = await create_in_thread(files, spec, loop, limits)
                worker_class = InlineWorker if execution == "inline" else Worker
                worker = worker_class(files.name, spec.name, instance, loop, limits)
            made.append(worker)
    except BaseException:
        await asyncio.gather(*(worker.stop(limits.wait) for worker in made), return_exceptions=True)
        raise
    return made


def make_scheduler(files: ModelFiles, execution: str, workers: list, stats: ModelStatistics) -> Scheduler:
    """The dynamic batcher when the configuration has `dynamic_batching`, else direct scheduling.
    Called on the event loop."""
    if files.config.dynamic_batching is not None:
        scheduler = DynamicScheduler(files.name, workers, stats, files.config)
    else:
        scheduler = DirectScheduler(files.name, workers, stats, inline=execution == "inline")
    scheduler.instance_wait_seconds = Limits.of(files.config).wait
    return scheduler
