"""A private redis-server for the fleet tests: its own temp dir, a unix socket (or a
random loopback port), no persistence, started and killed by the test."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server")


def needs_redis() -> None:
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (tests/install-test-deps.sh installs it)")
    pytest.importorskip("redis", reason="the redis client is not installed (pip install redis)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """``redis-server`` in ``directory``; ``url`` names it (unix socket by default)."""

    def __init__(self, directory: Path, *, tcp: bool = False, tls: Path | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        needs_redis()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.socket = directory / "redis.sock"
        self.port = free_port() if tcp or tls else 0
        self.extra = extra
        self.url = (f"redis://127.0.0.1:{self.port}/0" if tcp
                    else f"unix://{self.socket}?db=0")
        if tls is not None:  # TLS only on the TCP port (the unix socket stays plain)
            self.extra = ("--tls-port", str(self.port), "--tls-cert-file",
                          str(tls / "server.pem"), "--tls-key-file", str(tls / "server.key"),
                          "--tls-ca-cert-file", str(tls / "ca.pem"), "--tls-auth-clients",
                          "no", *extra)
            self.url = f"rediss://127.0.0.1:{self.port}/0"
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        port = "0" if self.tls is not None else str(self.port)
        args = [REDIS_SERVER, "--port", port, "--bind", "127.0.0.1",
                "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                "--dir", str(self.directory), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--logfile", str(self.directory / "redis.log"),
                *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.ping():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.directory / 'redis.log')}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer within 10s")

    @staticmethod
    def make_certificates(directory: Path) -> Path:
        """A test CA and a server certificate for 127.0.0.1 (openssl), in ``directory``."""
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("openssl is not installed (needed to make test certificates)")
        directory.mkdir(parents=True, exist_ok=True)

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], cwd=directory, check=True, timeout=60,
                           capture_output=True)

        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=smtpguard test CA")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=127.0.0.1")
        (directory / "ext").write_text("subjectAltName=IP:127.0.0.1\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext")
        return directory

    def client(self):
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2)

    def ping(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:  # noqa: BLE001
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def pause(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
        self.kill()
