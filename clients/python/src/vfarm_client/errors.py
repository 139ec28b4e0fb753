"""The one exception of the vfarm client."""

from __future__ import annotations

from typing import Optional

__all__ = ["VfarmError"]


class VfarmError(Exception):
    """A request that did not succeed.

    `status` is the HTTP status (0 when no HTTP answer came: connection refused, TLS
    failure, timeout, bad arguments to the client); `code` the server's stable error code
    (`unauthenticated`, `instance_not_found`, `invalid_request`, `quota_exceeded` …);
    `message` the explanation; `field` the offending input field, if any.
    """

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None):
        super().__init__(status, code, message, field)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def __str__(self) -> str:
        where = f" (field `{self.field}`)" if self.field else ""
        status = f"HTTP {self.status} " if self.status else ""
        return f"{status}{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return (
            f"VfarmError(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, field={self.field!r})"
        )
