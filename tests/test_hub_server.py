"""End-to-end tests of the local Hub server over real HTTP with huggingface_hub and timm (no internet needed)."""

from __future__ import annotations

import hashlib
import http.client
import socket
from pathlib import Path

import pytest
import timm
import torch
from hub_fixtures import hub_endpoint, hub_server, set_hub_offline  # noqa: F401 (fixtures)
from hub_server import HubServer
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
from safetensors.torch import load_file, save_file

REPO = "tester/demo"


def _make_folder(root: Path) -> dict[str, bytes]:
    """A small text file, a 2 MiB binary (LFS) and a small safetensors file (regular upload)."""
    root.mkdir(parents=True)
    (root / "notes.txt").write_text("hello hub\n")
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (2 * 1024 * 1024,), generator=gen, dtype=torch.uint8)
    (root / "weights.bin").write_bytes(data.numpy().tobytes())
    save_file({"w": torch.randn(4, 3, generator=gen), "b": torch.zeros(3)}, str(root / "model.safetensors"))
    return {p.name: p.read_bytes() for p in root.iterdir()}


@pytest.fixture
def api(hub_endpoint: str) -> HfApi:  # noqa: F811
    return HfApi(endpoint=hub_endpoint, token="test")


def test_upload_folder_and_download(api: HfApi, hub_server: HubServer, tmp_path: Path) -> None:  # noqa: F811
    url = api.create_repo(REPO, repo_type="model", private=False, exist_ok=True)
    assert url.repo_id == REPO
    api.create_repo(REPO, exist_ok=True)  # 409 swallowed
    files = _make_folder(tmp_path / "folder")
    info = api.upload_folder(repo_id=REPO, folder_path=tmp_path / "folder", commit_message="add files")

    lfs_oid = hashlib.sha256(files["weights.bin"]).hexdigest()
    assert ("PUT", f"/__lfs__/{lfs_oid}") in hub_server.requests  # the 2 MiB file took the LFS path
    assert ("POST", f"/{REPO}.git/info/lfs/objects/verify") in hub_server.requests
    assert not any("xet" in path.lower() for _, path in hub_server.requests)
    stored = hub_server.repos[("model", REPO)].commits[info.oid].files
    assert stored["weights.bin"].lfs and not stored["notes.txt"].lfs and not stored["model.safetensors"].lfs

    for name, content in files.items():
        assert Path(hf_hub_download(REPO, name, revision="main")).read_bytes() == content
    weights = load_file(hf_hub_download(REPO, "model.safetensors"))
    assert torch.equal(weights["w"], load_file(tmp_path / "folder" / "model.safetensors")["w"])

    assert sorted(api.list_repo_files(REPO)) == sorted([".gitattributes", *files])
    assert api.file_exists(REPO, "notes.txt") and not api.file_exists(REPO, "nope.txt")
    assert api.repo_exists(REPO) and not api.repo_exists("tester/nope")
    model_info = api.model_info(REPO)
    assert model_info.sha == info.oid
    assert {s.rfilename for s in model_info.siblings or []} == {".gitattributes", *files}
    snapshot = Path(snapshot_download(REPO))
    assert all((snapshot / name).read_bytes() == content for name, content in files.items())


def test_missing_entry_and_repo(api: HfApi) -> None:
    api.create_repo(REPO)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "missing.txt")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("tester/does-not-exist", "notes.txt")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("tester/does-not-exist")
    with pytest.raises(ConnectionRefusedError, match="blocked non-local"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)  # hub_endpoint only lets 127.0.0.1 through


def test_offline_uses_cache(
    api: HfApi, hub_server: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path  # noqa: F811
) -> None:
    api.create_repo(REPO)
    api.upload_file(path_or_fileobj=b"cached", path_in_repo="a.txt", repo_id=REPO)
    online_path = hf_hub_download(REPO, "a.txt")
    set_hub_offline(monkeypatch, True)
    n_requests = len(hub_server.requests)
    assert hf_hub_download(REPO, "a.txt") == online_path
    assert Path(online_path).read_bytes() == b"cached"
    with pytest.raises(LocalEntryNotFoundError):
        hf_hub_download(REPO, "a.txt", cache_dir=tmp_path / "empty_cache")
    assert len(hub_server.requests) == n_requests  # nothing reached the server while offline
    set_hub_offline(monkeypatch, False)
    assert hf_hub_download(REPO, "a.txt", cache_dir=tmp_path / "empty_cache") != online_path


def test_second_commit_is_visible(api: HfApi) -> None:
    api.create_repo(REPO)
    first = api.upload_file(path_or_fileobj=b"v1", path_in_repo="data.txt", repo_id=REPO)
    big = bytes(range(256)) * 6000  # ~1.5 MiB => LFS
    second = api.upload_file(path_or_fileobj=b"v2", path_in_repo="data.txt", repo_id=REPO)
    api.upload_file(path_or_fileobj=big, path_in_repo="big.bin", repo_id=REPO)
    assert first.oid != second.oid
    assert Path(hf_hub_download(REPO, "data.txt")).read_bytes() == b"v2"
    assert Path(hf_hub_download(REPO, "data.txt", revision=first.oid)).read_bytes() == b"v1"
    assert Path(hf_hub_download(REPO, "big.bin")).read_bytes() == big
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, "big.bin", revision=second.oid)
    api.delete_file("data.txt", repo_id=REPO)
    assert not api.file_exists(REPO, "data.txt")


def test_timm_push_and_load(hub_endpoint: str, hub_server: HubServer) -> None:  # noqa: F811
    model = timm.create_model("test_resnet", num_classes=3).eval()
    timm.models.push_to_hf_hub(model, "tester/tiny-timm", safe_serialization=True)
    pushed = set(HfApi().list_repo_files("tester/tiny-timm"))
    assert {"config.json", "model.safetensors", "README.md"} <= pushed and "pytorch_model.bin" not in pushed
    head = hub_server.repos[("model", "tester/tiny-timm")].resolve("main")
    assert head.files["model.safetensors"].lfs  # ~1.5 MB of weights went through the LFS upload
    loaded = timm.create_model("hf-hub:tester/tiny-timm", pretrained=True).eval()
    x = torch.randn(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_server_lifecycle() -> None:
    with HubServer() as server:
        host_port = server.url.removeprefix("http://")
        conn = http.client.HTTPConnection(host_port, timeout=5)
        conn.request("GET", "/api/models/tester/none")  # keep-alive connection left open on purpose
        response = conn.getresponse()
        assert response.status == 404 and response.getheader("X-Error-Code") == "RepoNotFound"
        response.read()
    assert server._thread is None  # stop() joined everything despite the open keep-alive connection
    conn.close()
    with pytest.raises(OSError):
        http.client.HTTPConnection(host_port, timeout=5).request("GET", "/")
