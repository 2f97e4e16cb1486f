"""Who the rate limit counts: the client's address through trusted proxies, one spelling
per address, IPv6 by /64, and no guessing when a hop is not an address."""

from __future__ import annotations

from dataclasses import replace

import pytest
from multidict import CIMultiDict

from mailhub.errors import InvalidRequest
from mailhub.store import keys
from mailhub.web.app import create_app
from mailhub.web.guard import SubmitGuard
from tests.helpers import MAIL_JSON, SUBMIT


@pytest.fixture
def behind_proxy(aiohttp_client, settings, redis):
    """A client of an app that trusts 127.0.0.1 (the test client) as its reverse proxy."""

    async def make(rate_limit: str):
        changes = dict(rate_limit=rate_limit, trusted_proxies=("127.0.0.1/32",))
        return await aiohttp_client(create_app(replace(settings, **changes)))

    return make


async def _post(client, *forwarded: str) -> int:
    headers = CIMultiDict(("X-Forwarded-For", line) for line in forwarded)
    response = await client.post(SUBMIT, json=MAIL_JSON, headers=headers)
    return response.status


async def test_every_forwarded_for_line_is_read(behind_proxy):
    # A proxy that adds its own header line after the client's: the client's line is a lie.
    client = await behind_proxy("2/hour")
    statuses = [await _post(client, f"10.0.0.{n}", "198.51.100.7") for n in range(4)]
    assert statuses == [200, 200, 429, 429]
    assert await _post(client, "198.51.100.8") == 200


async def test_spellings_of_one_ipv6_address_and_its_64_share_a_counter(behind_proxy, redis):
    client = await behind_proxy("3/hour")
    same_64 = ["2001:db8:1:2::1", "2001:DB8:1:2:0:0:0:1", "2001:db8:1:2:ffff:ffff:ffff:ffff"]
    assert [await _post(client, address) for address in same_64] == [200, 200, 200]
    assert await _post(client, "[2001:db8:1:2::abcd]:443") == 429
    assert await _post(client, "2001:db8:1:3::1") == 200
    counters = {key.rpartition(":")[0] for key in await redis.keys(keys.rate_limit(3600, "*"))}
    assert counters == {
        keys.rate_limit(3600, "2001:db8:1:2::/64"),
        keys.rate_limit(3600, "2001:db8:1:3::/64"),
    }


async def test_an_ipv4_mapped_address_is_the_ipv4_address(behind_proxy):
    client = await behind_proxy("2/hour")
    statuses = [
        await _post(client, address) for address in ("203.0.113.9", "::ffff:203.0.113.9", "::FFFF:cb00:7109")
    ]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize("forwarded", [["junk-1"], ["198.51.100.7, junk-2"], ["junk-3", ""], ["unknown"]])
async def test_a_hop_that_is_not_an_address_is_refused(behind_proxy, redis, forwarded):
    client = await behind_proxy("100/hour")
    headers = CIMultiDict(("X-Forwarded-For", line) for line in forwarded)
    response = await client.post(SUBMIT, json=MAIL_JSON, headers=headers)
    assert response.status == 400
    assert (await response.json())["error"]["code"] == "bad_request"
    assert await redis.xlen(keys.QUEUE) == 0
    assert await redis.keys(keys.rate_limit(3600, "*")) == []


async def test_hops_left_of_the_client_are_never_read(behind_proxy):
    client = await behind_proxy("1/hour")
    assert await _post(client, "junk, 198.51.100.7") == 200
    assert await _post(client, "junk-2, 198.51.100.7") == 429


def _guard(settings, redis, **changes) -> SubmitGuard:
    # No server needed: a view hands the guard the peer's address and the headers.
    return SubmitGuard(replace(settings, **changes), redis)


@pytest.mark.parametrize(
    ("remote", "address", "group"),
    [
        ("203.0.113.7", "203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7", "203.0.113.7"),
        ("2001:DB8:0:0:1::7", "2001:db8::1:0:0:7", "2001:db8::/64"),
        ("2001:db8::ffff", "2001:db8::ffff", "2001:db8::/64"),
        ("fe80::1%eth0", "fe80::1", "fe80::/64"),
        ("", "unknown", "unknown"),
        (None, "unknown", "unknown"),
    ],
)
async def test_the_remote_address_is_normalised_and_grouped(settings, redis, remote, address, group):
    client = _guard(settings, redis).client(remote, CIMultiDict({"X-Forwarded-For": "198.51.100.1"}))
    assert (client.address, client.group) == (address, group)


async def test_a_trusted_ipv4_mapped_peer_is_a_trusted_proxy(settings, redis):
    guard = _guard(settings, redis, trusted_proxies=("10.0.0.0/8",))
    client = guard.client("::ffff:10.1.2.3", CIMultiDict({"X-Forwarded-For": "198.51.100.1, 10.9.9.9"}))
    assert client.address == "198.51.100.1"
    with pytest.raises(InvalidRequest):
        guard.client("10.1.2.3", CIMultiDict({"X-Forwarded-For": "not-an-address"}))


async def test_forwarded_for_is_ignored_from_untrusted_peers(make_client):
    client = await make_client(rate_limit="1/hour")
    assert (await client.post(SUBMIT, json=MAIL_JSON, headers={"X-Forwarded-For": "1.1.1.1"})).status == 200
    spoofed = await client.post(SUBMIT, json=MAIL_JSON, headers={"X-Forwarded-For": "2.2.2.2"})
    assert spoofed.status == 429


async def test_forwarded_for_from_a_trusted_proxy_names_the_client(make_client):
    client = await make_client(rate_limit="1/hour", trusted_proxies=("127.0.0.1/32",))
    for address in ("1.1.1.1", "2.2.2.2"):
        response = await client.post(SUBMIT, json=MAIL_JSON, headers={"X-Forwarded-For": address})
        assert response.status == 200
    again = await client.post(SUBMIT, json=MAIL_JSON, headers={"X-Forwarded-For": "9.9.9.9, 1.1.1.1"})
    assert again.status == 429
