"""systemd's Type=notify protocol: datagrams on $NOTIFY_SOCKET, read here by a real socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roost.server.notify import SystemdNotifier
from roost.testing.live import free_port

ROOST = Path(sys.executable).parent / "roost"


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(10)
        yield path, sock


def test_notify_sends_one_datagram(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.notify("READY=1")
    assert sock.recv(4096) == b"READY=1"


def test_the_abstract_namespace(tmp_path: Path) -> None:
    name = f"roost-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(10)
        assert SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name}).notify("X=1")
        assert sock.recv(64) == b"X=1"


def test_outside_systemd_it_does_nothing() -> None:
    notifier = SystemdNotifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.notify("READY=1")
    notifier.tick(0.0)
    assert notifier.sent == 0


def test_watchdog_pings_every_half_interval(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path,
                                                 "WATCHDOG_USEC": "2000000"})
    assert notifier.interval_s == 1.0
    for now in (0.0, 0.5, 0.99, 1.0, 1.5, 2.0):
        notifier.tick(100 + now)
    assert notifier.sent == 3  # at 0, 1 and 2 s
    assert [sock.recv(64) for _ in range(3)] == [b"WATCHDOG=1"] * 3


def test_a_watchdog_for_another_pid_is_not_ours() -> None:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000",
                                                 "WATCHDOG_PID": str(os.getpid() + 1)})
    assert notifier.interval_s is None


@pytest.mark.e2e
def test_roost_serve_signals_ready_watchdog_and_stopping(
        listener: tuple[str, socket.socket], tmp_path: Path) -> None:
    path, sock = listener
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOST_")}
    env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="200000")
    server = subprocess.Popen([str(ROOST), "serve", "--store", "memory://", "--port",
                               str(free_port())], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        received = [sock.recv(4096).decode() for _ in range(3)]
        assert any(m.startswith("READY=1") for m in received), received
        assert "WATCHDOG=1" in received, received
        server.send_signal(signal.SIGTERM)
        while not (message := sock.recv(4096).decode()).startswith("STOPPING=1"):
            assert message == "WATCHDOG=1", message
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
