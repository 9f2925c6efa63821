"""The model registry: which models and versions are serving, their lifecycle (load, reload with no
downtime, unload), the three model control modes, and lookups on the request path."""
from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naiad import backends, batching
from naiad.backends.base import ModelFiles, find_model_file
from naiad.daemon import gpus, model_config, repository, statistics
from naiad.daemon.errors import ConfigError, InvalidArgument, NaiadError, NotFound, Unavailable
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

    def versions_of(self, name: str) -> list[str]:
        return [str(v) for v in sorted(self.models[name].versions)]

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the models the control mode starts with; in poll mode, start watching."""
        if self.mode == "explicit":
            names = self.startup_models
            if "*" in names:
                names = repository.model_names(self.repository)
        else:
            names = repository.model_names(self.repository)
        if not self.repository.is_dir():
            log.error("model repository %s is not a folder; no models will load", self.repository)
        await asyncio.gather(*(self._load(name) for name in names))
        if self.mode == "poll":
            self._poller = asyncio.create_task(self._poll_forever())
        self.ready = True
        log.info("server ready: %d model(s) serving", sum(bool(e.versions) for e in self.models.values()))

    async def close(self, timeout: float | None = None) -> None:
        """Stop watching, then unload every model once its requests have finished: within `timeout`
        seconds, after which what is still running fails and the worker processes are killed."""
        self.ready = False
        if self._poller is not None:
            self._poller.cancel()
        await asyncio.gather(*(self._unload(name, timeout=timeout) for name in list(self.models)))

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
        reason = await self._load(name, config_raw, files)
        if reason is not None:
            raise InvalidArgument(f"failed to load model '{name}': {reason}")

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
                return self._failed(entry, [failure], reloading)
            old, old_dir = entry.versions, entry.files_dir
            entry.publish(loaded)
            entry.failed, entry.files_dir = failed, files_dir
            entry.state = READY if loaded else UNAVAILABLE
            entry.reason = "" if loaded else failure
            for version in sorted(loaded):
                log.info("model '%s' version %d is ready", name, version)
            await self._retire(old.values(), old_dir)
            return None if loaded else failure

    def _failed(self, entry: ModelEntry, problems: list[str], reloading: bool) -> str:
        reason = "; ".join(problems)
        for problem in problems:
            log.error("model '%s': %s", entry.name, problem)
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
        files = ModelFiles(name, version, prepared.folder.path, path, config)
        execution = config.parameters.get("execution") or backends.get(config.backend).default_execution
        started = time.monotonic()
        workers = await batching.create_workers(files, execution, gpus.count())
        stats = ModelStatistics(load_seconds=time.monotonic() - started)
        return ServedModel(name, version, config, batching.make_scheduler(files, execution, workers, stats),
                           stats)

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
                             *(self._load(name) for name in changed))

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
    backend = backends.get(config.backend)
    model_config.fill_defaults(config, name, "KIND_GPU" if gpus.count() and backend.uses_gpus() else "KIND_CPU")
    chosen = repository.select_versions(config.version_policy, list(folder.versions))
    if not chosen:
        found = ", ".join(str(v) for v in sorted(folder.versions)) or "none"
        raise ConfigError([f"{path}: no version folder to serve (found: {found}; the version policy "
                           f"chose none); put the model in a numbered folder such as {path / '1'}"])
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


def _problems(error: BaseException) -> list[str]:
    if isinstance(error, ConfigError):
        return error.problems
    if isinstance(error, NaiadError):
        return [error.message]
    return [f"{type(error).__name__}: {error}"]
