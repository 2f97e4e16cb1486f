"""/metrics in Prometheus format: the counters move as mail is sent and fails."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import wait_for_result
from tests.smtp_server import Fault

SUBMIT = "/api/v1/email/received"
MAIL = {"to": "user@example.com", "subject": "Hello", "body": "Hi"}


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


async def test_counters_move_as_mail_is_sent_retried_and_fails(client, store, worker, smtp):
    before = await scrape(client)
    smtp.handler.faults.append(Fault.reply_data("451 4.7.1 later"))
    first = (await (await client.post(SUBMIT, json=MAIL)).json())["task_id"]
    assert (await wait_for_result(store, first))["status"] == "success"
    smtp.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    second = (await (await client.post(SUBMIT, json=MAIL)).json())["task_id"]
    assert (await wait_for_result(store, second))["status"] == "failed"
    assert (await client.post(SUBMIT, json={**MAIL, "to": "nope"})).status == 422
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
    assert value(after, "mailhub_queue_depth", where="queue") == 0
    assert ("mailhub_stream_subscribers", ()) in after
