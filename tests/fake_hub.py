"""A local stand-in for the Hugging Face Hub: the HTTP API huggingface_hub's downloads use."""

# Endpoints, as huggingface_hub 2.x calls them:
#   GET  /api/models/{repo}[/revision/{rev}][?blobs=true]  model_info: sha, siblings (+ sizes)
#   GET  /api/models/{repo}/tree/{rev}?recursive=...       list_repo_tree (snapshot_download)
#   HEAD /{repo}/resolve/{rev}/{path}                       metadata: X-Repo-Commit, ETag, size
#   GET  /{repo}/resolve/{rev}/{path}  [Range: bytes=N-]    the bytes (206 for a range)
# Errors carry the X-Error-Code huggingface_hub maps to exceptions: RepoNotFound,
# RevisionNotFound, EntryNotFound, GatedRepo. No Xet headers are sent, so files come over
# plain HTTP. One connection per request (HTTP/1.0): no handler thread outlives its response.

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_THRESHOLD = 1024  # larger files are served as LFS blobs (sha256 ETag), like the Hub's


def commit_sha(label: str) -> str:
    return hashlib.sha1(label.encode()).hexdigest()


@dataclass
class FakeRepo:
    """A model repo: commits (sha -> {path: bytes}) and refs (branch/tag -> sha)."""

    commits: dict[str, dict[str, bytes]]
    refs: dict[str, str]
    gated: bool = False  # metadata public, files need a token in FakeHub.tokens (as on the Hub)

    @classmethod
    def single(cls, files: dict[str, bytes], *, gated: bool = False) -> FakeRepo:
        sha = commit_sha(json.dumps(sorted(files)))
        return cls({sha: files}, {"main": sha}, gated)

    @property
    def main(self) -> str:
        return self.refs["main"]

    def resolve(self, rev: str) -> str | None:
        if rev in self.commits:
            return rev
        return self.refs.get(rev)


@dataclass
class FakeHub:
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    tokens: set[str] = field(default_factory=set)
    # path -> how many times to cut the connection halfway through a full-file GET
    drop_once: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    down: bool = False  # answer every request with 503, like a Hub outage
    lock: threading.Lock = field(default_factory=threading.Lock)

    def log(self, method: str, path: str, headers: dict[str, str]) -> None:
        with self.lock:
            self.requests.append((method, path, headers))

    def count(self, method: str | None = None, contains: str = "") -> int:
        with self.lock:
            return sum(
                1 for m, p, _ in self.requests if (method is None or m == method) and contains in p
            )


_API = re.compile(r"^/api/models/([^/]+/[^/]+)(?:/(revision|tree)/([^/]+)(?:/(.*))?)?$")
_RESOLVE = re.compile(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    timeout = 10  # a stuck client cannot hold a handler thread forever
    hub: FakeHub  # set on the per-server subclass

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        headers = {"X-Error-Code": code, "X-Error-Message": message}
        headers["Content-Type"] = "application/json"
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, headers, json.dumps({"error": message}).encode())

    def _json(self, doc: object) -> None:
        self._send(200, {"Content-Type": "application/json"}, json.dumps(doc).encode())

    def _authorized(self) -> bool:
        auth = self.headers.get("Authorization", "")
        return auth.startswith("Bearer ") and auth[len("Bearer ") :] in self.hub.tokens

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route()

    def do_HEAD(self) -> None:
        self._route()

    def _route(self) -> None:
        url = urlsplit(self.path)
        self.hub.log(self.command, url.path, dict(self.headers.items()))
        if self.hub.down:
            return self._send(503, {"Content-Type": "text/plain"}, b"Service Unavailable")
        if m := _API.match(url.path):
            repo_id, kind, rev, _sub = m.groups()
            return self._api(
                repo_id, kind or "revision", unquote(rev or "main"), parse_qs(url.query)
            )
        if m := _RESOLVE.match(url.path):
            repo_id, rev, path = m.groups()
            return self._resolve(repo_id, unquote(rev), unquote(path))
        self._error(404, "EndpointNotFound", f"no route for {url.path}")

    def _repo(self, repo_id: str) -> FakeRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return repo

    def _api(self, repo_id: str, kind: str, rev: str, query: dict[str, list[str]]) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = repo.commits[sha]
        if kind == "tree":
            return self._json([_tree_entry(p, data) for p, data in sorted(files.items())])
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = [
            {"rfilename": p, **({"size": len(d)} if blobs else {})} for p, d in files.items()
        ]
        self._json(
            {
                "id": repo_id,
                "modelId": repo_id,
                "sha": sha,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "siblings": sorted(siblings, key=lambda s: s["rfilename"]),
            }
        )

    def _resolve(self, repo_id: str, rev: str, path: str) -> None:
        repo = self._repo(repo_id)
        if repo is None:
            return
        if repo.gated and not self._authorized():
            message = f"Access to model {repo_id} is restricted. You must have access to it."
            return self._error(401, "GatedRepo", message)
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        data = repo.commits[sha].get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist", commit=sha)
        headers = {
            "X-Repo-Commit": sha,
            "ETag": f'"{_etag(data)}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        start = _range_start(self.headers.get("Range"))
        if self.command == "HEAD" or start == 0:
            headers["Content-Length"] = str(len(data))
            self.send_response(200)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if self.command == "GET":
                self._body(path, data)
            return
        headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        self._send(206, headers, data[start:])

    def _body(self, path: str, data: bytes) -> None:
        with self.hub.lock:
            drop = self.hub.drop_once.get(path, 0)
            if drop:
                self.hub.drop_once[path] = drop - 1
        if drop:
            # Half the promised bytes, then the connection closes: the client must resume.
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)


def _etag(data: bytes) -> str:
    # LFS files: sha256 of the content; small git files: the git blob sha1.
    if len(data) > LFS_THRESHOLD:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _tree_entry(path: str, data: bytes) -> dict[str, object]:
    entry: dict[str, object] = {
        "type": "file",
        "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
        "size": len(data),
        "path": path,
    }
    if len(data) > LFS_THRESHOLD:
        entry["lfs"] = {"oid": _etag(data), "size": len(data), "pointerSize": 134}
    return entry


def _range_start(header: str | None) -> int:
    m = re.fullmatch(r"bytes=(\d+)-", (header or "").strip())
    return int(m.group(1)) if m else 0


class FakeHubServer:
    """Serves a FakeHub on 127.0.0.1 (a free port) from a background thread."""

    def __init__(self, hub: FakeHub) -> None:
        handler = type("Handler", (_Handler,), {"hub": hub})
        self.hub = hub
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # Join handler threads on close, so none outlives the test.
        self.httpd.daemon_threads = False
        self.httpd.block_on_close = True
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop serving and join every thread; the port then refuses connections."""
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
