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
    max_request_bytes: int = 1 << 30          # one request's largest body or message
    exit_timeout_secs: float = 30.0           # how long in-flight requests may take at shutdown
    allow_client_shm: bool = False            # clients may register system and CUDA shared memory
    frontends: int = 1                        # processes that serve gRPC and HTTP (1: this process)
    log_verbose: int = 0
