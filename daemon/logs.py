"""Logging for every naiad process: the server, its frontend processes and its worker processes.

One handler on standard error, writing text or JSON lines. What it writes follows Triton's settings
(`--log-verbose`, `--log-info`, `--log-warning`, `--log-error`, `--log-format`), which may change
while the server runs (Triton's logging extension: `/v2/logging` and the `LogSettings` RPC). The
server hands its current settings to the processes it starts through the environment
(NAIAD_LOG_SETTINGS), and to its running frontend processes over their channel.

Messages about one model start with "model '%s'" and take the model's name as their first argument
(or pass `extra={"model": name}`): JSON lines carry it as `model`."""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

from naiad.daemon.errors import InvalidArgument

FORMATS = ("text", "json")
# Triton's log_format values; naiad's text lines begin with the date and time in ISO 8601 form
TRITON_FORMATS = {"default": "text", "ISO8601": "text"}
ENVIRONMENT = "NAIAD_LOG_SETTINGS"
KEYS = ("log_file", "log_info", "log_warning", "log_error", "log_verbose_level", "log_format")
_MODEL_PREFIX = "model '%s'"


@dataclass(frozen=True)
class LogSettings:
    format: str = "text"     # text | json
    verbose: int = 0         # 0: info and above; 1 or more: debug lines too
    info: bool = True        # Triton's --log-info, --log-warning, --log-error: lines of that level
    warning: bool = True
    error: bool = True

    def to_triton(self) -> dict[str, Any]:
        """As Triton's logging extension reports them (naiad logs to standard error: no log file)."""
        return {"log_file": "", "log_info": self.info, "log_warning": self.warning, "log_error": self.error,
                "log_verbose_level": self.verbose, "log_format": self.format}

    def updated(self, changes: dict[str, Any]) -> LogSettings:
        """These settings with `changes` (Triton's keys) made; InvalidArgument names each bad one."""
        fields, problems = {}, []
        for key, value in changes.items():
            try:
                fields.update(_setting(key, value))
            except ValueError as e:
                problems.append(f"log setting '{key}': {e}")
        if problems:
            raise InvalidArgument("; ".join(problems))
        return dataclasses.replace(self, **fields)


def _setting(key: str, value: Any) -> dict[str, Any]:
    """One Triton setting as LogSettings fields; ValueError says what was expected."""
    if value is None:
        raise ValueError("no value given")
    if key in ("log_info", "log_warning", "log_error"):
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {json.dumps(value)[:40]}")
        return {key[len("log_"):]: value}
    if key == "log_verbose_level":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"expected a whole number >= 0, got {json.dumps(value)[:40]}")
        return {"verbose": value}
    if key == "log_format":
        chosen = TRITON_FORMATS.get(value, value) if isinstance(value, str) else None
        if chosen not in FORMATS:
            raise ValueError(f"expected one of {', '.join(FORMATS + tuple(TRITON_FORMATS))}, got "
                             f"{json.dumps(value)[:40]}")
        return {"format": chosen}
    if key == "log_file":
        if value != "":
            raise ValueError(f"naiad writes its log to standard error only (redirect it, or let the "
                             f"container runtime collect it); expected \"\", got {json.dumps(value)[:60]}")
        return {}
    raise ValueError(f"not a log setting; known: {', '.join(KEYS)}")


class _State:
    settings = LogSettings()
    process = ""    # "" for the server; "frontend", or "<model>/<instance>" for a worker process
    model = ""      # the model of a worker process
    handler: logging.Handler | None = None


def setup(settings: LogSettings, process: str = "", model: str = "") -> None:
    """Send this process's log records to standard error as `settings` say. `process` names a process
    other than the server in each line; `model` is the model every line of this process is about."""
    _State.process, _State.model = process, model
    root = logging.getLogger()
    if _State.handler is not None:
        root.removeHandler(_State.handler)
    _State.handler = logging.StreamHandler(sys.stderr)
    _State.handler.addFilter(_by_level)
    root.addHandler(_State.handler)
    logging.captureWarnings(True)   # Python's warnings become lines of the log too
    apply(settings)


def apply(settings: LogSettings) -> None:
    """Change the settings of this process's log at once, and of the processes it starts from now."""
    _State.settings = settings
    if _State.handler is not None:
        _State.handler.setFormatter(_JsonLines() if settings.format == "json" else _text_formatter())
    logging.getLogger().setLevel(logging.DEBUG if settings.verbose > 0 else logging.INFO)
    os.environ[ENVIRONMENT] = json.dumps(dataclasses.asdict(settings))


def current() -> LogSettings:
    return _State.settings


def inherited() -> LogSettings:
    """The settings the server handed to this process through the environment (defaults if none)."""
    try:
        return LogSettings(**json.loads(os.environ[ENVIRONMENT]))
    except (KeyError, TypeError, ValueError):
        return LogSettings()


def _by_level(record: logging.LogRecord) -> bool:
    """Triton's --log-info, --log-warning and --log-error; and each record's model, where known."""
    settings = _State.settings
    if record.levelno >= logging.ERROR:
        keep = settings.error
    elif record.levelno >= logging.WARNING:
        keep = settings.warning
    elif record.levelno >= logging.INFO:
        keep = settings.info
    else:
        keep = True
    if keep and not getattr(record, "model", ""):
        record.model = _model_of(record)
    return keep


def _model_of(record: logging.LogRecord) -> str:
    if _State.model:
        return _State.model
    if (isinstance(record.msg, str) and record.msg.startswith(_MODEL_PREFIX)
            and isinstance(record.args, tuple) and record.args):
        return str(record.args[0])
    return ""


def _text_formatter() -> logging.Formatter:
    where = f"{_State.process}[{os.getpid()}] " if _State.process else ""
    return logging.Formatter(f"%(asctime)s %(levelname).1s {where}%(name)s: %(message)s")


class _JsonLines(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, pid; model, process and
    exception where there are any."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": record.levelname, "logger": record.name, "message": record.getMessage(),
                "pid": record.process}
        if getattr(record, "model", ""):
            line["model"] = record.model
        if _State.process:
            line["process"] = _State.process
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)
