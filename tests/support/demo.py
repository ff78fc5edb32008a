"""``make demo``: a real Synapse, a real OIDC issuer and the bridge, and two logins.

Everything listens on 127.0.0.1. The demo user logs in at the issuer with an
authorization-code + PKCE flow (as Element X would), then calls ``whoami``
through the bridge. Then a classic client's login, through the bridge's login
layer: SSO through the issuer, the bridge's confirmation page, ``m.login.token``
(as classic Element Web would), and ``whoami`` with the token it got. With
``--once`` it stops there; otherwise it keeps the stack running for a Matrix
client until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import yaml

from tests.support.issuer import TestIssuer, obtain_token, start_issuer
from tests.support.net import free_port, wait_http
from tests.support.sso import HttpBrowser, login_section, register_login_client
from tests.support.stack import (
    SERVER_NAME,
    new_appservice,
    served_bridge_document,
    write_registration,
)
from tests.support.synapse import start_synapse

ROOT = Path(__file__).resolve().parents[2]
DEMO_DIR = ROOT / ".demo"


V3 = "_matrix/client/v3"
# Where the classic client's SSO login lands (the demo reads the loginToken off the
# redirect and never follows it).
CLIENT_URL = "http://127.0.0.1:9/client"


async def whoami(http: aiohttp.ClientSession, bridge_url: str, token: str) -> dict[str, object]:
    async with http.get(
        f"{bridge_url}{V3}/account/whoami", headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        body: dict[str, object] = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"whoami through the bridge failed: {resp.status} {body}")
        return body


async def login_and_whoami(issuer_url: str, bridge_url: str) -> dict[str, object]:
    """An OAuth-native client's login, at the issuer."""
    async with aiohttp.ClientSession() as http:
        tokens = await obtain_token(http, issuer_url, username="demo", device_id="DEMODEVICE")
        return await whoami(http, bridge_url, tokens.access_token)


async def legacy_login_and_whoami(bridge_url: str) -> dict[str, object]:
    """A classic client's login, through the bridge: SSO, then ``m.login.token``."""
    browser = HttpBrowser()
    try:
        login_token, _ = await browser.sso_login(bridge_url, "classic", CLIENT_URL)
    finally:
        await browser.close()
    async with aiohttp.ClientSession() as http:
        login = {"type": "m.login.token", "token": login_token}
        async with http.post(f"{bridge_url}{V3}/login", json=login) as resp:
            answer = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"m.login.token through the bridge failed: {answer}")
        return await whoami(http, bridge_url, str(answer["access_token"]))


async def register_bridge_at(issuer: TestIssuer, bridge_url: str) -> dict[str, object]:
    """The bridge's own client at the issuer (for its login layer): its login section."""
    async with aiohttp.ClientSession() as http:
        client = await register_login_client(http, issuer, bridge_url)
    return login_section(client)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--once", action="store_true", help="stop after the login")
    args = parser.parse_args()

    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    (DEMO_DIR / "synapse").mkdir(parents=True)
    appservice = new_appservice()
    # The default strategy: each session gets a real homeserver device and token.
    registration = write_registration(
        appservice, DEMO_DIR / "registration.yaml", strategy="device_login"
    )

    with contextlib.ExitStack() as stack:  # whatever started is stopped, however it ends
        print("starting the OIDC issuer (oidc-provider) ...", flush=True)
        issuer = start_issuer()
        stack.callback(issuer.stop)
        print("starting Synapse ...", flush=True)
        synapse = start_synapse(
            workdir=DEMO_DIR / "synapse",
            registration_files=[registration],
            server_name=SERVER_NAME,
        )
        stack.callback(synapse.stop)
        bridge_port = free_port()
        bridge_url = f"http://127.0.0.1:{bridge_port}/"
        document = served_bridge_document(
            issuer=issuer,
            homeserver_url=synapse.base_url,
            appservice=appservice,
            port=bridge_port,
            strategy="device_login",
            store_path=DEMO_DIR / "bridge.db",
        )
        document["login"] = asyncio.run(register_bridge_at(issuer, bridge_url))
        config_path = DEMO_DIR / "bridge.yaml"
        config_path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        print("starting the bridge ...", flush=True)
        bridge = subprocess.Popen(
            [sys.executable, "-m", "bridge", "serve", "-c", str(config_path)],
            stdout=(DEMO_DIR / "bridge.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        stack.callback(bridge.wait, timeout=15)
        stack.callback(bridge.terminate)
        wait_http(bridge_url + ".well-known/matrix/client", is_alive=lambda: bridge.poll() is None)
        native = asyncio.run(login_and_whoami(issuer.url, bridge_url))
        print("\nlogged in as 'demo' through the issuer; whoami through the bridge says:")
        print("  " + json.dumps(native))
        classic = asyncio.run(legacy_login_and_whoami(bridge_url))
        print("\nlogged in as 'classic' by SSO and m.login.token at the bridge; whoami says:")
        print("  " + json.dumps(classic))
        print(f"\nhomeserver URL for a Matrix client: {bridge_url}")
        print(f"issuer (any username, any password): {issuer.url}")
        print(f"logs and config: {DEMO_DIR}")
        if not args.once:
            print("\nrunning; press Ctrl-C to stop", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.signal(signal.SIGTERM, signal.default_int_handler)
                while True:
                    time.sleep(3600)
    return 0


if __name__ == "__main__":
    sys.exit(main())
