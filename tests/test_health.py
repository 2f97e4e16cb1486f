"""/healthz and /readyz: alive, and ready while Redis answers and sending is not paused."""

from __future__ import annotations

from mailhub.store import smtp_status


async def test_health_and_readiness(client, redis):
    assert (await (await client.get("/healthz")).json()) == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status == 200
    await smtp_status.record(redis, "w1", paused=True, reason="SMTP login refused: 535")
    paused = await client.get("/readyz")
    assert paused.status == 503
    # Public: what is wrong, not the SMTP reply (that is in the log and behind METRICS_TOKEN).
    assert (await paused.json())["reason"] == "SMTP sending is paused"
    assert "535" not in await paused.text()
    await smtp_status.record(redis, "w1", paused=False)
    assert (await client.get("/readyz")).status == 200
