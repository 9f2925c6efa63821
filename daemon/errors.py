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
    # faults of a request's body as HTTP carries it (gRPC's own transport answers these itself)
    TOO_LARGE = ("RESOURCE_EXHAUSTED", 413)
    BODY_TIMEOUT = ("DEADLINE_EXCEEDED", 408)
    UNSUPPORTED_ENCODING = ("INVALID_ARGUMENT", 415)

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


class TooLarge(NaiadError):
    code = Code.TOO_LARGE


class BodyTimeout(NaiadError):
    code = Code.BODY_TIMEOUT


class UnsupportedEncoding(NaiadError):
    code = Code.UNSUPPORTED_ENCODING


class ConfigError(InvalidArgument):
    """A model configuration problem found at load: `problems` lists each one, located; the message
    joins them."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = list(problems)

    def __reduce__(self):
        # rebuilt from its problems when it crosses a process boundary (pickle)
        return type(self), (self.problems,)
