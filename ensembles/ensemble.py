"""Ensembles: a model made of steps, each step a request to another model (a member), wired by
tensor names. `graph` checks the steps among themselves once (every tensor has one producer, no
cycle, every ensemble input read and output produced), `check_members` checks them against the
members' configurations at load, and `EnsembleScheduler` runs each request as a DAG: a step starts
as soon as its inputs exist, independent steps run at the same time.

A step's request goes to its member through `infer` (the registry's request path), so the member's
own checks, scheduler, dynamic batching, instances and statistics apply. This module never sees the
registry: it is handed `infer` and `member_trouble` at load. Tensors pass from step to step as the
same arrays, never copied here.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from naiad.daemon.errors import ConfigError, Internal, InvalidArgument, NaiadError, Unavailable
from naiad.daemon.inference import InferRequest, InferResponse, RequestedOutput, place_outputs
from naiad.daemon.model_config import ModelConfig, ModelInput, ModelOutput
from naiad.daemon.statistics import ModelStatistics

Infer = Callable[[InferRequest], Awaitable[InferResponse]]
# why a member (name, version: "" for the latest) cannot take requests now; "" when it can
MemberTrouble = Callable[[str, str], str]


@dataclass(frozen=True, slots=True)
class Step:
    index: int
    model_name: str
    model_version: str                      # "" for the latest serving version
    inputs: tuple[tuple[str, str], ...]     # (the member's input, the ensemble tensor it reads)
    outputs: tuple[tuple[str, str], ...]    # (the member's output, the ensemble tensor it makes)
    requested: tuple[RequestedOutput, ...]  # what the member is asked for: the mapped outputs only

    def describe(self) -> str:
        return f"step {self.index} (model '{self.model_name}')"


@dataclass(frozen=True, slots=True)
class Graph:
    steps: tuple[Step, ...]
    first: tuple[int, ...]                  # steps that read ensemble inputs only
    waits: tuple[int, ...]                  # per step: how many step-made tensors it reads
    unblocks: tuple[tuple[int, ...], ...]   # per step: the steps its tensors feed, once per tensor
    outputs: tuple[str, ...]                # the ensemble's outputs: what a request naming none gets
    max_inflight: int                       # per step, 0: no bound


def graph(config: ModelConfig) -> Graph:
    """The ensemble's steps as a DAG, from a configuration that validate() passed. Raises ConfigError
    listing every problem: a tensor no step makes or two steps make, a cycle, an ensemble input no
    step reads, an ensemble output no step makes."""
    problems: list[str] = []
    scheduling = config.ensemble_scheduling
    inputs = {i.name for i in config.input}
    steps = []
    producer: dict[str, int] = {}
    for i, raw in enumerate(scheduling.step):
        where = f"ensemble_scheduling.step[{i}]"
        if raw.model_name == config.name:
            problems.append(f"{where}.model_name: an ensemble cannot be a step of itself")
        version = "" if raw.model_version == -1 else str(raw.model_version)
        outputs = tuple(raw.output_map.items())
        for member_output, tensor in outputs:
            if tensor in inputs:
                problems.append(f"{where}.output_map.{member_output}: '{tensor}' is an input of the "
                                f"ensemble; a step cannot make it too")
            elif tensor in producer:
                problems.append(f"{where}.output_map.{member_output}: tensor '{tensor}' is made by "
                                f"step {producer[tensor]} too; each tensor has one producer")
            else:
                producer[tensor] = i
        steps.append(Step(i, raw.model_name, version, tuple(raw.input_map.items()), outputs,
                          tuple(RequestedOutput(name) for name, _ in outputs)))
    read: set[str] = set()
    for step in steps:
        for member_input, tensor in step.inputs:
            read.add(tensor)
            if tensor not in inputs and tensor not in producer:
                problems.append(f"ensemble_scheduling.step[{step.index}].input_map.{member_input}: "
                                f"tensor '{tensor}' is neither an input of the ensemble nor made by a "
                                f"step; ensemble inputs: {', '.join(sorted(inputs))}")
    for name in sorted(inputs - read):
        problems.append(f"input '{name}': no step reads it; map it in a step's input_map, or remove it")
    for output in config.output:
        if output.name not in producer:
            problems.append(f"output '{output.name}': no step makes it; map it in a step's output_map")
    if problems:
        raise ConfigError(problems)
    # waits and unblocks count each (tensor, reader) pair once, whatever the member inputs reading it
    reads = [{tensor for _, tensor in step.inputs if tensor in producer} for step in steps]
    unblocks: list[list[int]] = [[] for _ in steps]
    for step, tensors in zip(steps, reads):
        for tensor in tensors:
            unblocks[producer[tensor]].append(step.index)
    cycle = _cycle(steps, reads, producer)
    if cycle:
        path = " -> ".join(steps[i].describe() for i in cycle)
        raise ConfigError([f"ensemble_scheduling: the steps form a cycle: {path}; a step cannot "
                           f"(even through others) read a tensor it makes"])
    return Graph(tuple(steps), tuple(i for i, r in enumerate(reads) if not r),
                 tuple(len(r) for r in reads), tuple(tuple(u) for u in unblocks),
                 tuple(o.name for o in config.output), scheduling.max_inflight_requests)


def _cycle(steps: list[Step], reads: list[set[str]], producer: dict[str, int]) -> list[int]:
    """A cycle among the steps, as step indexes with the first repeated at the end; [] if none."""
    after = [sorted({producer[t] for t in r}) for r in reads]   # step -> the steps it waits for
    state = [0] * len(steps)   # 0 unseen, 1 on the current path, 2 done
    path: list[int] = []

    def visit(i: int) -> list[int]:
        state[i] = 1
        path.append(i)
        for j in after[i]:
            if state[j] == 1:
                return path[path.index(j):] + [j]
            if state[j] == 0 and (found := visit(j)):
                return found
        path.pop()
        state[i] = 2
        return []

    for i in range(len(steps)):
        if state[i] == 0 and (found := visit(i)):
            return found
    return []


# --- against the members -------------------------------------------------------------------------

def check_members(config: ModelConfig, plan: Graph, members: dict[int, ModelConfig | str]) -> list[str]:
    """The problems of the steps against their members: `members` holds each step's member
    configuration, or why the member is not there. Checks that each member exists, has the inputs
    and outputs mapped, gets every input it requires, batches at least as much as the ensemble, and
    that every tensor's data type and shape agree between its producer and its readers (the
    ensemble's own inputs and outputs included)."""
    problems: list[str] = []
    batch = config.max_batch_size
    # tensor -> (what makes it, for messages; its data type; its full shape, batch dimension included)
    made: dict[str, tuple[str, object, list[int]]] = {
        i.name: (f"ensemble input '{i.name}'", i.data_type, _full(i, batch)) for i in config.input}
    found: dict[int, ModelConfig] = {}
    for step in plan.steps:
        member = members[step.index]
        where = f"ensemble_scheduling.step[{step.index}]"
        if isinstance(member, str):
            problems.append(f"{where}.model_name: model '{step.model_name}'"
                            f"{' version ' + step.model_version if step.model_version else ''} is not "
                            f"available: {member}")
            continue
        found[step.index] = member
        if member.decoupled:
            problems.append(f"{where}.model_name: model '{step.model_name}' is decoupled; ensembles of "
                            f"decoupled models are not supported yet")
        if batch > 0 and member.max_batch_size < batch:
            problems.append(f"{where}.model_name: model '{step.model_name}' has max_batch_size "
                            f"{member.max_batch_size}, smaller than the ensemble's {batch}; lower the "
                            f"ensemble's max_batch_size or raise the model's")
        outputs = {o.name: o for o in member.output}
        for member_output, tensor in step.outputs:
            spec = outputs.get(member_output)
            if spec is None:
                problems.append(f"{where}.output_map.{member_output}: model '{step.model_name}' has no "
                                f"output '{member_output}'; its outputs are {', '.join(outputs)}")
                continue
            made[tensor] = (f"output '{member_output}' of model '{step.model_name}' (step {step.index})",
                            spec.data_type, _full(spec, member.max_batch_size))
    for step in plan.steps:
        member = found.get(step.index)
        if member is None:
            continue
        where = f"ensemble_scheduling.step[{step.index}]"
        inputs = {i.name: i for i in member.input}
        mapped = {name for name, _ in step.inputs}
        for spec in member.input:
            if spec.name not in mapped and not spec.optional:
                problems.append(f"{where}.input_map: model '{step.model_name}' requires input "
                                f"'{spec.name}', which no entry gives")
        for member_input, tensor in step.inputs:
            spec = inputs.get(member_input)
            if spec is None:
                problems.append(f"{where}.input_map.{member_input}: model '{step.model_name}' has no "
                                f"input '{member_input}'; its inputs are {', '.join(inputs)}")
            elif tensor in made:
                problems += _agree(made[tensor], f"input '{member_input}' of model '{step.model_name}' "
                                   f"(step {step.index})", spec.data_type, _full(spec, member.max_batch_size),
                                   f"{where}.input_map.{member_input}", tensor)
    for output in config.output:
        if output.name in made:
            problems += _agree(made[output.name], f"ensemble output '{output.name}'", output.data_type,
                               _full(output, batch), f"output '{output.name}'", output.name)
    return problems


