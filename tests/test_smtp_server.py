"""Self-test: the tests' SMTP server behaves as promised against aiosmtplib."""

from __future__ import annotations

import asyncio
import gc
import ssl
from collections.abc import Iterator
from email.message import EmailMessage

import aiosmtplib
import pytest

from tests.smtp_server import Fault, SmtpServer, TlsMaterial, make_tls_material

USER, PASSWORD = "mailhub", "secret"


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return make_tls_material(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server(tls_material: TlsMaterial) -> Iterator[SmtpServer]:
    with SmtpServer(tls_material, tls="starttls", user=USER, password=PASSWORD) as srv:
        yield srv


def _msg(subject: str = "hello") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@example.com"
    msg["To"] = "rcpt@example.com"
    msg["Subject"] = subject
    msg.set_content("body ünïcode\n")
    return msg


async def _send(srv: SmtpServer, password: str = PASSWORD, **kw: object) -> object:
    assert srv.ca_file is not None
    if srv.tls == "starttls":
        kw.setdefault("start_tls", True)
    elif srv.tls == "ssl":
        kw.setdefault("use_tls", True)
    return await aiosmtplib.send(
        _msg(),
        hostname=srv.host,
        port=srv.port,
        username=srv.user,
        password=password,
        tls_context=ssl.create_default_context(cafile=str(srv.ca_file)),
        timeout=10,
        **kw,
    )


async def test_starttls_auth_send_is_recorded(server: SmtpServer) -> None:
    await _send(server)
    (captured,) = await server.handler.wait_for_count(1)
    assert captured.mail_from == "sender@example.com"
    assert captured.rcpt_tos == ["rcpt@example.com"]
    assert captured.message["Subject"] == "hello"
    assert captured.message.get_content() == "body ünïcode\r\n"  # wire line endings
    assert b"Subject: hello" in captured.data
    assert (server.auth_successes, server.auth_failures) == (1, 0)


async def test_starttls_is_required(server: SmtpServer) -> None:
    with pytest.raises(aiosmtplib.SMTPException, match="AUTH extension is not supported"):
        await _send(server, start_tls=False)  # AUTH is not advertised before STARTTLS
    with pytest.raises(aiosmtplib.SMTPResponseException) as exc:
        await aiosmtplib.send(_msg(), hostname=server.host, port=server.port, start_tls=False)
    assert exc.value.code == 530


async def test_implicit_tls(tls_material: TlsMaterial) -> None:
    with SmtpServer(tls_material, tls="ssl", user=USER, password=PASSWORD) as srv:
        await _send(srv)
        await srv.handler.wait_for_count(1)
        assert srv.auth_successes == 1


async def test_plain_without_auth() -> None:
    with SmtpServer(tls="none", user=None) as srv:
        await aiosmtplib.send(_msg(), hostname=srv.host, port=srv.port, start_tls=False)
        (captured,) = await srv.handler.wait_for_count(1)
        assert (captured.mail_from, captured.rcpt_tos) == ("sender@example.com", ["rcpt@example.com"])
        assert captured.message["Subject"] == "hello"
        assert (srv.auth_successes, srv.auth_failures) == (0, 0)


async def test_starttls_not_offered(tls_material: TlsMaterial) -> None:
    with SmtpServer(tls_material, starttls_offered=False) as srv:
        with pytest.raises(aiosmtplib.SMTPException, match="STARTTLS"):
            await _send(srv)
        assert srv.handler.messages == []


async def test_auth_required(server: SmtpServer) -> None:
    with pytest.raises(aiosmtplib.SMTPResponseException) as exc:
        await aiosmtplib.send(
            _msg(),
            hostname=server.host,
            port=server.port,
            start_tls=True,
            tls_context=ssl.create_default_context(cafile=str(server.ca_file)),
        )
    assert exc.value.code == 530


async def test_wrong_password_then_flip(server: SmtpServer) -> None:
    server.password = "rotated"
    with pytest.raises(aiosmtplib.SMTPAuthenticationError) as exc:
        await _send(server)
    assert exc.value.code == 535
    assert server.auth_failures == 2  # aiosmtplib tried PLAIN, then LOGIN
    await _send(server, password="rotated")
    await server.handler.wait_for_count(1)
    assert server.auth_successes == 1


async def test_single_mechanism_counts_one_failure(tls_material: TlsMaterial) -> None:
    with SmtpServer(tls_material, user=USER, password="x", auth_mechanisms=("LOGIN",)) as srv:
        with pytest.raises(aiosmtplib.SMTPAuthenticationError):
            await _send(srv)
        assert srv.auth_failures == 1


async def test_rcpt_fault(server: SmtpServer) -> None:
    server.handler.faults.append(Fault.reply_rcpt("550 5.1.1 no such user"))
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as exc:
        await _send(server)
    (refused,) = exc.value.recipients
    assert (refused.code, refused.message) == (550, "5.1.1 no such user")
    await _send(server)  # fault consumed: next transaction is normal
    assert len(await server.handler.wait_for_count(1)) == 1


@pytest.mark.parametrize("line", ["451 4.7.1 try again later", "550 5.7.1 rejected"])
async def test_data_fault(server: SmtpServer, line: str) -> None:
    server.handler.faults.append(Fault.reply_data(line))
    with pytest.raises(aiosmtplib.SMTPDataError) as exc:
        await _send(server)
    assert f"{exc.value.code} {exc.value.message}" == line
    assert server.handler.messages == [] and server.handler.dropped == []


async def test_drop_after_data(server: SmtpServer) -> None:
    server.handler.faults.append(Fault.drop_after_data())
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await _send(server)
    (dropped,) = await server.handler.wait_for_count(1, dropped=True)
    assert dropped.message["Subject"] == "hello"
    assert server.handler.messages == []


async def test_drop_before_data(server: SmtpServer) -> None:
    server.handler.faults.append(Fault.drop_before_data())
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await _send(server)
    assert server.handler.messages == [] and server.handler.dropped == []
    await _send(server)
    await server.handler.wait_for_count(1)


async def test_drop_in_implicit_tls(tls_material: TlsMaterial) -> None:
    with SmtpServer(tls_material, tls="ssl") as srv:
        srv.handler.faults += [Fault.drop_before_data(), Fault.drop_after_data()]
        for _ in range(2):
            with pytest.raises(aiosmtplib.SMTPServerDisconnected):
                await _send(srv)
        await srv.handler.wait_for_count(1, dropped=True)


async def test_held_data_waits_for_the_release(server: SmtpServer) -> None:
    server.handler.faults.append(Fault.hold_data())
    sending = asyncio.create_task(_send(server))
    with pytest.raises(TimeoutError):
        await server.handler.wait_for_count(1, timeout=0.1)
    assert not sending.done()
    server.handler.release()
    await sending
    assert len(await server.handler.wait_for_count(1)) == 1


async def test_dropped_connections_are_closed(server: SmtpServer) -> None:
    client = aiosmtplib.SMTP(hostname=server.host, port=server.port, start_tls=False)
    await client.connect()
    assert server.open_sessions == 1
    server.drop_connections()
    assert server.open_sessions == 0
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await client.noop()
    client.close()


async def test_wait_for_count_times_out(server: SmtpServer) -> None:
    with pytest.raises(TimeoutError):
        await server.handler.wait_for_count(1, timeout=0.05)


async def test_stop_with_client_still_connected(tls_material: TlsMaterial) -> None:
    srv = SmtpServer(tls_material, tls="ssl")
    srv.start()
    client = aiosmtplib.SMTP(
        hostname=srv.host, port=srv.port, use_tls=True, tls_context=tls_material.client_context()
    )
    await client.connect()
    srv.stop()  # must close the server side socket: no ResourceWarning at GC
    gc.collect()
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await client.noop()
    client.close()
