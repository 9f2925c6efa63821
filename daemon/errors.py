"""naiad's one exception family. Frontends map `code` to a gRPC status and an HTTP status, once."""
from __future__ import annotations

import enum


class Code(enum.Enum):
    """An error's kind: (gRPC status name, HTTP status)."""

    INVALID_ARGUMENT = ("INVALID_ARGUMENT", 400)
    NOT_FOUND = ("NOT_FOUND", 404)
    UNAVAILABLE = ("UNAVAILABLE", 503)
    UNIMPLEMENTED = ("UNIMPLEMENTED", 501)
    INTERNAL = ("INTERNAL", 500)

    @property
    def grpc_name(self) -> str:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]


class NaiadError(Exception):
    """An error a client sees: its message says what was wrong and what was expected."""

    code = Code.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(NaiadError):
    code = Code.INVALID_ARGUMENT


class NotFound(NaiadError):
    code = Code.NOT_FOUND


class Unavailable(NaiadError):
    code = Code.UNAVAILABLE


class Rejected(Unavailable):
    """The scheduler turned the request away: its queue was full, or it waited past its timeout."""


class Unimplemented(NaiadError):
    code = Code.UNIMPLEMENTED


class Internal(NaiadError):
    code = Code.INTERNAL


class ConfigError(Exception):
    """A model configuration problem found at load: `problems` lists each one, located."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems
