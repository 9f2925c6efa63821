"""The model registry: which models and versions are serving, their lifecycle (load, reload with no
downtime, unload), the three model control modes, and lookups on the request path."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naiad import backends, batching, ensembles
from naiad.backends.base import ModelFiles, find_model_file
from naiad.daemon import gpus, model_config, repository, statistics
from naiad.daemon.errors import ConfigError, InvalidArgument, NaiadError, NotFound, Unavailable
from naiad.daemon.inference import InferRequest, InferResponse
from naiad.daemon.model_config import ModelConfig
from naiad.daemon.served_model import ServedModel
from naiad.daemon.statistics import ModelStatistics

log = logging.getLogger(__name__)

READY, UNAVAILABLE, LOADING, UNLOADING = "READY", "UNAVAILABLE", "LOADING", "UNLOADING"
MODES = ("none", "poll", "explicit")


@dataclass
class Prepared:
    """A model read from disk and checked, ready to load its versions."""
    folder: repository.ModelFolder
    config: ModelConfig
    versions: dict[int, Path]


@dataclass
class ModelEntry:
    name: str
    state: str = ""                      # "" until a load is first tried
    reason: str = ""                     # why it is unavailable, or why its last reload failed
    versions: dict[int, ServedModel] = field(default_factory=dict)
    serving: dict[str, ServedModel] = field(default_factory=dict)   # "" and "<n>" -> version
    failed: dict[int, str] = field(default_factory=dict)            # version -> why it did not load
    fingerprint: tuple | None = None
    files_dir: Path | None = None        # a load request's own files, deleted at unload
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def publish(self, versions: dict[int, ServedModel]) -> None:
        self.versions = versions
        serving = {str(v): served for v, served in versions.items()}
        if versions:
            serving[""] = versions[max(versions)]
        self.serving = serving


class Registry:
    def __init__(self, repository_path: Path, mode: str = "none", startup_models: list[str] = (),
                 poll_secs: float = 15.0):
        if mode not in MODES:
            raise ValueError(f"model control mode must be one of {', '.join(MODES)}, got '{mode}'")
        self.repository = Path(repository_path)
        self.mode = mode
        self.startup_models = list(startup_models)
        self.poll_secs = poll_secs
        self.models: dict[str, ModelEntry] = {}
        self.ready = False
        self._poller: asyncio.Task | None = None

    # --- the request path -------------------------------------------------------------------------

    def get(self, name: str, version: str = "") -> ServedModel:
        """The serving version `version` ("" for the policy's latest) of model `name`."""
        entry = self.models.get(name)
        if entry is not None:
            served = entry.serving.get(version)
            if served is not None:
                return served
        raise self._lookup_error(name, version, entry)

    async def infer(self, request: InferRequest) -> InferResponse:
        """Run a request on the model version it names; raises NaiadError on failure. Ensemble steps
        come this way, through each model's own scheduler."""
        return await self.get(request.model_name, request.model_version).infer(request)

    def submit(self, request: InferRequest) -> asyncio.Future:
        """infer without a coroutine (ServedModel.submit), for Python models calling models."""
        return self.get(request.model_name, request.model_version).submit(request)

    def stream(self, request: InferRequest) -> AsyncIterator[tuple[InferResponse | None, bool]]:
        """The responses of the model version the request names, as it sends them (ServedModel.stream)."""
        return self.get(request.model_name, request.model_version).stream(request)

    def _lookup_error(self, name: str, version: str, entry: ModelEntry | None) -> NaiadError:
        # Each message starts as Triton's does, for clients that match on it; naiad's why follows.
        prefix = f"Request for unknown model: '{name}'"
        if entry is None:
            return NotFound(f"{prefix} is not found: no model of that name is loaded")
        if not entry.versions:
            why = entry.reason or {LOADING: "it is loading", UNLOADING: "it is unloading"}.get(
                entry.state, "it is not loaded")
            return Unavailable(f"{prefix} has no available versions: the model is not ready: {why}")
        ready = ", ".join(str(v) for v in sorted(entry.versions))
        return NotFound(f"{prefix} version {version} is not found: no version '{version}' is ready; "
                        f"ready versions: {ready}")

    def is_ready(self, name: str, version: str = "") -> bool:
        """Serving, and every instance able to take work (a restarting worker process is not)."""
        entry = self.models.get(name)
        served = entry.serving.get(version) if entry is not None else None
        return served is not None and served.scheduler.ready

    def server_ready(self, strict: bool) -> bool:
        """The start's loads are done and the repository can be read; when strict, every model the
        server has tried to load also serves all its versions. A model unloaded on request no longer
        counts (as in Triton); a model loading for the first time does, until it serves."""
        if not self.ready or self.repository_problem() is not None:
            return False
        return not strict or all(
            entry.state == READY and not entry.failed for entry in self.models.values()
            if entry.state != UNLOADING and entry.reason != "unloaded")

    def repository_problem(self) -> str | None:
        """Why the model repository cannot be read, or None when it can."""
        if not self.repository.is_dir():
            return f"model repository {self.repository} is not a folder"
        if not os.access(self.repository, os.R_OK | os.X_OK):
            return f"model repository {self.repository} cannot be read (permission denied)"
        return None

    def versions_of(self, name: str) -> list[str]:
        return [str(v) for v in sorted(self.models[name].versions)]

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the models the control mode starts with; in poll mode, start watching."""
        if self.mode == "explicit":
            names = self.startup_models
            if "*" in names:
                names = repository.model_names(self.repository)
            else:  # an ensemble's members load with it, as Triton does
                names = await asyncio.to_thread(self._with_members, names)
        else:
            names = repository.model_names(self.repository)
        problem = self.repository_problem()
        if problem is not None:
            log.error("%s; no models will load, and the server is not ready until it is", problem)
        await self._load_in_order(names)
        if self.mode == "poll":
            self._poller = asyncio.create_task(self._poll_forever())
        self.ready = True
        serving = sum(bool(e.versions) for e in self.models.values())
        log.info("started: %d model(s) serving, %d not", serving, len(self.models) - serving)

    async def close(self, timeout: float | None = None) -> None:
        """Stop watching, then unload every model once its requests have finished: within `timeout`
        seconds, after which what is still running fails and the worker processes are killed."""
        self.ready = False
        if self._poller is not None:
            self._poller.cancel()
        # ensembles first: their requests still need their members
        started = time.monotonic()
        pipelines = [name for name, entry in self.models.items() if _is_ensemble(entry)]
        await asyncio.gather(*(self._unload(name, timeout=timeout) for name in pipelines))
        left = None if timeout is None else max(timeout - (time.monotonic() - started), 0)
        await asyncio.gather(*(self._unload(name, timeout=left) for name in list(self.models)
                               if name not in pipelines))

    async def load(self, name: str, config_json: str | None = None,
                   files: dict[str, bytes] | None = None) -> None:
        """The repository API's load: (re)load `name`, optionally with a configuration and files
        given in the request. Raises when the model does not end up serving."""
        self._check_api_allowed()
        repository.check_name(name)
        if files and config_json is None:
            raise InvalidArgument("load parameters 'file:...' need the 'config' parameter too")
        config_raw = repository.parse_config_json(config_json) if config_json is not None else None
        if not files and not (self.repository / name).is_dir():
            raise NotFound(f"no model folder '{name}' in the repository {self.repository}")
        # an ensemble's members that are not serving load first (theirs too), as Triton does
        members = (member_names(config_raw) if config_raw is not None
                   else await asyncio.to_thread(self._members_on_disk, name))
        members = [m for m in members if (self.repository / m).is_dir()]
        if members:
            found = await asyncio.to_thread(self._with_members, members)
            await self._load_in_order([m for m in found if m != name and not self._serving(m, "")])
        reason = await self._load(name, config_raw, files)
        if reason is not None:
            raise InvalidArgument(f"failed to load model '{name}': {reason}")
        self._recheck_dependents({name})

    async def unload(self, name: str) -> None:
        self._check_api_allowed()
        if name not in self.models:
            raise NotFound(f"unknown model '{name}': no model of that name is loaded")
        await self._unload(name)

    def _check_api_allowed(self) -> None:
        if self.mode != "explicit":
            raise Unavailable(f"loading and unloading through the API needs --model-control-mode "
                              f"explicit; this server runs in '{self.mode}' mode")

    async def _load(self, name: str, config_raw: Any = None, files: dict[str, bytes] | None = None
                    ) -> str | None:
        """Load or reload one model; returns None when it serves, else the reason it does not. A
        reload swaps versions in only when all have loaded; until then the old ones keep serving."""
        entry = self.models.setdefault(name, ModelEntry(name))
        async with entry.lock:
            reloading = bool(entry.versions)
            if not reloading:
                entry.state = LOADING
            files_dir = Path(tempfile.mkdtemp(prefix="naiad-files-")) if files else None
            if files_dir is None:
                entry.fingerprint = await asyncio.to_thread(repository.fingerprint, self.repository / name)
            try:
                prepared = await asyncio.to_thread(self._prepare, name, config_raw, files, files_dir)
            except Exception as e:
                if files_dir is not None:
                    shutil.rmtree(files_dir, ignore_errors=True)
                return self._failed(entry, _problems(e), reloading)
            loaded, failed = {}, {}
            for version, path in prepared.versions.items():
                try:
                    loaded[version] = await self._load_version(name, version, path, prepared)
                except Exception as e:
                    failed[version] = "; ".join(_problems(e))
                    log.error("model '%s' version %d failed to load: %s", name, version, failed[version])
            failure = "; ".join(f"version {v}: {r}" for v, r in failed.items())
            if failed and reloading:
                await self._retire(loaded.values(), files_dir)
                return self._failed(entry, [failure], reloading, logged=True)
            old, old_dir = entry.versions, entry.files_dir
            entry.publish(loaded)
            entry.failed, entry.files_dir = failed, files_dir
            entry.state = READY if loaded else UNAVAILABLE
            entry.reason = "" if loaded else failure
            for version in sorted(loaded):
                log.info("model '%s' version %d is ready", name, version)
            await self._retire(old.values(), old_dir)
            return None if loaded else failure

    def _failed(self, entry: ModelEntry, problems: list[str], reloading: bool, logged: bool = False) -> str:
        reason = "; ".join(problems)
        if not logged:  # one line for the failure, with every problem
            log.error("model '%s' failed to load%s: %s", entry.name,
                      " (the previous load keeps serving)" if reloading else "", reason)
        if reloading:
            entry.reason = f"the reload failed, the previous load keeps serving: {reason}"
        else:
            entry.state, entry.reason = UNAVAILABLE, reason
        return reason

    def _prepare(self, name: str, config_raw: Any, files: dict[str, bytes] | None,
                 files_dir: Path | None) -> Prepared:
        """Read and check a model, from the repository or from a load request's files (blocking)."""
        if files_dir is None:
            return read_model(self.repository / name, name, config_raw)
        path = files_dir / name
        path.mkdir()
        repository.write_request_files(path, files)
        return read_model(path, name, config_raw)

    async def _load_version(self, name: str, version: int, path: Path, prepared: Prepared
                            ) -> ServedModel:
        config = prepared.config
        if config.is_ensemble:
            return self._load_ensemble(name, version, prepared)
        files = ModelFiles(name, version, prepared.folder.path, path, config)
        execution = config.parameters.get("execution") or backends.get(config.backend).default_execution
        started = time.monotonic()
        workers = await batching.create_workers(files, execution, gpus.count(), models=self)
        stats = ModelStatistics(load_seconds=time.monotonic() - started)
        return ServedModel(name, version, config, batching.make_scheduler(files, execution, workers, stats),
                           stats)

    # --- ensembles --------------------------------------------------------------------------------

    def _load_ensemble(self, name: str, version: int, prepared: Prepared) -> ServedModel:
        """An ensemble version: its steps checked against the members serving now."""
        config = prepared.config
        plan = ensembles.graph(config)
        problems = ensembles.check_members(config, plan, self._member_configs(plan))
        for step in plan.steps:
            if self._uses(step.model_name, name):
                problems.append(f"ensemble_scheduling.step[{step.index}].model_name: model "
                                f"'{step.model_name}' runs this ensemble in its own steps; ensembles "
                                f"cannot form a cycle")
        if problems:
            where = str(prepared.folder.config_path or prepared.folder.path / "config.yaml")
            raise ConfigError([f"{where}: {p}" for p in problems])
        stats = ModelStatistics()
        scheduler = ensembles.EnsembleScheduler(name, plan, self.infer, self._member_trouble, stats)
        return ServedModel(name, version, config, scheduler, stats)

    def _serving(self, name: str, version: str) -> ServedModel | None:
        entry = self.models.get(name)
        return entry.serving.get(version) if entry is not None else None

    def _member_configs(self, plan: ensembles.Graph) -> dict[int, ModelConfig | str]:
        """Each step's member configuration, or why the member is not serving."""
        found: dict[int, ModelConfig | str] = {}
        for step in plan.steps:
            served = self._serving(step.model_name, step.model_version)
            found[step.index] = (served.config if served is not None
                                 else self._why_not_serving(step.model_name, step.model_version))
        return found

    def _why_not_serving(self, name: str, version: str) -> str:
        """Why model `name` has no serving version `version` ("" when it has)."""
        entry = self.models.get(name)
        if entry is None:
            if (self.repository / name).is_dir():
                return "it is not loaded"
            return f"the repository {self.repository} has no model '{name}'"
        if not entry.versions:
            return entry.reason or {LOADING: "it is loading", UNLOADING: "it is unloading"}.get(
                entry.state, "it is not loaded")
        if version not in entry.serving:
            return (f"version {version} is not serving; serving versions: "
                    f"{', '.join(str(v) for v in sorted(entry.versions))}")
        return ""

    def _member_trouble(self, name: str, version: str) -> str:
        """Why an ensemble's member cannot take requests now ("" when it can): asked live, so an
        ensemble is ready exactly when its members are."""
        why = self._why_not_serving(name, version)
        return why or self.models[name].serving[version].scheduler.trouble

    def _uses(self, name: str, target: str) -> bool:
        """Whether serving model `name` runs `target`, in its steps or theirs."""
        seen, todo = set(), [name]
        while todo:
            current = todo.pop()
            if current == target:
                return True
            entry = self.models.get(current)
            if current in seen or entry is None:
                continue
            seen.add(current)
            for served in entry.versions.values():
                if isinstance(served.scheduler, ensembles.EnsembleScheduler):
                    todo += [step.model_name for step in served.scheduler.plan.steps]
        return False

    def _recheck_dependents(self, names: set[str]) -> None:
        """After `names` (re)loaded: check the serving ensembles that run them against the members as
        they are now; a step that no longer fits makes its ensemble unavailable, saying why."""
        for entry in self.models.values():
            for served in entry.versions.values():
                scheduler = served.scheduler
                if not isinstance(scheduler, ensembles.EnsembleScheduler):
                    continue
                if not any(step.model_name in names for step in scheduler.plan.steps):
                    continue
                members = self._member_configs(scheduler.plan)
                if any(isinstance(m, str) for m in members.values()):
                    continue  # a member not serving: its trouble says so, live
                problems = ensembles.check_members(served.config, scheduler.plan, members)
                scheduler.mismatch = "; ".join(problems)

    def _members_on_disk(self, name: str) -> list[str]:
        """The models that the repository's model `name` runs in its steps ([] if not an ensemble)."""
        try:
            return member_names(repository.read_config(repository.read_folder(self.repository / name)))
        except (NaiadError, OSError):
            return []

    def _with_members(self, names: list[str]) -> list[str]:
        """`names` and, for the ensembles among them, the repository's models they run (theirs too)."""
        found: list[str] = []
        todo = list(names)
        while todo:
            name = todo.pop(0)
            if name not in found:
                found.append(name)
                todo += [m for m in self._members_on_disk(name) if (self.repository / m).is_dir()]
        return found

    async def _load_in_order(self, names: list[str]) -> None:
        """Load `names` from the repository, each ensemble after the members among them. Models that
        run each other (a cycle) load together and their loads say what they miss."""
        members = await asyncio.to_thread(lambda: {n: set(self._members_on_disk(n)) for n in names})
        left = set(names)
        while left:
            layer = sorted(n for n in left if not members[n] & left) or sorted(left)
            await asyncio.gather(*(self._load(name) for name in layer))
            left -= set(layer)

    # --- unloading --------------------------------------------------------------------------------

    async def _unload(self, name: str, forget: bool = False, timeout: float | None = None) -> None:
        entry = self.models[name]
        async with entry.lock:
            old, old_dir = entry.versions, entry.files_dir
            entry.publish({})
            entry.state, entry.files_dir = UNLOADING, None
            await self._retire(old.values(), old_dir, timeout)
            entry.state, entry.reason, entry.failed = UNAVAILABLE, "unloaded", {}
            if forget:
                del self.models[name]
        log.info("model '%s' unloaded", name)

    async def _retire(self, versions, files_dir: Path | None, timeout: float | None = None) -> None:
        """Let the versions finish their requests (within `timeout`), then close them."""
        await asyncio.gather(*(served.scheduler.close(timeout) for served in versions))
        if files_dir is not None:
            await asyncio.to_thread(shutil.rmtree, files_dir, True)

    # --- poll mode --------------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.poll_secs)
            try:
                await self.poll_once()
            except Exception:
                log.exception("polling the model repository failed")

    async def poll_once(self) -> None:
        """Load new model folders, reload changed ones, unload removed ones."""
        found = await asyncio.to_thread(self._fingerprints)
        removed = [name for name, entry in self.models.items()
                   if name not in found and entry.files_dir is None]
        changed = [name for name, fp in found.items()
                   if name not in self.models or self.models[name].fingerprint != fp]
        await asyncio.gather(*(self._unload(name, forget=True) for name in removed),
                             self._load_in_order(changed))
        self._recheck_dependents(set(changed))
        # ensembles that could not load for want of a member that serves now: try them again
        loaded = {name for name in changed if self._serving(name, "") is not None}
        idle = [name for name, entry in self.models.items()
                if not entry.versions and name in found and name not in changed]
        waiting = await asyncio.to_thread(
            lambda: [name for name in idle if loaded & set(self._members_on_disk(name))]) if loaded else []
        await self._load_in_order(waiting)

    def _fingerprints(self) -> dict[str, tuple]:
        return {name: repository.fingerprint(self.repository / name)
                for name in repository.model_names(self.repository)}

    def statistics(self, name: str = "", version: str = "") -> list[dict]:
        """Statistics of every serving version, of one model's, or of one version."""
        if name and version:
            chosen = [self.get(name, version)]
        elif name:
            entry = self.models.get(name)
            if entry is None or not entry.versions:
                raise self._lookup_error(name, version, entry)
            chosen = [entry.versions[v] for v in sorted(entry.versions)]
        else:
            chosen = [e.versions[v] for _, e in sorted(self.models.items()) for v in sorted(e.versions)]
        return [statistics.to_dict(s.name, s.version_text, s.stats) for s in chosen]

    # --- the repository index ---------------------------------------------------------------------

    def index(self, ready_only: bool = False) -> list[dict]:
        """One row per model version, as Triton's RepositoryIndex gives them."""
        rows = []
        names = set(repository.model_names(self.repository)) | set(self.models)
        for name in sorted(names):
            entry = self.models.get(name)
            if entry is None or not entry.state:
                rows.append({"name": name})
                continue
            for version, served in sorted(entry.versions.items()):
                # as ModelReady says: a version whose instances cannot all take work is not READY
                trouble = served.scheduler.trouble
                rows.append({"name": name, "version": str(version), "state": UNAVAILABLE if trouble else READY,
                             "reason": trouble or entry.reason})
            for version, reason in sorted(entry.failed.items()):
                rows.append({"name": name, "version": str(version), "state": UNAVAILABLE,
                             "reason": reason})
            if not entry.versions and not entry.failed:
                rows.append({"name": name, "state": entry.state, "reason": entry.reason})
        if ready_only:
            rows = [row for row in rows if row.get("state") == READY]
        return rows


def read_model(path: Path, name: str, config_raw: Any = None) -> Prepared:
    """Read one model folder and check its configuration and files (blocking). `config_raw`, when
    given, replaces the folder's config file. Raises ConfigError listing every problem."""
    folder = repository.read_folder(path)
    raw = config_raw if config_raw is not None else repository.read_config(folder)
    where = ("load parameter 'config'" if config_raw is not None
             else str(folder.config_path or path / "config.yaml"))
    config, problems = model_config.load(raw, name, lambda c: _complete(c, folder))
    if problems:
        raise ConfigError([f"{where}: {p}" for p in problems])
    if config.is_ensemble:
        try:  # how the steps fit together; how they fit their members is checked at load
            ensembles.graph(config)
        except ConfigError as e:
            raise ConfigError([f"{where}: {p}" for p in e.problems])
        uses_gpus = False
    else:
        uses_gpus = backends.get(config.backend).uses_gpus()
    model_config.fill_defaults(config, name, "KIND_GPU" if gpus.count() and uses_gpus else "KIND_CPU")
    chosen = repository.select_versions(config.version_policy, list(folder.versions))
    if not chosen:
        found = ", ".join(str(v) for v in sorted(folder.versions)) or "none"
        raise ConfigError([f"{path}: no version folder to serve (found: {found}; the version policy "
                           f"chose none); put the model in a numbered folder such as {path / '1'}"])
    if config.is_ensemble:  # no model file: an empty version folder, as in Triton
        return Prepared(folder, config, {v: folder.versions[v] for v in chosen})
    defaults = backends.model_files(config.backend)
    files = [find_model_file(folder.versions[v], config.default_model_filename, defaults) for v in chosen]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise ConfigError([f"{m}: missing; the {config.backend} backend reads its model from "
                           f"<model>/<version>/{' or '.join(defaults)}" for m in missing])
    return Prepared(folder, config, {v: folder.versions[v] for v in chosen})


def _complete(config: ModelConfig, folder: repository.ModelFolder) -> list[str]:
    """Choose the backend (from `backend`, `platform` or the model file's name), then let it fill
    what it can read from the newest version's model file."""
    if config.is_ensemble:  # nothing to read: the configuration says everything
        config.platform = config.backend = model_config.ENSEMBLE
        return []
    if not config.backend:
        config.backend = backends.from_platform(config.platform) or backends.detect(
            [folder.versions[v] for v in sorted(folder.versions)])
    if not config.backend:
        return [f"backend: missing, and no model file says which; set backend: to one of "
                f"{', '.join(backends.AVAILABLE)}"]
    if config.backend not in backends.AVAILABLE:
        config.backend = backends.from_platform(config.backend) or config.backend
    if config.backend not in backends.AVAILABLE:
        return [f"backend: '{config.backend}' is not a naiad backend; use one of "
                f"{', '.join(backends.AVAILABLE)}"]
    if not folder.versions:
        return []
    newest = folder.versions[max(folder.versions)]
    defaults = backends.model_files(config.backend)
    path = find_model_file(newest, config.default_model_filename, defaults)
    if not path.exists():
        return [f"{path}: missing; the {config.backend} backend reads its model from "
                f"<model>/<version>/{' or '.join(defaults)}"]
    try:
        backends.get(config.backend).complete_config(config, path)
    except ConfigError as e:
        return e.problems
    return []


def member_names(raw: Any) -> list[str]:
    """The models a raw configuration runs in its ensemble steps ([] for other models, or for one too
    broken to tell: its load reports why). Only model names: never a path out of the repository."""
    try:
        names = [step["model_name"] for step in raw["ensemble_scheduling"]["step"]]
        return [n for n in names if isinstance(n, str) and repository.name_problem(n) is None]
    except (TypeError, KeyError, AttributeError):
        return []


def _is_ensemble(entry: ModelEntry) -> bool:
    return any(served.config.is_ensemble for served in entry.versions.values())


def _problems(error: BaseException) -> list[str]:
    if isinstance(error, ConfigError):
        return error.problems
    if isinstance(error, NaiadError):
        return [error.message]
    return [f"{type(error).__name__}: {error}"]
