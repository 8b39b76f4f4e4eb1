"""RFC 9457 problem details for every HTTP error, with a field-level list where it applies."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_JSON = "application/problem+json"


class Problem(Exception):
    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        type_: str = "about:blank",
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        self.type = type_


def problem_response(problem: Problem, instance: str | None = None) -> JSONResponse:
    body: dict[str, Any] = {"type": problem.type, "title": problem.title, "status": problem.status}
    if problem.detail:
        body["detail"] = problem.detail
    if instance:
        body["instance"] = instance
    if problem.errors is not None:
        body["errors"] = problem.errors
    return JSONResponse(body, status_code=problem.status, headers=problem.headers, media_type=PROBLEM_JSON)


def validation_errors(exc: ValidationError | RequestValidationError, prefix: str = "") -> list[dict[str, Any]]:
    """Field-level errors as JSON pointers; input values are never echoed (personal data)."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"] if p not in ("body",)]
        pointer = prefix + "".join(f"/{p}" for p in loc)
        out.append({"pointer": pointer or "/", "detail": err["msg"]})
    return out


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(
            Problem(422, "Unprocessable Content", "The request is not valid.", errors=validation_errors(exc)),
            request.url.path,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        return problem_response(
            Problem(exc.status_code, str(exc.detail), headers=headers), request.url.path
        )
