"""Request bodies read by us and validated strictly: JSON ``0`` is not ``false``, ``"5"`` is not ``5``, in nested
models too (plugin options included). A body that is not acceptable JSON (see ``json_body``) is a 400 with its
reason; JSON that is not the model is a 422 naming each field.

The caller is authenticated before the body is parsed: ``strict_body``'s dependency depends on ``caller``, so an
unauthenticated request gets its 401 whatever its body holds (FastAPI caches ``caller`` per request: routes that
also depend on ``context`` authenticate once).

    @router.post("/things", openapi_extra=request_body(Thing))
    def create(body: Thing = Depends(strict_body(Thing))) -> ...

``request_body`` documents the model as the operation's JSON body; ``install_body_schemas`` (called by the app's
OpenAPI builder) adds the models and everything they reference to ``components.schemas``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from photonstream.api.auth.principal import Principal
from photonstream.api.deps import caller
from photonstream.api.json_body import parse_json_body

M = TypeVar("M", bound=BaseModel)
REF = "#/components/schemas/{model}"
_BODY_MODELS: dict[str, type[BaseModel]] = {}


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of an operation whose JSON body is ``model``."""
    _BODY_MODELS[model.__name__] = model
    schema = {"$ref": REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def install_body_schemas(openapi: dict[str, Any]) -> None:
    components = openapi.setdefault("components", {}).setdefault("schemas", {})
    for name, model in _BODY_MODELS.items():
        schema = model.model_json_schema(ref_template=REF, mode="validation")
        for def_name, definition in {**schema.pop("$defs", {}), name: schema}.items():
            if def_name in components and components[def_name] != definition:
                raise RuntimeError(f"OpenAPI component {def_name!r} is defined twice, differently")
            components[def_name] = definition


def strict_body(model: type[M], prepare: Callable[[Any], Any] | None = None) -> Callable[[Request], Awaitable[M]]:
    """A dependency returning the body as ``model`` once the caller is authenticated; ``prepare`` may complete the
    parsed JSON first."""

    async def dependency(request: Request, _authenticated: Principal = Depends(caller)) -> M:
        raw = await request.body()
        data = await run_in_threadpool(parse_json_body, raw)  # a large body takes a while to scan: not on the loop
        if prepare is not None:
            data = prepare(data)
        try:
            return model.model_validate_json(json.dumps(data), strict=True)
        except ValidationError as exc:
            errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
            raise RequestValidationError(errors) from None

    return dependency
