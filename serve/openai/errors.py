"""OpenAI error bodies and status codes.

Body: `{"error": {"message", "type", "param", "code"}}` (openai-python reads `.param`,
`.code`, `.type` from it). Status codes decide what clients do: openai-python retries
408/409/429/5xx and never 400/401/404 (openai-gateway.md §4), so a request that can
never succeed must not be answered with a 5xx.
"""
from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from nemo_trt.serve.openai.protocol import ErrorInfo, ErrorResponse


class OpenAIError(Exception):
    """Raised anywhere in the gateway; the app turns it into the JSON body and status."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",  # noqa: A002
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=ErrorInfo(message=self.message, type=self.type, param=self.param,
                                             code=self.code)).model_dump()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, "invalid_request_error", param, code)


def unsupported(param: str, what: str) -> OpenAIError:
    return OpenAIError(400, f"{param}: {what}", "invalid_request_error", param, "unsupported_parameter")


def model_not_found(model: str, served: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model}` does not exist; this server serves `{served}` (GET /v1/models)",
                       "invalid_request_error", "model", "model_not_found")


def unauthorized() -> OpenAIError:
    return OpenAIError(401, "Incorrect or missing API key: send `Authorization: Bearer <key>`",
                       "invalid_request_error", None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})


def too_many_requests(limit: int) -> OpenAIError:
    return OpenAIError(429, f"The server is at its limit of {limit} requests in flight; retry shortly",
                       "rate_limit_error", None, "rate_limit_exceeded", {"Retry-After": "1"})


def unavailable(message: str) -> OpenAIError:
    return OpenAIError(503, message, "service_unavailable", None, "service_unavailable", {"Retry-After": "2"})


def internal(message: str) -> OpenAIError:
    return OpenAIError(500, message, "server_error", None, "internal_error")


def _loc(loc: tuple[Any, ...]) -> str:
    """pydantic location -> `messages[0].role` (union member names dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and (part[:1].isupper() or part in {"str", "list[str]", "list[int]", "int",
                                                                        "list[list[int]]", "literal[...]"}
                                        or part.startswith(("literal[", "list[", "function-"))):
            continue  # a union branch (e.g. `NamedToolChoice`, `str`), not a field
        else:
            out += ("." if out else "") + str(part)
    return out


def from_validation(errors: list[dict[str, Any]]) -> OpenAIError:
    """pydantic errors (FastAPI's RequestValidationError or ValidationError) -> 400 naming the field."""
    errors = [e for e in errors if e.get("loc", ())[:1] != ("query",)] or errors
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    if loc[:1] == ("body",):
        loc = loc[1:]
    if first.get("type") == "json_invalid":
        return bad_request(f"The request body is not valid JSON: {first.get('msg')}", None, "invalid_json")
    if not loc and first.get("type") in ("missing", "model_attributes_type", "dict_type"):
        return bad_request("The request body must be a JSON object", None)
    param = _loc(loc) or None
    # one line per distinct field, first field named in `param`
    seen: dict[str, str] = {}
    for error in errors:
        where = _loc(tuple(error.get("loc", ()))[1:] if tuple(error.get("loc", ()))[:1] == ("body",)
                     else tuple(error.get("loc", ())))
        seen.setdefault(where, f"{where or 'body'}: {error.get('msg')}")
    return bad_request("; ".join(list(seen.values())[:3]), param)


def from_pydantic(exc: ValidationError) -> OpenAIError:
    return from_validation(exc.errors())  # type: ignore[arg-type]
