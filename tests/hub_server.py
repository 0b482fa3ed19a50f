"""A tiny in-memory Hugging Face Hub-protocol server for offline tests (stdlib only, binds 127.0.0.1).

It speaks the subset of the Hub HTTP API that ``huggingface_hub`` 2.x uses to create repos, upload
(preupload -> LFS batch -> LFS PUT -> ndjson commit) and download (HEAD/GET ``resolve``, ``api/models``,
``tree``) files. Files >= ``lfs_threshold`` bytes are uploaded through the LFS path. Xet is never
advertised (no ``X-Xet-*`` headers, no ``xetHash``), but huggingface_hub 2.x uploads through Xet on its own
whenever ``hf_xet`` is installed: clients must set ``HF_HUB_DISABLE_XET=1`` (``hub_fixtures.py`` does), else
the upload fails with a 501 on ``/api/models/<repo>/xet-write-token/<rev>``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_THRESHOLD = 1024 * 1024
DEFAULT_USER = "test-user"
GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}
Response = tuple[int, dict[str, str], bytes]
STATIC_ANSWERS: dict[str, Any] = {
    "validate-yaml": {"errors": [], "warnings": []},
    "whoami-v2": {"type": "user", "name": DEFAULT_USER, "fullname": "Test User", "orgs": [], "auth": {}},
    "agent-harnesses": {"standardEnvVars": [], "harnesses": {}},
}


class HubError(Exception):
    """An HTTP error answered with ``X-Error-Code`` (e.g. RepoNotFound, RevisionNotFound, EntryNotFound)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass(frozen=True)
class Blob:
    """Content of one committed file plus its git / LFS identities."""

    data: bytes
    lfs: bool
    sha256: str
    oid: str  # git blob sha1 of the content (regular) or of the LFS pointer (LFS)

    @classmethod
    def make(cls, data: bytes, lfs: bool) -> Blob:
        sha256 = hashlib.sha256(data).hexdigest()
        stored = lfs_pointer(sha256, len(data)) if lfs else data
        return cls(data, lfs, sha256, hashlib.sha1(b"blob %d\0" % len(stored) + stored).hexdigest())

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    sha: str
    files: dict[str, Blob]
    message: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit:
        """Branch name or full commit sha -> commit, else 404 RevisionNotFound."""
        commit = self.commits.get(self.branches.get(revision, revision))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode()


def _file_entry(path: str, blob: Blob) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": len(blob.data), "path": path}
    if blob.lfs:
        pointer_size = len(lfs_pointer(blob.sha256, len(blob.data)))
        entry["lfs"] = {"oid": blob.sha256, "size": len(blob.data), "pointerSize": pointer_size}
    return entry


def _dir_entry(path: str) -> dict[str, Any]:
    return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}


