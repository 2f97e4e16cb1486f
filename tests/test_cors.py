"""CORS: listed origins may call the API from a browser; others get no CORS headers."""

from __future__ import annotations

from tests.helpers import MAIL_JSON, SUBMIT


async def test_cors_preflight_for_an_allowed_origin(make_client):
    client = await make_client(cors_origins=("https://www.example.com",))
    response = await client.options(
        SUBMIT,
        headers={
            "Origin": "https://www.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == "https://www.example.com"
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Idempotency-Key" in response.headers["Access-Control-Allow-Headers"]
    post = await client.post(SUBMIT, json=MAIL_JSON, headers={"Origin": "https://www.example.com"})
    assert post.headers["Access-Control-Allow-Origin"] == "https://www.example.com"


async def test_cors_refuses_other_origins_by_default(make_client):
    client = await make_client()
    preflight = await client.options(
        SUBMIT, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 403
    assert "Access-Control-Allow-Origin" not in preflight.headers
    post = await client.post(SUBMIT, json=MAIL_JSON, headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in post.headers
