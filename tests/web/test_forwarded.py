"""Forwarded headers are believed only from ``web.trusted_proxies`` (issue 17, finding 14).

uvicorn trusts ``X-Forwarded-For`` from 127.0.0.1 by default, so a client on the same machine
(or any client, through a proxy that passes its header on) could name a new address with each
failed login and never be throttled. These tests run radtriage's own uvicorn server on a real
socket, where that default applied.
"""

from __future__ import annotations

import logging
import re

import httpx
import pytest

from tests.web.conftest import site_app, serve, with_web


def _failed_login(client: httpx.Client, forwarded_for: str | None) -> int:
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return client.post("/login", data={"password": "a wrong guess", "csrf_token": token},
                       headers=headers).status_code


def test_a_forged_forwarded_for_from_an_untrusted_peer_is_ignored(sqlite_site):
    with serve(site_app(sqlite_site)) as url, httpx.Client(base_url=url, timeout=30) as client:
        codes = [_failed_login(client, f"198.51.100.{n}") for n in range(11)]
    assert codes == [401] * 10 + [429]


@pytest.mark.parametrize("trusted", [["127.0.0.1"], ["127.0.0.0/8", "::1"]])
def test_a_trusted_proxy_names_the_client(sqlite_site, caplog, trusted):
    site = with_web(sqlite_site, trusted_proxies=trusted)
    caplog.set_level(logging.WARNING, logger="web.app")
    with serve(site_app(site)) as url, httpx.Client(base_url=url, timeout=30) as client:
        codes = [_failed_login(client, "203.0.113.7") for _ in range(11)]
        other = _failed_login(client, "203.0.113.8")
        chained = _failed_login(client, "192.0.2.99, 203.0.113.7")  # the proxy's own entry counts
    assert codes == [401] * 10 + [429]
    assert other == 401 and chained == 429
    assert "failed login from 203.0.113.7" in caplog.text and "127.0.0.1" not in caplog.text


def test_trusted_proxies_must_be_addresses_or_networks():
    from daemon.config import ConfigError, parse_config

    ok = parse_config({"web": {"trusted_proxies": ["10.0.0.5", "192.168.0.0/16", "::1"]}}, environ={})
    assert ok.web.trusted_proxies == ["10.0.0.5", "192.168.0.0/16", "::1"]
    assert parse_config({}, environ={}).web.trusted_proxies == []
    for bad in (["*"], ["proxy.example"], ["10.0.0.0/33"]):
        with pytest.raises(ConfigError) as info:
            parse_config({"web": {"trusted_proxies": bad}}, environ={})
        assert "web.trusted_proxies" in str(info.value)


def test_the_nginx_example_sets_the_forwarded_headers_itself():
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    examples = [ROOT / "deploy" / "nginx-radtriage.conf"]
    blocks = re.findall(r"```nginx\n(.*?)```", doc, re.S) + [p.read_text(encoding="utf-8") for p in examples]
    assert len(blocks) == 2 and blocks[0].strip() == blocks[1].strip()  # the doc shows the file
    conf = blocks[1]
    assert re.search(r"proxy_set_header\s+X-Forwarded-For\s+\$remote_addr;", conf)
    assert re.search(r"proxy_set_header\s+X-Forwarded-Proto\s+\$scheme;", conf)
    assert "proxy_add_x_forwarded_for" not in conf
    assert "trusted_proxies" in doc
