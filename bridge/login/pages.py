"""The two pages a person sees from the bridge: the confirmation and the error page.

Small, plain, static HTML: every value escaped (``html.escape``), no script
at all, no frames (``frame-ancestors 'none'``, ``X-Frame-Options: DENY``), a
``Content-Security-Policy`` that allows only the page's own inline style and
a form posting to the bridge itself (and, for the confirmation, the client's
origin, where the answer to the form redirects), never cached, no referrer.
"""

from __future__ import annotations

import html
from urllib.parse import urlsplit

from aiohttp import web

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
    "color:#1b1d22;line-height:1.5}h1{font-size:1.4rem}"
    ".host{font-weight:600;word-break:break-all}"
    "button{font-size:1rem;padding:.6rem 1.2rem;border-radius:.4rem;border:0;"
    "background:#0b6e4f;color:#fff;cursor:pointer}"
    ".note{color:#555;font-size:.9rem}"
)


def _security_headers(form_action: str = "'none'") -> dict[str, str]:
    return {
        "Content-Security-Policy": (
            "default-src 'none'; style-src 'unsafe-inline'; "
            f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
        ),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
    }


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def origin(url: str) -> str:
    """``scheme://host[:port]`` of an http(s) URL (already validated)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def confirmation_page(
    *, user_id: str, client_url: str, action: str, form_secret: str, server_name: str
) -> web.Response:
    """ "Continue to <client's host>?", as Synapse asks against phishing through
    ``redirectUrl``: the person sees where the login goes before it goes there."""
    host = urlsplit(client_url).netloc
    body = (
        "<main><h1>Continue to your client?</h1>"
        f"<p>You are signed in as <span class=host>{html.escape(user_id)}</span>.</p>"
        f"<p>Continuing gives <span class=host>{html.escape(host)}</span> access to your "
        f"account on {html.escape(server_name)}.</p>"
        '<p class="note">If you did not start this login from that site, close this page.</p>'
        f'<form method="post" action="{html.escape(action)}">'
        f'<input type="hidden" name="session" value="{html.escape(form_secret)}">'
        "<button type=submit>Continue</button></form></main>"
    )
    return web.Response(
        text=_page("Continue to your client?", body),
        content_type="text/html",
        headers=_security_headers(f"'self' {origin(client_url)}"),
    )


def error_page(message: str, *, status: int = 400) -> web.Response:
    """A failed login, in words: never a stack trace, never a secret."""
    body = (
        "<main><h1>The login did not work</h1>"
        f"<p>{html.escape(message)}</p>"
        '<p class="note">Go back to your Matrix client and start the login again.</p></main>'
    )
    return web.Response(
        status=status,
        text=_page("The login did not work", body),
        content_type="text/html",
        headers=_security_headers(),
    )