_REPO = r"(?P<repo>[^/]+/[^/]+|[^/]+)"
_API = rf"/api/(?P<kind>models|datasets|spaces)/{_REPO}"
_GIT = rf"/(?:(?P<kind>datasets|spaces)/)?{_REPO}"
ROUTES: list[tuple[str, str, str]] = [  # (methods, path regex, HubServer method suffix); first match wins
    ("POST", r"/api/repos/create", "create_repo"),
    ("DELETE", r"/api/repos/delete", "delete_repo"),
    ("GET POST", r"/api/(?P<name>validate-yaml|whoami-v2|agent-harnesses)", "static"),
    ("GET", rf"{_API}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("GET", rf"{_API}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
    ("POST", rf"{_API}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"{_API}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"{_GIT}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("POST", rf"{_GIT}\.git/info/lfs/objects/verify", "lfs_verify"),
    ("PUT", r"/__lfs__/(?P<oid>[0-9a-f]{64})", "lfs_put"),
    ("GET HEAD", rf"{_GIT}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]
_COMPILED = [(methods.split(), re.compile(rx), name) for methods, rx, name in ROUTES]


class HubServer:
    """In-memory Hub: ``with HubServer() as hub: ...`` or ``url = hub.start(); ...; hub.stop()``.

    Writes need any ``Authorization: Bearer`` token; reads are anonymous unless ``require_auth_for_private``.
    ``requests`` logs every ``(method, path)`` served, e.g. to assert that the LFS PUT happened.
    """

    def __init__(self, port: int = 0, lfs_threshold: int = LFS_THRESHOLD, require_auth_for_private: bool = False):
        self.port, self.lfs_threshold, self.require_auth_for_private = port, lfs_threshold, require_auth_for_private
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.url = ""
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._stopping = False
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> str:
        """Bind 127.0.0.1:port (0 = any free port), serve in a background thread, return the base URL."""
        self._stopping = False
        self._httpd = _Server(("127.0.0.1", self.port), type("Handler", (_Handler,), {"hub": self}))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub-server", daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving, close idle keep-alive connections, join the serving and handler threads."""
        if self._httpd is None:
            return
        self._httpd.shutdown()
        with self._lock:
            self._stopping = True
            for conn in self._conns:
                _shutdown_socket(conn)
        self._httpd.server_close()  # joins handler threads (block_on_close)
        if self._thread is not None:
            self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- store helpers (usable directly from tests) ------------------------------------------------
    def create_repo(self, repo_id: str, repo_type: str = "model", private: bool = False) -> Repo:
        """Create a repo whose ``main`` holds one initial commit with ``.gitattributes`` (like the Hub)."""
        repo = Repo(repo_type, repo_id, private, _now())
        self.repos[(repo_type, repo_id)] = repo
        self._add_commit(repo, "main", {".gitattributes": Blob.make(GITATTRIBUTES, False)}, "initial commit")
        return repo

    def _add_commit(self, repo: Repo, branch: str, files: dict[str, Blob], message: str) -> Commit:
        tree = sorted((path, blob.oid) for path, blob in files.items())
        seed = json.dumps([repo.repo_id, repo.branches.get(branch), len(repo.commits), message, tree])
        commit = Commit(hashlib.sha1(seed.encode()).hexdigest(), files, message, _now())
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit

    def _repo(self, kind: str | None, repo_id: str, headers: Any) -> Repo:
        repo = self.repos.get((_TYPES[kind], repo_id))
        if repo is None or (repo.private and self.require_auth_for_private and not _authed(headers)):
            raise HubError(404 if repo is None else 401, f"Repository not found: {repo_id}", "RepoNotFound")
        return repo

    def _base(self, repo: Repo) -> str:
        return f"{self.url}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # -- request dispatch --------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers: Any, body: bytes) -> Response:
        """Route one request to a ``_r_*`` handler; HubError -> JSON error with ``X-Error-Code``."""
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        self.requests.append((method, url.path))
        for methods, regex, name in _COMPILED:
            match = regex.fullmatch(url.path)
            if match and method in methods:
                args = {k: v and unquote(v) for k, v in match.groupdict().items()}
                handler: Callable[..., Response] = getattr(self, f"_r_{name}")
                try:
                    with self._lock:
                        return handler(headers=headers, body=body, query=query, **args)
                except HubError as err:
                    extra = {"X-Error-Code": err.code} if err.code else {}
                    extra |= {"X-Error-Message": err.message, **err.headers}
                    return _json({"error": err.message}, err.status, extra)
                except Exception as err:  # a bug here: answer 501 (not retried by the client) instead of hanging up
                    return _json({"error": f"HubServer failed on {method} {url.path}: {err!r}"}, 501)
        return _json({"error": f"HubServer does not implement {method} {url.path}"}, 501)

    # -- routes ------------------------------------------------------------------------------------
    def _r_create_repo(self, headers: Any, body: bytes, **_: Any) -> Response:
        _require_auth(headers)
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or DEFAULT_USER}/{payload['name']}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        if (repo_type, repo_id) in self.repos:
            url = self._base(self.repos[(repo_type, repo_id)])
            return _json({"error": "You already created this repo", "url": url}, 409)
        repo = self.create_repo(repo_id, repo_type, private)
        return _json({"url": self._base(repo), "name": repo_id, "id": repo_id})

    def _r_delete_repo(self, headers: Any, body: bytes, **_: Any) -> Response:
        _require_auth(headers)
        payload = json.loads(body)
        repo_id = f"{payload.get('organization') or DEFAULT_USER}/{payload['name']}"
        repo = self._repo(f"{payload.get('type') or 'model'}s", repo_id, headers)
        del self.repos[(repo.repo_type, repo.repo_id)]
        return _json({})

    def _r_static(self, name: str, **_: Any) -> Response:
        """README metadata validation, ``whoami`` and the agent registry fetched while building user agents."""
        return _json(STATIC_ANSWERS[name])

    def _r_repo_info(self, headers: Any, kind: str, repo: str, rev: str | None, **_: Any) -> Response:
        r = self._repo(kind, repo, headers)
        commit = r.resolve(rev or "main")
        siblings = []
        for path, blob in sorted(commit.files.items()):
            sibling: dict[str, Any] = {"rfilename": path, "size": len(blob.data), "blobId": blob.oid}
            if lfs := _file_entry(path, blob).get("lfs"):
                sibling["lfs"] = {"size": lfs["size"], "sha256": lfs["oid"], "pointerSize": lfs["pointerSize"]}
            siblings.append(sibling)
        info = {"id": r.repo_id, "_id": r.repo_id, "author": r.repo_id.split("/")[0], "sha": commit.sha}
        info |= {"private": r.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": []}
        info |= {"createdAt": r.created, "lastModified": commit.date, "siblings": siblings}
        return _json({**info, "modelId": r.repo_id} if r.repo_type == "model" else info)

    def _r_tree(
        self, headers: Any, query: dict[str, str], kind: str, repo: str, rev: str, path: str | None, **_: Any
    ) -> Response:
        """Directory listing (one page, no ``Link`` header); ``recursive=true`` lists the whole subtree."""
        files = self._repo(kind, repo, headers).resolve(rev).files
        recursive = query.get("recursive", "").lower() == "true"
        prefix = f"{path.strip('/')}/" if path and path.strip("/") else ""
        out: dict[str, dict[str, Any]] = {}
        for file_path, blob in sorted(files.items()):
            if not file_path.startswith(prefix):
                continue
            parts = file_path[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                out.setdefault(prefix + "/".join(parts[:depth]), _dir_entry(prefix + "/".join(parts[:depth])))
            if recursive or len(parts) == 1:
                out[file_path] = _file_entry(file_path, blob)
        if prefix and not out:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        return _json(list(out.values()))

    def _r_preupload(self, headers: Any, body: bytes, kind: str, repo: str, rev: str, **_: Any) -> Response:
        """Decide ``regular`` vs ``lfs`` per file by size; ``oid`` lets the client skip unchanged files."""
        _require_auth(headers)
        existing = self._repo(kind, repo, headers).resolve(rev).files
        out = []
        for f in json.loads(body)["files"]:
            blob = existing.get(f["path"])
            mode = "lfs" if f["size"] >= self.lfs_threshold else "regular"
            out.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": blob and blob.etag})
        return _json({"files": out})

    def _r_lfs_batch(self, headers: Any, body: bytes, kind: str | None, repo: str, **_: Any) -> Response:
        """Git LFS batch API (basic transfer only); upload/verify actions point back to this server."""
        _require_auth(headers)
        r = self._repo(kind, repo, headers)
        payload = json.loads(body)
        if payload.get("operation") != "upload":
            raise HubError(400, "Only the 'upload' LFS operation is supported")
        objects = []
        for obj in payload["objects"]:
            oid, size = obj["oid"], obj["size"]
            if oid in self.lfs_objects and len(self.lfs_objects[oid]) == size:
                objects.append({"oid": oid, "size": size})  # already stored => no actions => client skips upload
                continue
            actions = {"upload": {"href": f"{self.url}/__lfs__/{oid}", "header": {}}}
            actions["verify"] = {"href": f"{self._base(r)}.git/info/lfs/objects/verify", "header": {}}
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": actions})
        out = {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}
        return 200, {"Content-Type": "application/vnd.git-lfs+json"}, json.dumps(out).encode()

    def _r_lfs_put(self, body: bytes, oid: str, **_: Any) -> Response:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match sha256 {oid}")
        self.lfs_objects[oid] = body
        return 200, {"ETag": f'"{hashlib.md5(body).hexdigest()}"'}, b""

    def _r_lfs_verify(self, body: bytes, **_: Any) -> Response:
        obj = json.loads(body)
        if len(self.lfs_objects.get(obj["oid"], b"")) != obj["size"]:
            raise HubError(404, f"LFS object {obj['oid']} not found")
        return _json({"success": True})

    def _r_commit(
        self, headers: Any, body: bytes, query: dict[str, str], kind: str, repo: str, rev: str, **_: Any
    ) -> Response:
        """Apply an ndjson commit (header/file/lfsFile/deletedFile/deletedFolder); ``create_pr=1`` -> refs/pr/N."""
        _require_auth(headers)
        r = self._repo(kind, repo, headers)
        head = r.resolve(rev)
        if rev not in r.branches:
            raise HubError(400, f"Can only commit to a branch, got {rev}")
        files, message = dict(head.files), ""
        for line in filter(None, body.splitlines()):
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                message = value.get("summary", "")
                if value.get("parentCommit") not in (None, head.sha):
                    raise HubError(412, "A commit has happened since. Please refresh and try again.")
            elif key == "file":
                files[value["path"]] = Blob.make(base64.b64decode(value["content"]), lfs=False)
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise HubError(422, f"LFS object {value['oid']} of {value['path']} was not uploaded")
                files[value["path"]] = Blob.make(self.lfs_objects[value["oid"]], lfs=True)
            elif key in ("deletedFile", "deletedFolder"):
                prefix = value["path"].rstrip("/") + "/"
                gone = [p for p in files if p == value["path"] or (key == "deletedFolder" and p.startswith(prefix))]
                if not gone:
                    raise HubError(404, f"A file with this name doesn't exist: {value['path']}", "EntryNotFound")
                for p in gone:
                    del files[p]
            else:
                raise HubError(400, f"Unsupported commit operation {key!r}")
        branch, pr_url = rev, None
        if query.get("create_pr") == "1":
            num = 1 + sum(b.startswith("refs/pr/") for b in r.branches)
            branch, pr_url = f"refs/pr/{num}", f"{self._base(r)}/discussions/{num}"
            r.branches[branch] = head.sha
        commit = self._add_commit(r, branch, files, message)
        out = {"success": True, "commitOid": commit.sha, "commitUrl": f"{self._base(r)}/commit/{commit.sha}"}
        return _json({**out, "hookOutput": "", "pullRequestUrl": pr_url})

    def _r_resolve(self, headers: Any, kind: str | None, repo: str, rev: str, path: str, **_: Any) -> Response:
        """File download (GET) or metadata (HEAD); LFS files are served directly instead of via a CDN redirect."""
        commit = self._repo(kind, repo, headers).resolve(rev)
        blob = commit.files.get(path)
        if blob is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.sha})
        size = len(blob.data)
        out = {"X-Repo-Commit": commit.sha, "ETag": f'"{blob.etag}"', "Content-Type": "application/octet-stream"}
        if blob.lfs:
            out |= {"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(size)}
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range") or "")  # used to resume downloads
        if rng is None or int(rng[1]) >= size:
            return 200, out, blob.data
        start, end = int(rng[1]), min(int(rng[2] or size - 1), size - 1)
        return 206, {**out, "Content-Range": f"bytes {start}-{end}/{size}"}, blob.data[start : end + 1]


def _authed(headers: Any) -> bool:
    return (headers.get("Authorization") or "").startswith("Bearer ")


def _require_auth(headers: Any) -> None:
    if not _authed(headers):
        raise HubError(401, "Invalid credentials in Authorization header")


def _shutdown_socket(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # so that server_close() joins the handler threads


class _Handler(BaseHTTPRequestHandler):
    """Parses HTTP/1.1 (keep-alive, chunked request bodies) and delegates to ``HubServer.handle``."""

    hub: HubServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        with self.hub._lock:
            self.hub._conns.add(self.connection)
            if self.hub._stopping:
                _shutdown_socket(self.connection)

    def finish(self) -> None:
        with self.hub._lock:
            self.hub._conns.discard(self.connection)
        super().finish()

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _serve(self) -> None:
        status, headers, body = self.hub.handle(self.command, self.path, self.headers, self._body())
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep the stdlib signature
        pass
