"""The bridge's pages: escaped, framed by nobody, no script, never cached."""

from __future__ import annotations

from bridge.login.pages import confirmation_page, error_page

EVIL = '"><script>alert(1)</script>'


def test_confirmation_escapes_everything_and_names_the_host() -> None:
    page = confirmation_page(
        user_id=f"@a{EVIL}:example.test",
        client_url="https://client.example.test:8443/app?x=<b>",
        action="/_bridge/login/continue",
        form_secret=EVIL,
        server_name="example.test",
    )
    text = page.text or ""
    assert "<script>" not in text
    assert "&lt;script&gt;" in text
    assert "client.example.test:8443" in text
    assert 'action="/_bridge/login/continue"' in text
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "script-src" not in csp  # none at all: default-src 'none'
    assert "frame-ancestors 'none'" in csp
    assert "form-action 'self' https://client.example.test:8443" in csp
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["Referrer-Policy"] == "no-referrer"


def test_error_page() -> None:
    page = error_page(f"Bad {EVIL}", status=403)
    assert page.status == 403
    assert "<script>" not in (page.text or "")
    assert "form-action 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.content_type == "text/html"
