"""Errors in the OpenAI shape: `{"error": {"message", "type", "param", "code"}}`.

Status mapping (what each failure answers):

| status | type | when |
|---|---|---|
| 400 | invalid_request_error | malformed JSON (`code` invalid_json; also NaN / Infinity, lone surrogates, nesting past 200 levels), a body that is not an object, wrong types, unknown or unsupported fields (the field is `param`), out-of-range values (integers past int32 or the engine's limits, non-finite floats, too many or too long stop strings, tools, prompts or names), a tool whose parameters are not an object schema, empty `messages`, `max_tokens` past the context (`code` context_length_exceeded) |
| 401 | authentication_error | missing or wrong `Authorization: Bearer KEY` (`code` invalid_api_key) |
| 404 | not_found_error | unknown model (`code` model_not_found) or route |
| 405 | invalid_request_error | wrong HTTP method |
| 413 | invalid_request_error | the prompt alone does not fit the context or the KV cache, or has more characters than the context could hold whatever they tokenize to (checked before tokenizing) (`code` context_length_exceeded); a body over 16 MiB (`code` body_too_large) |
| 422 | invalid_request_error | a well-formed conversation the server cannot use: bad role order, a role the chat template rejects, `tool_choice` naming an unknown tool; a `json_object` reply that does not parse (`code` invalid_json_output) |
| 429 | rate_limit_error | the engine queue or the server's concurrency limit is full; `Retry-After` says when to retry |
| 503 | service_unavailable | the server is shutting down, or shutdown cut the request (`code` shutting_down; a stream gets this as an error event before `[DONE]`), or its engine stopped (`code` engine_dead) |
| 500 | internal_error | the engine's step failed for this request alone (`code` request_failed), or anything else; the engine keeps serving the others |
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error answered to the client as `status` with the OpenAI error body."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _loc(loc: tuple) -> str:
    return ".".join(str(x) for x in loc)


def from_validation_error(e: ValidationError) -> APIError:
    """A 400 naming the first offending field (all problems are listed in the message)."""
    errors = e.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return APIError(400, f"the request body is not valid JSON: {errors[0]['msg']}", code="invalid_json")
    if errors and not errors[0]["loc"] and errors[0]["type"] in ("model_type", "model_attributes_type"):
        return APIError(400, "the request body must be a JSON object", code="invalid_body")
    # a union reports every branch; keep the first problem per location
    seen, parts = set(), []
    for err in errors:
        loc = tuple(x for x in err["loc"] if not _is_union_tag(x))
        where = _loc(loc) or "body"
        if where in seen:
            continue
        seen.add(where)
        if err["type"] == "extra_forbidden":
            parts.append(f"unsupported field '{where}'")
        elif err["type"] == "none_required":
            parts.append(f"'{where}' is not supported by this server (only null is accepted)")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(msg if where == "body" else f"'{where}': {msg}")
    first = errors[0] if errors else {"loc": (), "type": ""}
    param = _loc(tuple(x for x in first["loc"] if not _is_union_tag(x))) or None
    code = "unsupported_field" if first["type"] in ("extra_forbidden", "none_required") else "invalid_value"
    return APIError(400, "; ".join(parts) or str(e), param=param, code=code)


def _is_union_tag(x: Any) -> bool:
    """Pydantic puts the tried union member (`str`, `list[int]`, `function-after[...]`, `TextPart`) into the
    location; field names are lower case and carry no brackets."""
    return isinstance(x, str) and (x in ("str", "int", "float", "bool", "none", "dict") or "[" in x or x[:1].isupper())


def install_handlers(app) -> None:
    """Answers APIError, routing errors and unexpected exceptions in the OpenAI shape."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    async def api_error(request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    async def http_error(request, exc: StarletteHTTPException):
        kind = {401: "authentication_error", 404: "not_found_error"}.get(exc.status_code, "invalid_request_error")
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def unexpected(request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "internal_error"),
                            status_code=500)

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
