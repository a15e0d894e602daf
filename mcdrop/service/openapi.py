"""The service's OpenAPI 3.0 document, generated from the shared schemas so it matches what is served."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

from mcdrop import __version__
from mcdrop.schemas import AcquireRequest, AcquireResponse, ErrorResponse, ModelsResponse, PredictRequest, PredictResponse
from mcdrop.serving.config import SETTINGS

__all__ = ["openapi_document"]

_ERRORS = {
    "400": "a field is invalid or does not fit the model (`field` names it); malformed JSON or .npy (`body`); a "
           "Host that is not served (`host`)",
    "401": "the API key is missing or wrong (`authorization`; only when MCDROP_API_KEY is set)",
    "403": "a browser Origin that may not call the API (`origin`)",
    "404": "an unknown model (`model`) or route",
    "408": "the body stalled, or was not complete within MCDROP_BODY_DEADLINE (`body`)",
    "413": "too many rows (`inputs`), too much work (`n_samples`/`max_samples`), or a body over the size limit (`body`)",
    "415": "a body that is neither application/json nor application/x-npy (`content-type`)",
    "422": "an input so far out of range that the model's output overflowed (`inputs`)",
    "503": "the server is busy (Retry-After) or starting",
    "504": "the request ran out of time and was cancelled",
}


def _nullable_30(node: Any) -> Any:
    """JSON Schema 2020 ``anyOf: [X, {type: null}]`` as OpenAPI 3.0 ``X`` + ``nullable: true``, recursively."""
    if isinstance(node, dict):
        node = {k: _nullable_30(v) for k, v in node.items()}
        options = node.get("anyOf")
        if isinstance(options, list) and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            node.pop("anyOf")
            node.update(rest[0] if len(rest) == 1 else {"anyOf": rest})
            node["nullable"] = True
        if node.get("const") is not None and "enum" not in node:
            node["enum"] = [node.pop("const")]
        return node
    if isinstance(node, list):
        return [_nullable_30(v) for v in node]
    return node


_PREDICT = (
    "A JSON body (application/json) carries every field, as PredictRequest describes.  An .npy body "
    "(application/x-npy) carries only the inputs; its other fields are query parameters, listed under that body's "
    "`x-query-parameters` (OpenAPI 3.0 cannot tie parameters to one body type, so they are not operation "
    "parameters): a JSON body with query parameters is refused (400), since two places for one field would "
    "leave it unclear which one counts.  One rule a schema cannot state: max_samples is at least n_samples (at "
    "least max(n_samples, 8) with tolerance); a request that breaks it gets 400 naming max_samples.")


@cache
def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0.3 description of every route, its bodies, and every error status."""
    _, defs = models_json_schema(
        [(PredictRequest, "validation"), (PredictResponse, "serialization"), (ErrorResponse, "serialization"),
         (ModelsResponse, "serialization"), (AcquireRequest, "validation"), (AcquireResponse, "serialization")],
        ref_template="#/components/schemas/{model}")
    schemas = _nullable_30(defs["$defs"])
    ref = lambda name: {"$ref": f"#/components/schemas/{name}"}  # noqa: E731
    errors = {code: {"description": text, "content": {"application/json": {"schema": ref("ErrorResponse")}}}
              for code, text in _ERRORS.items()}
    npy_params = [{"name": name, "in": "query", "required": False, "schema": prop, "description": prop.get("description", "")}
                  for name, prop in schemas["PredictRequest"]["properties"].items() if name != "inputs"]
    return {
        "openapi": "3.0.3",
        "info": {"title": "mcdrop", "version": __version__,
                 "description": "Monte Carlo dropout predictions with uncertainty. Settings: "
                                + "; ".join(f"{k}: {v}" for k, v in SETTINGS.items())},
        "paths": {
            "/predict": {"post": {
                "summary": "Predictions with uncertainty for a batch of inputs",
                "description": _PREDICT,
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": ref("PredictRequest")},
                    "application/x-npy": {"schema": {"type": "string", "format": "binary",
                                                     "description": "an .npy array (rows, features); the other fields "
                                                                    "as query parameters: " + ", ".join(
                                                                        p["name"] for p in npy_params)},
                                          "x-query-parameters": npy_params}}},
                "responses": {"200": {"description": "one prediction per input row", "content": {
                    "application/json": {"schema": ref("PredictResponse")},
                    "application/x-npy": {"schema": {"type": "string", "format": "binary",
                                                     "description": "with Accept: application/x-npy: a structured "
                                                                    ".npy array, one record per row, one field per "
                                                                    "column; metadata as JSON in X-MCDrop-Meta"}}}},
                              **{c: errors[c] for c in ("400", "401", "403", "404", "408", "413", "415", "422", "503", "504")}},
            }},
            "/acquire": {"post": {
                "summary": "The k rows of an unlabelled pool to label next (active learning)",
                "description": "BALD, BatchBALD, entropy, margin or random over MC passes with consistent masks (one "
                               "network per pass for the whole pool); the pool is bounded by the body size and by "
                               "rows x passes x the model's cost (MCDROP_MAX_COST) as /predict is.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("AcquireRequest")}}},
                "responses": {"200": {"description": "the chosen rows, best first, with their scores", "content": {
                    "application/json": {"schema": ref("AcquireResponse")}}},
                              **{c: errors[c] for c in ("400", "401", "403", "404", "408", "413", "415", "503")}},
            }},
            "/models": {"get": {"summary": "The served models' cards, the default model and the limits", "responses": {
                "200": {"description": "models and limits", "content": {"application/json": {"schema": ref("ModelsResponse")}}},
                "401": errors["401"]}}},
            "/livez": {"get": {"summary": "The process is alive", "responses": {"200": {"description": "alive"}}}},
            "/readyz": {"get": {"summary": "Ready for traffic (503 while starting or overloaded)",
                                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "metrics text"}}}},
        },
        "components": {"schemas": schemas},
    }
