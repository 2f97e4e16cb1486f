"""run.py as a user runs it: zero-config, split web and workers, bad settings."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import aiohttp
import pytest

from mailhub import cli
from mailhub.settings import Settings
from mailhub.store.embedded_valkey import is_running
from tests.helpers import MAIL_JSON, MAIL_TEXT, RESULT, SUBMIT, eventually, smtp_env
from tests.processes import ROOT, MailhubProcess, clean_env


async def _poll_result(session: aiohttp.ClientSession, base: str, task_id: str, timeout: float) -> dict:
    """The task's result over HTTP once it is no longer pending."""

    async def final() -> dict | None:
        async with session.get(base + RESULT, params={"task_id": task_id}) as r:
            document = await r.json()
        return document if document["status"] != "pending" else None

    return await eventually(final, timeout=timeout, interval=0.02, what=f"task {task_id}")


def _valkey_children(pid: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=,comm=", "--ppid", str(pid)], capture_output=True, text=True
    ).stdout
    return [int(line.split()[0]) for line in out.splitlines() if "valkey" in line]


async def test_zero_config_run_delivers_to_the_dev_inbox(tmp_path):
    with MailhubProcess(cwd=tmp_path, env={}) as server:
        valkey = _valkey_children(server.process.pid)
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url + SUBMIT, json=MAIL_JSON) as r:
                assert r.status == 200
                task_id = (await r.json())["task_id"]
            document = await _poll_result(session, server.url, task_id, timeout=2.0)
            assert document["status"] == "success"
            async with session.get(f"{server.url}/dev/inbox/messages") as r:
                [mail] = await r.json()
            async with session.get(f"{server.url}/dev/inbox") as r:
                page = await r.text()
        assert mail["body"].rstrip() == MAIL_TEXT
        assert mail["subject"] == "Hello"
        assert "Hello" in page
        assert "NOT delivered" in server.log
        assert server.stop() == 0
    assert (tmp_path / "mailhub-data" / "valkey").is_dir()
    assert valkey and not any(is_running(pid) for pid in valkey)


async def test_split_web_and_two_workers_share_one_redis(tmp_path, valkey, redis, smtp):
    env = smtp_env(smtp, REDIS_URL=valkey.url)
    with (
        MailhubProcess("worker", cwd=tmp_path, env=env, web=False),
        MailhubProcess("worker", cwd=tmp_path, env=env, web=False),
        MailhubProcess("web", cwd=tmp_path, env=env) as web,
    ):
        async with aiohttp.ClientSession() as session:
            task_ids = []
            for n in range(40):
                body = {**MAIL_JSON, "subject": f"split {n}"}
                async with session.post(web.url + SUBMIT, json=body) as r:
                    task_ids.append((await r.json())["task_id"])
            results = [await _poll_result(session, web.url, t, timeout=20) for t in task_ids]
    assert {r["status"] for r in results} == {"success"}
    mails = await smtp.handler.wait_for_count(40)
    assert sorted(m.message["Subject"] for m in mails) == sorted(f"split {n}" for n in range(40))


@pytest.mark.parametrize(
    ("env", "variable"), [({"SMTP_PORT": "smtp"}, "SMTP_PORT"), ({"MAX_ATTEMPTS": "-2"}, "MAX_ATTEMPTS")]
)
def test_bad_setting_stops_start_up_with_one_line(tmp_path, env, variable):
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py")],
        cwd=tmp_path,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert variable in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_split_processes_need_redis_url(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "worker"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "REDIS_URL" in done.stderr


async def test_sigterm_stops_promptly(tmp_path):
    server = MailhubProcess(cwd=tmp_path, env={}).wait_ready()
    assert server.stop(signal.SIGTERM, timeout=15) == 0


async def test_a_capture_mode_worker_closes_its_capture_server(valkey):
    async with cli.running_worker(Settings(redis_url=valkey.url)) as delivering:
        assert (delivering.smtp_host, delivering.smtp_tls) == ("127.0.0.1", "none")
        _, writer = await asyncio.open_connection(delivering.smtp_host, delivering.smtp_port)
        writer.close()
        await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(delivering.smtp_host, delivering.smtp_port)