def _full(tensor: ModelInput | ModelOutput, max_batch_size: int) -> list[int]:
    """A tensor's shape as requests carry it: with the batch dimension (-1) when the model batches."""
    return ([-1] if max_batch_size > 0 else []) + list(tensor.dims or [])


def _agree(source: tuple[str, object, list[int]], reader: str, data_type, shape: list[int], where: str,
           tensor: str) -> list[str]:
    """The problems of `reader` reading tensor `tensor` made by `source`: data type, then shape."""
    maker, made_type, made_shape = source
    if made_type != data_type:
        return [f"{where}: tensor '{tensor}' is {made_type} from {maker}, but {reader} is {data_type}"]
    fits = len(made_shape) == len(shape) and all(a == b or -1 in (a, b) for a, b in zip(made_shape, shape))
    if not fits:
        return [f"{where}: tensor '{tensor}' has shape {_text(made_shape)} from {maker}, but {reader} "
                f"has shape {_text(shape)}"]
    return []


def _text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


# --- running -------------------------------------------------------------------------------------

class EnsembleScheduler:
    """An ensemble's scheduler: the surface ServedModel and the registry use from any scheduler
    (`submit`, `ready`, `trouble`, `queued`, `close`), running each request through the steps."""

    def __init__(self, model_name: str, plan: Graph, infer: Infer, member_trouble: MemberTrouble,
                 stats: ModelStatistics):
        self.model_name = model_name
        self.plan = plan
        self._infer = infer
        self._member_trouble = member_trouble
        self.stats = stats
        self.members = sorted({(s.model_name, s.model_version) for s in plan.steps})
        self.limits = ([asyncio.Semaphore(plan.max_inflight) for _ in plan.steps]
                       if plan.max_inflight else None)
        self.mismatch = ""   # set when a member reloaded and no longer fits the steps (check_members)
        self.closing = False
        self.running = 0
        self.idle = asyncio.Event()
        self.idle.set()

    @property
    def trouble(self) -> str:
        """Why the ensemble cannot run requests now: each member that cannot, and why."""
        found = [f"its members changed since it loaded: {self.mismatch}"] if self.mismatch else []
        for name, version in self.members:
            why = self._member_trouble(name, version)
            if why:
                found.append(f"member model '{name}'{' version ' + version if version else ''} is not "
                             f"ready: {why}")
        return "; ".join(found)

    @property
    def ready(self) -> bool:
        return not self.trouble

    def queued(self) -> int:
        """Requests waiting here: none, they wait in their members' queues."""
        return 0

    def submit(self, request: InferRequest) -> asyncio.Future:
        """Start the request: a future of its response. Raises Unavailable while unloading."""
        if self.closing:
            raise Unavailable(f"model '{self.model_name}' is unloading")
        return asyncio.ensure_future(self._infer_steps(request))

    async def _infer_steps(self, request: InferRequest) -> InferResponse:
        self.running += 1
        self.idle.clear()
        start = time.perf_counter_ns()
        try:
            tensors = await self._run(request)
        finally:
            self.running -= 1
            if not self.running:
                self.idle.set()
        # one execution per request: its compute time is the whole DAG's; members count their own
        self.stats.record_execution(1, request.batch_size, [0], 0, time.perf_counter_ns() - start, 0)
        wanted = request.output_names
        # only what was asked for leaves: intermediate tensors (and inputs) are dropped here
        names = self.plan.outputs if wanted is None else wanted
        response = InferResponse({name: tensors[name] for name in names})
        if request.output_places:
            place_outputs([request], [response])
        return response

    async def _run(self, request: InferRequest) -> dict:
        """Run every step, each as soon as its inputs exist; the tensors made (inputs included)."""
        plan = self.plan
        tensors = dict(request.inputs)
        waits = list(plan.waits)
        ready = list(plan.first)
        running: dict[asyncio.Task, Step] = {}
        try:
            while ready or running:
                if len(ready) == 1 and not running:  # a chain: no task needed for one step at a time
                    step = plan.steps[ready.pop()]
                    finished = [(step, await self._step(step, tensors, request))]
                else:
                    for index in ready:
                        step = plan.steps[index]
                        running[asyncio.ensure_future(self._step(step, tensors, request))] = step
                    ready.clear()
                    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                    ended = [(running.pop(task), task) for task in done]
                    failed = [task.exception() for _, task in ended if task.exception() is not None]
                    if failed:  # every exception taken, the first one raised
                        raise failed[0]
                    finished = [(step, task.result()) for step, task in ended]
                for step, made in finished:
                    tensors.update(made)
                    for index in plan.unblocks[step.index]:
                        waits[index] -= 1
                        if not waits[index]:
                            ready.append(index)
        finally:
            for task in running:  # a step failed (or the client went away): the rest are not needed
                task.cancel()
        return tensors

    async def _step(self, step: Step, tensors: dict, request: InferRequest) -> dict:
        """One step's request to its member: the tensors it made, by ensemble name."""
        inputs = {name: tensors[tensor] for name, tensor in step.inputs if tensor in tensors}
        call = InferRequest(step.model_name, step.model_version, inputs, list(step.requested),
                            id=request.id, parameters=dict(request.parameters),
                            priority=request.priority, timeout_us=request.timeout_us)
        try:
            if self.limits is None:
                response = await self._infer(call)
            else:
                async with self.limits[step.index]:
                    response = await self._infer(call)
        except NaiadError as e:
            raise _member_error(self.model_name, step, e) from None
        try:
            return {tensor: response.outputs[name] for name, tensor in step.outputs}
        except KeyError as e:
            raise Internal(f"model '{step.model_name}' (step {step.index} of ensemble "
                           f"'{self.model_name}') did not return output {e}") from None

    async def close(self, timeout: float | None = None) -> None:
        """Take no more requests; let those running finish, for at most `timeout` seconds (their
        members' own unloading fails what is still running then)."""
        self.closing = True
        try:
            await asyncio.wait_for(self.idle.wait(), timeout)
        except TimeoutError:
            pass


def _member_error(ensemble: str, step: Step, error: NaiadError) -> NaiadError:
    """The member's error, of its kind, saying which member and step of which ensemble it came from."""
    kind = InvalidArgument if isinstance(error, ConfigError) else type(error)
    return kind(f"model '{step.model_name}' (step {step.index} of ensemble '{ensemble}'): {error.message}")
