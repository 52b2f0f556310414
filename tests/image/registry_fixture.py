"""A real registry for the image tests: Debian's ``docker-registry`` on 127.0.0.1.

Three flavours, each with its own port, storage and config:
- ``plain``: HTTP, no authentication;
- ``tls_htpasswd``: HTTPS with a certificate from a CA made here, htpasswd
  (bcrypt) Basic authentication;
- ``token``: HTTP, Docker token authentication against ``TokenServer``, a
  tiny token server of our own whose JWTs (RS256) the registry verifies with
  the certificate bundle it is given.

Plus ``FaultProxy``, an HTTP proxy in front of a registry that can cut a blob
download half-way, corrupt a blob or redirect blob downloads to another host.
Every process started here is ended by pid at teardown; threads are shut down.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.compat.host import stop_process

REGISTRY_BIN = "/usr/bin/docker-registry"
USER, PASSWORD = "dockyard", "s3cret-pass"
TOKEN_SERVICE, TOKEN_ISSUER = "dockyard-test-registry", "dockyard-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(*args: str, cwd: Path | None = None) -> str:
    r = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


_OPENSSL_REQ = ("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-sha256")


def self_signed_cert(cert: Path, key: Path, name: str) -> None:
    _run(*_OPENSSL_REQ, "-x509", "-days", "2", "-subj", f"/CN={name}", "-keyout", str(key),
         "-out", str(cert))  # fmt: skip


def make_ca(d: Path) -> tuple[Path, Path]:
    """A self-signed CA (cert, key)."""
    cert, key = d / "ca.crt", d / "ca.key"
    self_signed_cert(cert, key, "dockyard test ca")
    return cert, key


def make_server_cert(d: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A server certificate for 127.0.0.1 and localhost signed by ``ca`` (cert, key)."""
    cert, key, csr, ext = d / "server.crt", d / "server.key", d / "server.csr", d / "ext.cnf"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "extendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )
    _run(*_OPENSSL_REQ, "-new", "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    _run(
        *("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1])),
        *("-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(ext), "-out", str(cert)),
    )
    return cert, key


def htpasswd_line(user: str, password: str) -> str:
    """A bcrypt htpasswd entry (``htpasswd -B``; the registry accepts only bcrypt)."""
    if not shutil.which("htpasswd"):
        pytest.skip("htpasswd (apache2-utils) is not installed")
    return _run("htpasswd", "-nbB", user, password).strip()


@dataclass
class RegistryServer:
    host: str  # 127.0.0.1:<port>
    root: Path
    process: subprocess.Popen[bytes]
    ca_file: str | None = None
    log: Path = field(default_factory=Path)


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {log.read_text(errors='replace')}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"docker-registry did not listen on {port}: {log.read_text()}")


@contextlib.contextmanager
def run_registry(
    *,
    tls: tuple[Path, Path] | None = None,
    ca_file: Path | None = None,
    htpasswd: str | None = None,
    token: dict[str, str] | None = None,
) -> Iterator[RegistryServer]:
    """A ``docker-registry`` with its own storage, ended and removed afterwards."""
    if not os.access(REGISTRY_BIN, os.X_OK):
        pytest.skip("docker-registry is not installed")
    root = Path(tempfile.mkdtemp(prefix="dockyard-registry-"))
    try:
        port = free_port()
        lines = [
            "version: 0.1",
            "log:",
            "  level: info",
            "  accesslog: {disabled: true}",
            "storage:",
            f"  filesystem: {{rootdirectory: {root / 'storage'}}}",
            "  delete: {enabled: true}",
            "http:",
            f"  addr: 127.0.0.1:{port}",
            f"  secret: {uuid.uuid4().hex}",
        ]
        if tls:
            lines += ["  tls:", f"    certificate: {tls[0]}", f"    key: {tls[1]}"]
        if htpasswd:
            (root / "htpasswd").write_text(htpasswd + "\n")
            lines += ["auth:", "  htpasswd:", "    realm: dockyard-test"]
            lines += [f"    path: {root / 'htpasswd'}"]
        elif token:
            lines += ["auth:", "  token:"] + [f"    {k}: {v}" for k, v in token.items()]
        config = root / "config.yml"
        config.write_text("\n".join(lines) + "\n")
        log = root / "registry.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [REGISTRY_BIN, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_listening(port, proc, log)
            yield RegistryServer(
                f"127.0.0.1:{port}", root, proc, str(ca_file) if ca_file else None, log
            )
        finally:
            stop_process(proc, 5)
    finally:
        shutil.rmtree(root, ignore_errors=True)


# -- the token server ---------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up is part of the tests


class TokenServer:
    """Issues registry tokens (distribution ``docs/spec/auth/jwt.md``).

    Anonymous clients may pull; ``users`` may pull and push; wrong passwords get 401.
    """

    def __init__(self, d: Path, users: dict[str, str]) -> None:
        self.cert, self.key = d / "token.crt", d / "token.key"
        self_signed_cert(self.cert, self.key, "dockyard token signer")
        der = subprocess.run(
            ["openssl", "x509", "-in", str(self.cert), "-outform", "DER"],
            capture_output=True,
            check=True,
        ).stdout
        self.x5c = base64.b64encode(der).decode()
        self.users = users
        self.requests: list[dict[str, list[str]]] = []
        self.issued = 0
        server = self
        self._lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                with server._lock:
                    server.requests.append(query)
                user = server.authenticate(self.headers.get("Authorization", ""))
                if user is None:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps(server.issue(user, query)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.realm = f"http://127.0.0.1:{self.port}/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def authenticate(self, header: str) -> str | None:
        """ "" for anonymous, the user name, or None when the password is wrong."""
        if not header:
            return ""
        if not header.startswith("Basic "):
            return None
        user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return user if self.users.get(user) == password else None

    def issue(self, user: str, query: dict[str, list[str]]) -> dict[str, object]:
        access = []
        for scope in query.get("scope", []):
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            allowed = [a for a in actions.split(",") if a == "pull" or (a == "push" and user)]
            access.append({"type": kind, "name": name, "actions": allowed})
        now = int(time.time())
        claims = {
            "iss": TOKEN_ISSUER,
            "sub": user,
            "aud": query.get("service", [""])[0],
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        signing_input = (
            _b64url(json.dumps(header).encode()) + "." + _b64url(json.dumps(claims).encode())
        )
        signature = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.key)],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        with self._lock:
            self.issued += 1
        answer: dict[str, object] = {
            "token": signing_input + "." + _b64url(signature),
            "expires_in": 300,
        }
        if user and query.get("offline_token") == ["true"]:
            answer["refresh_token"] = uuid.uuid4().hex
        return answer

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


# -- the fault-injecting proxy --------------------------------------------------------


class FaultProxy:
    """Forwards HTTP to ``upstream`` (host:port) and misbehaves on blob downloads.

    ``cut[digest] = n``: the next full GET of that blob sends n bytes and hangs up.
    ``corrupt``: blobs (by digest) and manifests (by the tag or digest asked for)
    served with one byte changed. ``redirect``: blob GETs to 127.0.0.1 are
    answered 307 to the same path on ``localhost`` (another origin), which then
    serves the blob without asking for credentials, as a presigned url would.
    ``no_head``: HEAD requests answered 405, as by registries without HEAD.
    ``seen`` records (host header, method, path, Range, Authorization) of each request.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.cut: dict[str, int] = {}
        self.corrupt: set[str] = set()
        self.redirect = False
        self.stash: dict[str, bytes] = {}
        self.no_head = False
        self.seen: list[tuple[str, str, str, str, str]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                host = self.headers.get("Host", "")
                proxy.seen.append(
                    (
                        host,
                        self.command,
                        self.path,
                        self.headers.get("Range", ""),
                        self.headers.get("Authorization", ""),
                    )
                )
                if self.command == "HEAD" and proxy.no_head:
                    self.send_response(405)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                is_blob = self.command == "GET" and "/blobs/sha256:" in self.path
                # a blob's digest, or a manifest's tag or digest
                digest = self.path.rsplit("/", 1)[-1]
                if is_blob and host.startswith("localhost") and self.path in proxy.stash:
                    # the redirect's target: like a presigned url, it needs no credentials
                    data = proxy.stash.pop(self.path)
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                if is_blob and proxy.redirect and host.startswith("127.0.0.1"):
                    conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                    try:
                        conn.request(self.command, self.path, headers=dict(self.headers.items()))
                        resp = conn.getresponse()
                        data = resp.read()
                    finally:
                        conn.close()
                    if resp.status != 200:
                        self.send_response(resp.status)
                        for k, v in resp.getheaders():
                            if k.lower() not in ("transfer-encoding", "connection"):
                                self.send_header(k, v)
                        self.end_headers()
                        self.wfile.write(data)
                        return
                    proxy.stash[self.path] = data
                    self.send_response(307)
                    self.send_header("Location", f"http://localhost:{proxy.port}{self.path}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                try:
                    # the Host header is kept: the registry builds its Location urls from it
                    headers = dict(self.headers.items())
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status)
                    for k, v in resp.getheaders():
                        if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                            self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command == "HEAD":
                        return
                    cut = proxy.cut.pop(digest, None) if resp.status == 200 else None
                    if cut is not None:
                        self.wfile.write(data[:cut])
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(socket.SHUT_RDWR)
                        return
                    if digest in proxy.corrupt and data:
                        data = data[:-1] + (b" " if data[-1:] != b" " else b"\n")
                    self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self.host = f"127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


# -- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_registry() -> Iterator[RegistryServer]:
    with run_registry() as server:
        yield server


@pytest.fixture(scope="module")
def tls_registry() -> Iterator[RegistryServer]:
    certs = Path(tempfile.mkdtemp(prefix="dockyard-certs-"))
    try:
        ca = make_ca(certs)
        server_cert = make_server_cert(certs, ca)
        entry = htpasswd_line(USER, PASSWORD)
        with run_registry(tls=server_cert, ca_file=ca[0], htpasswd=entry) as server:
            yield server
    finally:
        shutil.rmtree(certs, ignore_errors=True)


@dataclass
class TokenRegistry:
    registry: RegistryServer
    tokens: TokenServer


@pytest.fixture(scope="module")
def token_registry() -> Iterator[TokenRegistry]:
    certs = Path(tempfile.mkdtemp(prefix="dockyard-token-"))
    tokens = TokenServer(certs, {USER: PASSWORD})
    try:
        config = {
            "realm": tokens.realm,
            "service": TOKEN_SERVICE,
            "issuer": TOKEN_ISSUER,
            "rootcertbundle": str(tokens.cert),
        }
        with run_registry(token=config) as server:
            yield TokenRegistry(server, tokens)
    finally:
        tokens.close()
        shutil.rmtree(certs, ignore_errors=True)


@pytest.fixture
def fault_proxy(plain_registry: RegistryServer) -> Iterator[FaultProxy]:
    proxy = FaultProxy(plain_registry.host)
    try:
        yield proxy
    finally:
        proxy.close()
