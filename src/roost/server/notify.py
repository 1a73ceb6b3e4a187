"""systemd's notification protocol, for `Type=notify` units: READY, WATCHDOG, STOPPING.

The whole protocol is one datagram of `KEY=value` lines to the Unix socket named by
`$NOTIFY_SOCKET` (a leading `@` means Linux's abstract namespace). libsystemd's `sd_notify`
does no more, so Roost sends it itself rather than depend on a C library:

    notifier = SystemdNotifier.from_environment()   # None-safe: does nothing outside systemd
    notifier.notify("READY=1")                      # serving: systemd starts dependants
    notifier.tick(time.monotonic())                 # WATCHDOG=1 every WatchdogSec/2
    notifier.notify("STOPPING=1")                   # draining

With `WatchdogSec=` set, systemd restarts the service when pings stop: they come from the
server's main loop, so a blocked event loop stops them.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


class SystemdNotifier:
    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address or None
        # systemd asks for a ping at least every WATCHDOG_USEC; half of it leaves slack.
        self.interval_s = watchdog_s / 2 if watchdog_s else None
        self._next_ping = 0.0
        self.sent = 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> SystemdNotifier:
        env = os.environ if environ is None else environ
        watchdog_s = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        # WATCHDOG_PID, when set, names the process systemd watches (not a child of it).
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1_000_000
        return cls(env.get("NOTIFY_SOCKET"), watchdog_s)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, state: str) -> bool:
        """Send `state` (e.g. "READY=1"); False outside systemd or when the send fails."""
        if self.address is None:
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            try:
                sock.sendto(state.encode(), self.address)
            except OSError:  # systemd gone (shutting down): nothing to tell
                return False
        self.sent += 1
        return True

    def tick(self, now: float) -> None:
        """WATCHDOG=1 when a ping is due; call it often (the server does, every 0.1 s)."""
        if self.interval_s is None or now < self._next_ping:
            return
        self._next_ping = now + self.interval_s
        self.notify("WATCHDOG=1")
