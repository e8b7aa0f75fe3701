"""The one error of the HTTP API: a status, the request field at fault, a stable code and a message.

It is a Starlette ``HTTPException`` so that FastAPI passes it through untouched when it is raised while the request
body is read (the body-size limit counts bytes there), and one exception handler turns every one into the same JSON
shape: ``{"detail": message, "field": name or null, "code": code}``.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException


class APIError(HTTPException):
    """A request the service refuses (4xx) or cannot answer now (503).

    Args:
        status: HTTP status code.
        field: The request field at fault (``image``, ``question``, ``image_key``, ``top_k``, ``body``,
            ``content-type``), or None.
        code: A stable machine-readable reason (``bad_image``, ``image_too_large``, ``empty_question``...).
        message: What is wrong and what to do, for a person.
        headers: Extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, field: str | None, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.field = field
        self.code = code


def error_body(message: str, field: str | None, code: str) -> dict[str, str | None]:
    """The JSON body of every error response."""
    return {"detail": message, "field": field, "code": code}
