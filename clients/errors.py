"""The one exception the client raises."""
from __future__ import annotations

# HTTP statuses as gRPC status names, so that code means the same whatever the protocol
_HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 409: "ALREADY_EXISTS",
               413: "RESOURCE_EXHAUSTED", 415: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
               500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE",
               504: "DEADLINE_EXCEEDED"}


class ClientError(Exception):
    """A call failed. `code` is the gRPC status name (an HTTP status is translated: 404 is NOT_FOUND,
    503 UNAVAILABLE, ...); `message` is the server's text; `http_status` the HTTP status, if any."""

    def __init__(self, code: str, message: str, http_status: int | None = None):
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message
        self.http_status = http_status

    @classmethod
    def from_http(cls, status: int, message: str) -> ClientError:
        return cls(_HTTP_CODES.get(status, "UNKNOWN"), message, status)

    def __reduce__(self):
        return type(self), (self.code, self.message, self.http_status)
