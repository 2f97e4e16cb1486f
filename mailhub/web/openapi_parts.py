"""What every OpenAPI path is written with: a JSON answer of a schema, and the error answer."""

from __future__ import annotations

from typing import Any


def json_answer(schema: str, description: str) -> dict[str, Any]:
    """An answer whose body is the named component schema, as JSON."""
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def error_answer(description: str) -> dict[str, Any]:
    """An answer with the `{"error": {...}}` body of every refusal."""
    return json_answer("Error", description)
