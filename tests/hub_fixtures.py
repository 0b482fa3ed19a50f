"""Pytest fixtures pointing huggingface_hub (and timm's hub helpers) at a local ``HubServer``.

Usage in a test module (tests/ is on sys.path under pytest's default rootdir import mode)::

    from hub_fixtures import hub_endpoint, hub_server, set_hub_offline  # noqa: F401

huggingface_hub freezes most settings at import time (``constants.ENDPOINT``, ``HF_HUB_CACHE``, ...), so
setting env vars alone is not enough once it is imported: ``use_hub_endpoint`` patches the env vars *and*
the module-level copies listed below, all through ``monkeypatch`` so that they are undone after the test.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hub_server import HubServer
from huggingface_hub import constants, hf_api
from huggingface_hub.utils import _http

TOKEN = "test"


def _setattr_if_loaded(monkeypatch: pytest.MonkeyPatch, module: str, name: str, value: object) -> None:
    """Patch an import-time copy ``module.name`` if that module is already imported (later imports copy the
    already-patched ``constants``)."""
    mod = sys.modules.get(module)
    if mod is not None and hasattr(mod, name):
        monkeypatch.setattr(mod, name, value)


def use_hub_endpoint(monkeypatch: pytest.MonkeyPatch, endpoint: str, hf_home: Path) -> None:
    """Point huggingface_hub at ``endpoint`` with an isolated ``hf_home`` cache, online, Xet disabled."""
    hf_home.mkdir(parents=True, exist_ok=True)
    hub_cache, host = hf_home / "hub", urlsplit(endpoint).hostname or "127.0.0.1"
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",  # huggingface_hub>=1.0 uploads through Xet whenever hf_xet is installed
        "HF_TOKEN": TOKEN,  # writes need a bearer token; also shadows any real token of the machine
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_OFFLINE", "HF_HUB_ENABLE_HF_TRANSFER", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    frozen = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {host},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_XET": True,
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HUGGINGFACE_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "CHECK_FOR_UPDATE_DONE_PATH": str(hf_home / ".check_for_update_done"),
        "CHECK_FOR_SKILL_UPDATE_DONE_PATH": str(hf_home / ".check_for_skill_update_done"),
    }
    for name, value in frozen.items():
        monkeypatch.setattr(constants, name, value, raising=False)
    # Copies taken at import time in other modules.
    monkeypatch.setattr(hf_api.api, "endpoint", endpoint)  # module-level `api` behind model_info(), create_repo()...
    monkeypatch.setattr(_http, "_HUB_ORIGINS", _http._HUB_ORIGINS | {_http._url_origin(endpoint)})
    _setattr_if_loaded(monkeypatch, "huggingface_hub.utils._cache_manager", "HF_HUB_CACHE", str(hub_cache))
    _setattr_if_loaded(monkeypatch, "huggingface_hub.utils._cache_assets", "HF_ASSETS_CACHE", str(hf_home / "assets"))
    _setattr_if_loaded(monkeypatch, "huggingface_hub.utils._git_credential", "ENDPOINT", endpoint)
    _setattr_if_loaded(monkeypatch, "huggingface_hub.cli.auth", "ENDPOINT", endpoint)
    # Building request headers fetches `{ENDPOINT}/api/agent-harnesses` once per process: pre-seed it as empty.
    empty_registry = {"standardEnvVars": [], "harnesses": {}}
    _setattr_if_loaded(monkeypatch, "huggingface_hub.utils._detect_agent", "_registry", empty_registry)
    _http.close_session()  # drop pooled connections (and proxy settings) of a previous client


def block_non_local_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any TCP connect() to a host other than 127.0.0.1 / ::1 / localhost raise (guards against leaks)."""
    original = socket.socket.connect

    def connect(sock: socket.socket, address: object) -> None:
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "::1", "localhost"):
            raise ConnectionRefusedError(f"hub_fixtures: blocked non-local connection to {address!r}")
        return original(sock, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)


def set_hub_offline(monkeypatch: pytest.MonkeyPatch, offline: bool = True) -> None:
    """Toggle huggingface_hub offline mode mid-test (env var + the import-time ``constants.HF_HUB_OFFLINE``)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture
def hub_server() -> Iterator[HubServer]:
    """A running ``HubServer`` (no client configuration; see ``hub_endpoint``)."""
    with HubServer() as server:
        yield server


@pytest.fixture
def hub_endpoint(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Point huggingface_hub at a running ``HubServer`` with a fresh cache under ``tmp_path``; yield its URL.

    Non-local TCP connections are blocked for the duration of the test.
    """
    use_hub_endpoint(monkeypatch, hub_server.url, tmp_path / "hf_home")
    block_non_local_connections(monkeypatch)
    yield hub_server.url
    _http.close_session()
