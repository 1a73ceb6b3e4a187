"""Transport limits on a real uvicorn: slow-loris connections are closed by the header
timeout while others are served, the per-client cap, TLS with a certificate made here,
security headers and CORS."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from roost import Runtime, Settings
from roost.server.app import create_app
from roost.server.limits import BodySizeLimit
from roost.server.transport import TransportConfig, uvicorn_options
from roost.testing.live import free_port
from tests.auth.conftest import echo_agent


async def hello(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})


@contextmanager
def serving(config: TransportConfig, app: Any = hello) -> Iterator[int]:
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                           log_config=None, log_level="error",
                                           **uvicorn_options(config)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)  # polling a flag another thread sets; not synchronising on time
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def closed_by_peer(sock: socket.socket, within_s: float) -> bool:
    """True when the server closes `sock` (EOF) within `within_s`."""
    sock.settimeout(within_s)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_slow_loris_connections_are_closed_while_others_are_served() -> None:
    with serving(TransportConfig(header_timeout_s=0.5)) as port:
        slow = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: a")  # headers never complete
            slow.append(sock)
        silent = socket.create_connection(("127.0.0.1", port))  # says nothing at all
        started = time.monotonic()
        assert httpx.get(f"http://127.0.0.1:{port}/").text == "hello"
        for sock in [*slow, silent]:
            assert closed_by_peer(sock, within_s=5.0)
            sock.close()
        assert time.monotonic() - started < 5.0
        # A keep-alive connection is timed again for its next request.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while b"hello" not in received:
                received += sock.recv(4096)
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # ... then stalls
            assert closed_by_peer(sock, within_s=5.0)


def read_until_closed(sock: socket.socket, within_s: float = 5.0) -> bytes:
    sock.settimeout(within_s)
    chunks = []
    while chunk := sock.recv(4096):
        chunks.append(chunk)
    return b"".join(chunks)


def test_connections_per_client_are_capped() -> None:
    with serving(TransportConfig(max_connections_per_client=2, header_timeout_s=30)) as port, \
            ExitStack() as stack:
        first, second, third = (stack.enter_context(socket.create_connection(("127.0.0.1", port)))
                                for _ in range(3))
        assert closed_by_peer(third, within_s=5.0)
        first.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"hello" in read_until_closed(first)  # served, then closed: a slot frees
        deadline = time.monotonic() + 5
        while True:  # the server counts the closed connection out when it sees it go
            try:
                with httpx.Client() as client:
                    if client.get(f"http://127.0.0.1:{port}/").text == "hello":
                        break
            except httpx.TransportError:
                assert time.monotonic() < deadline
        second.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert b"hello" in read_until_closed(second)


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    crypto = pytest.importorskip("cryptography")
    del crypto
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    certfile, keyfile = tmp_path / "tls.crt", tmp_path / "tls.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def test_tls_with_a_certificate_made_here(tmp_path: Path) -> None:
    certfile, keyfile = _certificate(tmp_path)
    config = TransportConfig(tls_certfile=str(certfile), tls_keyfile=str(keyfile))
    with serving(config) as port:
        trust = ssl.create_default_context(cafile=str(certfile))
        r = httpx.get(f"https://localhost:{port}/", verify=trust)
        assert r.status_code == 200 and r.text == "hello"
        with pytest.raises(httpx.ConnectError):  # not trusted without the certificate
            httpx.get(f"https://localhost:{port}/")


async def test_security_headers_and_cors_off_by_default() -> None:
    runtime = Runtime(Settings.model_validate({"store": {"url": "memory://"}}), [echo_agent()])
    app = create_app(runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://roost") as client:
        r = await client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert "access-control-allow-origin" not in r.headers


async def test_cors_for_configured_origins() -> None:
    runtime = Runtime(Settings.model_validate({
        "store": {"url": "memory://"}, "auth": {"enabled": True},
        "transport": {"cors_origins": ["https://app.example"]}}), [echo_agent()])
    app = create_app(runtime)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://roost") as client:
        # A preflight carries no credentials: answered before authentication.
        r = await client.options("/v1/sessions", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await client.options("/v1/sessions", headers={
            "Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        assert r.status_code == 400
        r = await client.get("/v1/sessions", headers={"Origin": "https://app.example"})
        assert r.status_code == 401
        assert r.headers["access-control-allow-origin"] == "https://app.example"


def test_a_413_is_read_by_a_client_still_sending_its_body() -> None:
    """The refusal is sent at once from Content-Length; the server keeps reading (and
    dropping) the declared body instead of closing on a sending client, so the client
    reads the 413 rather than a connection reset."""
    limited = BodySizeLimit(hello, max_bytes=1 << 20)
    body = b"x" * (3 << 20)
    with serving(TransportConfig(), limited) as port, \
            socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        sock.sendall(body)  # all of it: no reset while the server answers
        response = sock.recv(65536)
        assert response.startswith(b"HTTP/1.1 413"), response[:100]
    # With Expect: 100-continue the refusal comes before the body is sent.
    with serving(TransportConfig(), limited) as port, \
            socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        assert sock.recv(65536).startswith(b"HTTP/1.1 413")
