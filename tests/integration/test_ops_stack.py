"""Operations against the real stack (Synapse + oidc-provider): ``doctor`` on a working
set-up and on three broken ones, and no secret in any log line of a DEBUG run."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bridge.config import AppserviceConfig
from tests.integration.conftest import Login, Serve, auth, new_localpart
from tests.support.issuer import TestIssuer, start_issuer
from tests.support.net import free_port
from tests.support.serve import ROOT
from tests.support.stack import served_bridge_document
from tests.support.synapse import SynapseServer

WHOAMI = "/_matrix/client/v3/account/whoami"


def _document(
    issuer: TestIssuer, synapse: SynapseServer, appservice: AppserviceConfig, **extra: Any
) -> dict[str, Any]:
    port = free_port()
    document = served_bridge_document(
        issuer=issuer, homeserver_url=synapse.base_url, appservice=appservice, port=port
    )
    document["ops"] = {"port": free_port()}
    for key, value in extra.items():
        document[key] = {**document.get(key, {}), **value}
    return document


def doctor(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "doctor", "-c", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- doctor -----------------------------------------------------------------------------------


async def test_doctor_passes_on_the_real_stack(
    issuer: TestIssuer,
    synapse: SynapseServer,
    appservice: AppserviceConfig,
    serve: Serve,
) -> None:
    served = await asyncio.to_thread(serve, _document(issuer, synapse, appservice))
    result = await asyncio.to_thread(doctor, served.config)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for check in (
        "config",
        "issuer discovery",
        "introspection credentials",
        "homeserver",
        "appservice as_token",
        "identity strategy",
        "well-known at the public base URL",
        "auth_metadata at the public base URL",
    ):
        assert any(line.startswith(f"✓ {check}") for line in lines), (check, result.stdout)
    assert "- issuer JWKS: not used" in result.stdout
    assert "✗" not in result.stdout
    assert "identity strategy: masquerade works" in result.stdout


def _broken(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


async def test_doctor_names_a_wrong_client_secret(
    tmp_path: Path, issuer: TestIssuer, synapse: SynapseServer, appservice: AppserviceConfig
) -> None:
    document = _document(issuer, synapse, appservice)
    document["issuer"]["introspection"]["client_secret"] = "not-the-secret"
    result = await asyncio.to_thread(doctor, _broken(tmp_path, document))
    assert result.returncode == 1
    assert "✓ issuer discovery" in result.stdout
    assert (
        "✗ introspection credentials: the issuer refused the bridge's credentials "
        f"({issuer.bridge_client_id}): HTTP 401" in result.stdout
    ), result.stdout
    assert "hint: check issuer.introspection.client_id" in result.stdout
    assert "not-the-secret" not in result.stdout + result.stderr


async def test_doctor_names_a_wrong_as_token(
    tmp_path: Path, issuer: TestIssuer, synapse: SynapseServer, appservice: AppserviceConfig
) -> None:
    document = _document(issuer, synapse, appservice)
    document["appservice"]["as_token"] = "not-the-as-token"
    result = await asyncio.to_thread(doctor, _broken(tmp_path, document))
    assert result.returncode == 1
    assert "✓ homeserver" in result.stdout
    assert (
        "✗ appservice as_token: the homeserver does not accept the as_token "
        "(HTTP 401 M_UNKNOWN_TOKEN)" in result.stdout
    ), result.stdout
    assert "hint: the homeserver must load the bridge's registration" in result.stdout
    assert "- identity strategy: skipped" in result.stdout
    assert "not-the-as-token" not in result.stdout + result.stderr


async def test_doctor_names_a_stopped_issuer(
    tmp_path: Path, synapse: SynapseServer, appservice: AppserviceConfig
) -> None:
    stopped = start_issuer()
    stopped.stop()
    document = _document(stopped, synapse, appservice)
    result = await asyncio.to_thread(doctor, _broken(tmp_path, document))
    assert result.returncode == 1
    assert f"✗ issuer discovery: the discovery document is unreachable at {stopped.url}" in (
        result.stdout
    ), result.stdout
    assert "hint: is the issuer running, and reachable from this host?" in result.stdout
    assert "- introspection credentials: skipped" in result.stdout
    assert "✓ homeserver" in result.stdout


async def test_doctor_on_a_bad_config_exits_11(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server_name: example.org\nhomeserver: {urll: x}\n", encoding="utf-8")
    result = await asyncio.to_thread(doctor, path)
    assert result.returncode == 11
    assert "✗ config" in result.stdout
    assert "homeserver.urll: is not a known setting (did you mean url?)" in result.stdout


# -- no secrets in the logs ------------------------------------------------------------------


async def test_no_secret_in_any_log_line_of_a_debug_run(
    issuer: TestIssuer,
    synapse: SynapseServer,
    appservice: AppserviceConfig,
    login: Login,
    http: aiohttp.ClientSession,
    serve: Serve,
) -> None:
    """issuer.kind: mas, so MAS's shared secret is used both ways (introspection, and
    MAS's provisioning calls); tokens in headers and query strings, good and bad."""
    document = _document(
        issuer,
        synapse,
        appservice,
        logging={"level": "DEBUG", "access_log_user_id": True},
    )
    document["issuer"]["kind"] = "mas"
    document["issuer"]["introspection"] = {
        "auth": "mas_shared_secret",
        "client_secret": issuer.mas_shared_secret,
    }
    served = await asyncio.to_thread(serve, document)

    localpart = new_localpart("alice")
    token = await login(localpart, "DEVICEALICE1")
    mas = auth(issuer.mas_shared_secret)
    async with http.post(
        served.base + "/_synapse/mas/provision_user", json={"localpart": localpart}, headers=mas
    ) as resp:
        assert resp.status == 201, await resp.text()
    async with http.post(
        served.base + "/_synapse/mas/upsert_device",
        json={"localpart": localpart, "device_id": "DEVICEALICE1"},
        headers=mas,
    ) as resp:
        assert resp.status in (200, 201), await resp.text()
    async with http.get(served.base + WHOAMI, headers=auth(token)) as resp:
        assert resp.status == 200, await resp.text()
    async with http.get(served.base + WHOAMI, params={"access_token": token}) as resp:
        assert resp.status == 200
    async with http.get(served.base + WHOAMI, headers=auth(token[::-1])) as resp:
        assert resp.status == 401
    async with http.get(
        served.base + "/_synapse/mas/query_user",
        params={"localpart": localpart, "access_token": issuer.mas_shared_secret},
        headers=auth(issuer.mas_shared_secret[::-1]),
    ) as resp:
        assert resp.status == 403
    async with http.get(served.ops + "/metrics") as resp:
        assert resp.status == 200
    served.process.send_signal(signal.SIGHUP)
    await asyncio.sleep(1)
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(served.process.wait, 30) == 0

    logged = served.log()
    assert " DEBUG " in logged  # it ran at DEBUG
    assert f"GET {WHOAMI} 200" in logged
    assert "POST /_synapse/mas/upsert_device" in logged
    for secret in (
        token,
        token[::-1],
        appservice.as_token,
        appservice.hs_token,
        issuer.mas_shared_secret,
        issuer.mas_shared_secret[::-1],
        issuer.bridge_client_secret,
    ):
        assert secret not in logged
