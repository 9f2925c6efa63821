"""The server's settings, with Triton's flag names and defaults where they make sense."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Settings:
    model_repository: Path = Path("model_repository")
    model_control_mode: str = "none"          # none | poll | explicit
    load_model: list[str] = field(default_factory=list)
    repository_poll_secs: float = 15.0
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    metrics_address: str = "0.0.0.0"
    metrics_port: int = 8002
    allow_http: bool = True
    allow_grpc: bool = True
    allow_metrics: bool = True
    max_request_bytes: int = 1 << 30          # gRPC: one request's largest message
    # HTTP: what one request may cost (Triton's --http-max-input-size and its 64 MiB default)
    http_max_input_size: int = 64 << 20       # a body's bytes, as sent and once decompressed
    http_max_json_elements: int = 1 << 22     # values in a request's JSON
    http_idle_timeout_secs: float = 75.0      # a connection with no request in progress is closed
    http_body_timeout_secs: float = 60.0      # for a request's body to arrive, once its headers have
    exit_timeout_secs: float = 30.0           # how long in-flight requests may take at shutdown
    allow_client_shm: bool = False            # clients may register system and CUDA shared memory
    frontends: int = 1                        # processes that serve gRPC and HTTP (1: this process)
    busy_poll_us: int | None = None           # with frontends: polling before sleep (None: by cores)
    # ready only when every model that should serve does (Triton's --strict-readiness); false: once
    # the start's loads are done
    strict_readiness: bool = True
    log_verbose: int = 0                      # 1 or more: debug lines too
    log_format: str = "text"                  # text | json (one object per line)
    log_info: bool = True                     # Triton's --log-info, --log-warning, --log-error
    log_warning: bool = True
    log_error: bool = True
