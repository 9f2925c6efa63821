"""The model repository on disk: `<repo>/<model>/config.yaml` (or Triton's config.pbtxt) and numbered
version folders. Reads folders and files; knows nothing of loading."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format, text_format

from naiad.daemon.errors import ConfigError, InvalidArgument
from naiad.daemon.model_config import VersionPolicy
from naiad.proto import model_config_pb2

CONFIG_FILES = ("config.yaml", "config.pbtxt")


@dataclass
class ModelFolder:
    name: str
    path: Path
    config_path: Path | None    # None: no config file, everything comes from auto-complete
    versions: dict[int, Path]   # every version folder, whatever the policy


# a folder name's longest UTF-8 form on common file systems
MAX_NAME_BYTES = 255


def model_names(repository: Path) -> list[str]:
    """The folders of the repository that hold models: those whose names are model names (hidden and
    underscore folders are not)."""
    try:
        entries = sorted(os.scandir(repository), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [e.name for e in entries if e.is_dir() and name_problem(e.name) is None]


def name_problem(name: str) -> str | None:
    """Why `name` is not a model name, or None when it is. The one rule for every path that takes a
    model's name (the repository scan, and loads over HTTP and gRPC): a model name is one folder name of
    printable text, not hidden or underscored (such folders are not models)."""
    if not name:
        return "a model name cannot be empty"
    if name.startswith((".", "_")):
        return "names starting with '.' or '_' are not models (the repository skips such folders)"
    if "/" in name or "\\" in name:
        return "a model name is one folder name, without '/' or '\\'"
    if not name.isprintable():
        return ("a model name holds printable characters only: no newline, control character or lone "
                "surrogate")
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"a model name is at most {MAX_NAME_BYTES} bytes long (UTF-8)"
    return None


def check_name(name: str) -> None:
    """Raise InvalidArgument, with the reason, when `name` is not a model name."""
    problem = name_problem(name)
    if problem is not None:
        raise InvalidArgument(f"{name!r} is not a model name: {problem}")


def read_folder(path: Path) -> ModelFolder:
    config_paths = [path / f for f in CONFIG_FILES if (path / f).is_file()]
    if len(config_paths) > 1:
        raise ConfigError([f"{path}: holds both config.yaml and config.pbtxt; keep one"])
    versions = {}
    for entry in os.scandir(path):
        # Triton's rule: a version folder's name is a number without a leading zero
        if entry.is_dir() and entry.name.isdigit() and not entry.name.startswith("0"):
            versions[int(entry.name)] = Path(entry.path)
    return ModelFolder(path.name, path, config_paths[0] if config_paths else None, versions)


def read_config(folder: ModelFolder) -> Any:
    """The configuration as plain data (dicts and lists) from config.yaml or config.pbtxt."""
    path = folder.config_path
    if path is None:
        return {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"{path}: cannot be read: {e}"])
    if path.suffix == ".pbtxt":
        try:
            message = text_format.Parse(text, model_config_pb2.ModelConfig())
        except text_format.ParseError as e:
            raise ConfigError([f"{path}: {e}"])
        return json_format.MessageToDict(message, preserving_proto_field_name=True)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {' '.join(str(e).split())}"])


def parse_config_json(text: str) -> Any:
    """A configuration handed to the load API as JSON (Triton's `config` parameter)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgument(f"load parameter 'config': not valid JSON: {e}")


def select_versions(policy: VersionPolicy, available: list[int]) -> list[int]:
    """The versions a version policy serves, out of the version folders found."""
    if policy.all is not None:
        return sorted(available)
    if policy.specific is not None:
        return sorted(v for v in set(policy.specific.versions) if v in available)
    count = policy.latest.num_versions if policy.latest is not None else 1
    return sorted(available)[-count:]


def fingerprint(path: Path) -> tuple:
    """What poll mode compares to see a model change: every file's path, size and mtime."""
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except FileNotFoundError:
                continue
            found.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(found)


def write_request_files(target: Path, files: dict[str, bytes]) -> None:
    """Lay out the files a load request carries (`file:<version>/<name>` parameters) under target."""
    for relative, content in files.items():
        parts = Path(relative).parts
        if not parts or Path(relative).is_absolute() or ".." in parts:
            raise InvalidArgument(f"load parameter 'file:{relative}': expected a path inside the "
                                  f"model folder such as 'file:1/model.py'")
        destination = target.joinpath(*parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(content)
