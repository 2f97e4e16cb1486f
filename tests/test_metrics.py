"""/metrics in Prometheus format: the counters move as mail is sent and fails."""

from __future__ import annotations

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from mailhub.store.tasks import EmailRequest
from tests.helpers import MAIL_JSON, SUBMIT, enqueue, free_port, result_of, smtp_env, wait_for_status
from tests.processes import MailhubProcess
from tests.smtp_server import Fault


async def scrape(client) -> dict[tuple[str, tuple], float]:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counters_move_as_mail_is_sent_retried_and_fails(client, store, drain, smtp):
    before = await scrape(client)
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 later"))
    first = (await (await client.post(SUBMIT, json=MAIL_JSON)).json())["task_id"]
    await drain()
    assert (await result_of(store, first))["status"] == "success"
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    second = (await (await client.post(SUBMIT, json=MAIL_JSON)).json())["task_id"]
    await drain()
    assert (await result_of(store, second))["status"] == "failed"
    assert (await client.post(SUBMIT, json={**MAIL_JSON, "to": "nope"})).status == 422
    after = await scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("mailhub_submissions_total", outcome="accepted") == 2
    assert delta("mailhub_submissions_total", outcome="validation_failed") == 1
    assert delta("mailhub_mails_total", outcome="retried") == 1
    assert delta("mailhub_mails_total", outcome="failed") == 1
    # The first mail: 451, then sent; the second: 550 at once. Three attempts in all.
    assert delta("mailhub_mails_total", outcome="sent") == 1
    assert delta("mailhub_attempt_duration_seconds_count") == 3
    # By class, never by the reply's text.
    assert delta("mailhub_delivery_failures_total", **{"class": "transient"}) == 1
    assert delta("mailhub_delivery_failures_total", **{"class": "permanent"}) == 1
    assert value(after, "mailhub_queue_depth", where="queue") == 0
    assert ("mailhub_stream_subscribers", ()) in after


async def test_a_separate_worker_serves_its_own_metrics_on_metrics_port(tmp_path, valkey, store, smtp):
    port = free_port()
    env = smtp_env(smtp, REDIS_URL=valkey.url, METRICS_PORT=str(port))
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    task_ids = [
        await enqueue(store, EmailRequest(to="user@example.com", subject=f"m{n}", body="b")) for n in range(3)
    ]
    with MailhubProcess("worker", cwd=tmp_path, env=env, web=False):
        for task_id in task_ids:
            await wait_for_status(store, task_id)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
            samples = await scrape(client)
            assert (await client.get("/healthz")).status == 200
            assert (await client.get("/readyz")).status == 200
    assert value(samples, "mailhub_mails_total", outcome="sent") == 2
    assert value(samples, "mailhub_mails_total", outcome="failed") == 1
    assert value(samples, "mailhub_attempt_duration_seconds_count") == 3
    assert value(samples, "mailhub_smtp_connections", state="idle") >= 1
