"""The control socket: how ``status``, ``list``, ``ban``, ``unban`` (and ``unban
--all``), ``explain --key``, ``reconcile`` and ``reload`` reach the running daemon
(what each answers: :mod:`.commands`).

A Unix stream socket, mode 0600 in a 0750 directory, and every peer's uid checked
with SO_PEERCRED (root, or the daemon's own user): whoever may talk to it may ban
anyone. One request per connection, both ways one JSON object on one line:
``{"command": "ban", "args": {...}}`` -> ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "one line"}``. Requests are size-limited and time-limited,
so a stuck client cannot hold a server thread.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import struct
import threading
from collections.abc import Callable
from typing import Any

from ..actions import safefs

log = logging.getLogger("smtpguard_logwatch.control")

MAX_REQUEST = 64 * 1024
TIMEOUT = 10.0

Handler = Callable[[str, dict[str, Any]], Any]


class ControlError(Exception):
    """The daemon answered with an error (its one-line message)."""


class DaemonUnavailable(Exception):
    """No daemon answers on the socket (not running, or not ours to ask)."""


class SocketInUse(Exception):
    """Another daemon answers on the socket already."""


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end (Linux SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return uid


class _RequestHandler(socketserver.StreamRequestHandler):
    timeout = TIMEOUT
    server: ControlServer

    def handle(self) -> None:
        try:
            uid = peer_uid(self.connection)
        except OSError:
            return
        if uid not in (0, os.geteuid()):
            log.warning("control: refused a request from uid %d", uid)
            self._reply({"ok": False, "error": "permission denied: root only"})
            return
        try:
            raw = self.rfile.readline(MAX_REQUEST + 1)
        except (OSError, TimeoutError):
            return
        if len(raw) > MAX_REQUEST:
            self._reply({"ok": False, "error": "request too long"})
            return
        try:
            request = json.loads(raw)
            command = request["command"]
            args = request.get("args") or {}
            if not isinstance(command, str) or not isinstance(args, dict):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            self._reply({"ok": False, "error": "malformed request"})
            return
        try:
            result = self.server.handler(command, args)
        except ControlError as exc:
            self._reply({"ok": False, "error": str(exc)})
            return
        except Exception as exc:  # noqa: BLE001 - a bug answers, it does not kill the thread
            log.exception("control: %s failed", command)
            self._reply({"ok": False, "error": f"internal error: {exc}"})
            return
        self._reply({"ok": True, "result": result})

    def _reply(self, obj: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):
            self.wfile.write(json.dumps(obj, default=str).encode() + b"\n")


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """The daemon's end; ``handler(command, args)`` answers or raises ControlError."""

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, path: str, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        # a directory another user can write would let them swap the socket for a link
        safefs.make_directory(os.path.dirname(os.path.abspath(path)), 0o750)
        if os.path.exists(path):
            if _answers(path):
                raise SocketInUse(f"{path}: another smtpguard-logwatch daemon answers there")
            os.unlink(path)  # left behind by a daemon that was killed
        old = os.umask(0o177)  # the socket is created 0600: no window with wider access
        try:
            super().__init__(path, _RequestHandler)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.serve_forever, name="smtpguard-control",
                                        kwargs={"poll_interval": 0.5}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join(5)
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def request(path: str, command: str, timeout: float = 60.0, **args: Any) -> Any:
    """Ask the daemon; its result, or ControlError / DaemonUnavailable."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnavailable(f"{path}: {exc.strerror}") from None
        except PermissionError:
            raise DaemonUnavailable(f"{path}: permission denied (run as root)") from None
        # the daemon may answer (a refusal) and close before reading: its answer waits
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(json.dumps({"command": command, "args": args}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError("the daemon closed the connection without an answer") from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error") or "unknown error")
    return reply.get("result")
