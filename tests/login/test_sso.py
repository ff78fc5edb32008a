"""The SSO flow's pure parts: redirectUrl checks and the loginToken in the URL."""

from __future__ import annotations

import pytest

from bridge.login.sso import SsoRefused, checked_redirect_url, with_login_token

ALLOW = ("https://app.example.test/web/", "element://")


@pytest.mark.parametrize(
    "url",
    [
        "https://anywhere.example.test/",
        "http://127.0.0.1:8080/client?x=1",
        "element://connect",
        "io.element.android:/sso",
        "https://[::1]:8443/",
    ],
)
def test_any_client_without_an_allow_list(url: str) -> None:
    assert checked_redirect_url(url, ()) == url


@pytest.mark.parametrize(
    "url",
    [
        None,
        "",
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        "data:text/html,hi",
        "vbscript:x",
        "file:///etc/passwd",
        "https://app.example.test/#frag",
        "https://a b.example.test/",
        "https://app.example.test/\nLocation: x",
        "https://exa mple/",
        "https://user@host\u202e/",
        "no-scheme",
        "/relative",
        "https://" + "a" * 3000,
        "https://host name/",
        "https://host;/",
    ],
)
def test_bad_urls_are_refused(url: str | None) -> None:
    with pytest.raises(SsoRefused) as info:
        checked_redirect_url(url, ())
    assert info.value.status == 400


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://app.example.test/web/", True),
        ("https://app.example.test/web", True),
        ("https://app.example.test/web/index.html?x=1", True),
        ("https://APP.example.test/web/", True),
        ("https://app.example.test/webx", False),
        ("https://app.example.test/", False),
        ("http://app.example.test/web/", False),
        ("https://app.example.test:444/web/", False),
        ("https://app.example.test.evil.test/web/", False),
        ("https://evil.test/https://app.example.test/web/", False),
        ("element://connect", True),
        ("elementx://connect", False),
    ],
)
def test_the_allow_list(url: str, allowed: bool) -> None:
    if allowed:
        assert checked_redirect_url(url, ALLOW) == url
    else:
        with pytest.raises(SsoRefused) as info:
            checked_redirect_url(url, ALLOW)
        assert info.value.status == 403


def test_the_login_token_joins_the_query() -> None:
    assert with_login_token("https://c.test/app", "t0k") == "https://c.test/app?loginToken=t0k"
    assert (
        with_login_token("https://c.test/app?a=1&b=", "t")
        == "https://c.test/app?a=1&b=&loginToken=t"
    )
    assert with_login_token("element://connect", "t") == "element://connect?loginToken=t"
