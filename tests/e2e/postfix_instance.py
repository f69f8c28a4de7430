"""A private, throw-away Postfix instance for end-to-end tests.

Why a private instance: the tests need a *real* Postfix writing *real* log lines, but must not
depend on (or disturb) the machine's own mail system. Everything lives in one temp dir: config
(main.cf/master.cf written here), queue, data, mailboxes and the log file (``maillog_file`` via
postlogd, Postfix >= 3.4), and smtpd listens on 127.0.0.1:<free port>. It is driven with
``postfix -c DIR start|stop``, which works whether or not the system instance is configured or
running.

Pitfalls handled here (see also the notes in ``PostfixInstance._write_config``):

* ``postfix -c DIR`` with a non-default DIR is only allowed for root without listing DIR in the
  system main.cf (``alternate_config_directories``); we require root anyway.
* Queue and data directories must be owned by ``mail_owner`` (postfix): ``postfix start`` runs
  ``post-install create-missing`` which creates and chowns the queue subdirectories, but only
  if the parents exist and are traversable, so the temp dir is made 0755 (pytest's own
  ``tmp_path`` lives under a 0700 directory, which the unprivileged daemons cannot enter).
* ``maillog_file`` must start with one of ``maillog_file_prefixes`` (default ``/var,
  /dev/stdout``), otherwise postlogd refuses it; we set the prefix to the temp dir.
* Debian's stock master.cf chroots most services into the queue dir, which then needs copies of
  /etc files; our master.cf runs every service unchrooted (chroot column ``n``).
* No DNS: ``smtpd_peername_lookup = no`` (clients are logged as ``unknown[127.0.0.N]``), and
  nothing is ever delivered off the box (``default_transport = error``).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
SASLPASSWD2 = "/usr/sbin/saslpasswd2"
MIN_VERSION = (3, 4)  # maillog_file / postlogd

#: uid/gid the virtual(8) agent delivers as; must be >= virtual_minimum_uid (100).
MAILBOX_USER = "nobody"

# Reply to DATA: "250 2.0.0 Ok: queued as 4Xyz..." (short hex or long queue ids).
QUEUED_AS_RE = re.compile(r"queued as ([0-9A-Za-z]+)")


def postfix_version() -> tuple[int, ...] | None:
    """The installed Postfix version, or None if it cannot be determined."""
    try:
        out = subprocess.run(
            [POSTCONF, "-d", "-h", "mail_version"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        return tuple(int(part) for part in out.split(".")[:3])
    except ValueError:
        return None


def skip_unless_postfix_usable() -> tuple[int, ...]:
    """Skip the calling test unless we are root and a recent enough Postfix is installed."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a private Postfix instance must be started as root")
    if not (os.access(POSTFIX, os.X_OK) and os.access(POSTCONF, os.X_OK)):
        pytest.skip(f"Postfix is not installed ({POSTFIX} missing); run tests/install-test-deps.sh")
    try:
        pwd.getpwnam("postfix")
        pwd.getpwnam(MAILBOX_USER)
    except KeyError as exc:
        pytest.skip(f"required user missing ({exc}); broken Postfix install?")
    version = postfix_version()
    if version is None:
        pytest.skip("cannot determine the Postfix version (postconf -d mail_version failed)")
    if version < MIN_VERSION:
        pytest.skip(f"Postfix {version} too old; maillog_file needs >= 3.4")
    return version


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (tiny race until smtpd binds it; fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen | None) -> None:
    """Stop a daemon started in its own process group: SIGTERM, then SIGKILL after 10 s."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until true; raise TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


@dataclass
class PostfixInstance:
    """One private Postfix instance under ``root`` (created by :meth:`create`).

    ``mailboxes`` are the local parts that exist in ``domain`` (virtual mailbox domain);
    any other ``@domain`` recipient is rejected at RCPT with 550 5.1.1. Only ``mynetworks``
    (127.0.0.1/32) may relay; relay attempts from other clients get 554 5.7.1.
    """

    root: Path
    port: int
    host: str = "127.0.0.1"
    domain: str = "example.test"
    mailboxes: tuple[str, ...] = ("alice", "bob", "postmaster")
    mynetworks: tuple[str, ...] = ("127.0.0.1/32",)
    #: SASL accounts ("user@realm" -> password); non-empty enables Cyrus SASL (sasldb).
    sasl_users: dict[str, str] = field(default_factory=dict)
    extra_main_cf: dict[str, str] = field(default_factory=dict)
    #: master.cf maxproc of the smtpd service ("-" = default_process_limit). 1 makes every
    #: session go to the same long-lived smtpd while it lives (map-change tests).
    smtpd_maxproc: str = "-"
    running: bool = False

    # -- layout -----------------------------------------------------------------------------
    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.root / "spool"

    @property
    def data_dir(self) -> Path:
        return self.root / "lib"

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    @property
    def log_file(self) -> Path:
        return self.root / "postfix.log"

    # -- lifecycle --------------------------------------------------------------------------
    @classmethod
    def create(cls, **kwargs: object) -> PostfixInstance:
        """Make the temp dir and write the configuration (does not start Postfix)."""
        root = Path(tempfile.mkdtemp(prefix="smtpguard-postfix-"))
        # The unprivileged daemons (postfix, nobody) must be able to traverse to their dirs.
        root.chmod(0o755)
        inst = cls(root=root, port=free_port(), **kwargs)  # type: ignore[arg-type]
        inst._write_config()
        return inst

    def _write_config(self) -> None:
        """Write main.cf, master.cf and the mailbox map; set ownership where Postfix checks it."""
        self.config_dir.mkdir(mode=0o755)
        self.queue_dir.mkdir(mode=0o755)  # post-install creates the subdirs on start
        self.data_dir.mkdir(mode=0o700)
        self.mail_dir.mkdir(mode=0o700)
        postfix_pw = pwd.getpwnam("postfix")
        mbox_pw = pwd.getpwnam(MAILBOX_USER)
        os.chown(self.data_dir, postfix_pw.pw_uid, postfix_pw.pw_gid)
        os.chown(self.mail_dir, mbox_pw.pw_uid, mbox_pw.pw_gid)

        vmailbox = self.config_dir / "vmailbox"
        vmailbox.write_text(
            "".join(f"{local}@{self.domain}\t{self.domain}/{local}/\n" for local in self.mailboxes)
        )
        main_cf: dict[str, str] = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": f"mx.{self.domain}",
            "mydomain": self.domain,
            "myorigin": "$myhostname",
            # No local(8) domain: example.test is a virtual mailbox domain (below), so unknown
            # users are rejected at RCPT from the explicit map without any system accounts.
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": self.host,
            "inet_protocols": "ipv4",
            "mynetworks": ", ".join(self.mynetworks),
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_peername_lookup": "no",
            "smtpd_banner": "$myhostname ESMTP smtpguard-test",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_maps": f"texthash:{vmailbox}",
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_uid_maps": f"static:{mbox_pw.pw_uid}",
            "virtual_gid_maps": f"static:{mbox_pw.pw_gid}",
            # Never try to deliver anywhere else (no DNS, no outbound SMTP).
            "default_transport": "error:outbound mail disabled in the test instance",
            "relay_transport": "error:outbound mail disabled in the test instance",
            "maillog_file": str(self.log_file),
            "maillog_file_prefixes": str(self.root),
            "biff": "no",
            "append_dot_mydomain": "no",
            # Deliver promptly, keep the test fast.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
        }
        if self.sasl_users:
            main_cf.update(self._write_sasl_config())
        main_cf.update(self.extra_main_cf)
        (self.config_dir / "main.cf").write_text(
            "# Written by tests/e2e/postfix_instance.py; private test instance.\n"
            + "".join(f"{key} = {value}\n" for key, value in main_cf.items())
        )
        # service type private unpriv chroot wakeup maxproc command; chroot "n" everywhere.
        services = [
            f"{self.host}:{self.port} inet n - n - {self.smtpd_maxproc} smtpd",
            "pickup    unix  n - n 60   1 pickup",
            "cleanup   unix  n - n -    0 cleanup",
            "qmgr      unix  n - n 300  1 qmgr",
            "rewrite   unix  - - n -    - trivial-rewrite",
            "bounce    unix  - - n -    0 bounce",
            "defer     unix  - - n -    0 bounce",
            "trace     unix  - - n -    0 bounce",
            "verify    unix  - - n -    1 verify",
            "flush     unix  n - n 1000? 0 flush",
            "proxymap  unix  - - n -    - proxymap",
            "smtp      unix  - - n -    - smtp",
            "showq     unix  n - n -    - showq",
            "error     unix  - - n -    - error",
            "retry     unix  - - n -    - error",
            "discard   unix  - - n -    - discard",
            "local     unix  - n n -    - local",
            "virtual   unix  - n n -    - virtual",
            "anvil     unix  - - n -    1 anvil",
            "scache    unix  - - n -    1 scache",
            # postlogd writes maillog_file; must not be chrooted and must be single-process.
            "postlog   unix-dgram n - n - 1 postlogd",
        ]
        (self.config_dir / "master.cf").write_text(
            "# Written by tests/e2e/postfix_instance.py; private test instance.\n"
            + "\n".join(services)
            + "\n"
        )

    def append_main_cf(self, text: str) -> None:
        """Append raw main.cf text (comments, multi-line values) before :meth:`start`,
        e.g. a snippet an action generates for the admin to paste."""
        with (self.config_dir / "main.cf").open("a") as main_cf:
            main_cf.write(text if text.endswith("\n") else text + "\n")

    def _write_sasl_config(self) -> dict[str, str]:
        """Cyrus SASL with a private sasldb (PLAIN/LOGIN); returns the main.cf settings.

        smtpd runs as the postfix user and reads the sasldb itself (auxprop), so the db must be
        readable by postfix; Debian's saslauthd is not involved."""
        if not os.access(SASLPASSWD2, os.X_OK):
            pytest.skip(
                f"{SASLPASSWD2} missing (package sasl2-bin); run tests/install-test-deps.sh"
            )
        if not glob.glob("/usr/lib/*/sasl2/libplain.so*"):
            pytest.skip("Cyrus SASL PLAIN/LOGIN plugins missing (package libsasl2-modules)")
        sasl_dir = self.config_dir / "sasl"
        sasl_dir.mkdir(mode=0o755)
        sasldb = self.root / "sasldb2"
        (sasl_dir / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {sasldb}\n"
            "mech_list: PLAIN LOGIN\n"
        )
        for account, password in self.sasl_users.items():
            user, _, realm = account.partition("@")
            subprocess.run(
                [SASLPASSWD2, "-f", str(sasldb), "-c", "-p", "-u", realm, user],
                input=password,
                text=True,
                check=True,
                capture_output=True,
                timeout=30,
            )
        postfix_pw = pwd.getpwnam("postfix")
        os.chown(sasldb, postfix_pw.pw_uid, postfix_pw.pw_gid)
        sasldb.chmod(0o600)
        return {
            "smtpd_sasl_auth_enable": "yes",
            "smtpd_sasl_type": "cyrus",
            "smtpd_sasl_path": "smtpd",
            "cyrus_sasl_config_path": str(sasl_dir),
            "smtpd_sasl_security_options": "noanonymous",  # allow PLAIN without TLS
            "smtpd_relay_restrictions": (
                "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination"
            ),
        }

    def _postfix(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``postfix -c CONFIG_DIR ARGS``; raise with its output if it fails."""
        proc = subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env(),
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"postfix {' '.join(args)} failed (rc={proc.returncode}):\n"
                f"{proc.stdout}{proc.stderr}\n--- log tail ---\n{self.log_tail()}"
            )
        return proc

    @staticmethod
    def _env() -> dict[str, str]:
        """A clean environment: a stray MAIL_CONFIG would override ``-c``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAIL_")}
        env.setdefault("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        return env

    def start(self, timeout: float = 20) -> None:
        """Start the instance and wait until smtpd accepts connections."""
        self.running = True
        self._postfix("start")
        wait_until(self._port_open, timeout, f"smtpd on {self.host}:{self.port}")

    def _port_open(self) -> bool:
        """True once a socket listens on host:port, read from /proc/net/tcp.

        Deliberately no test connection: it would add a session to the log under test."""
        want_ip = "".join(f"{int(o):02X}" for o in reversed(self.host.split(".")))
        want = f"{want_ip}:{self.port:04X}"
        try:
            with open("/proc/net/tcp") as table:
                next(table)
                for row in table:
                    cols = row.split()
                    if cols[1] == want and cols[3] == "0A":  # 0A = TCP_LISTEN
                        return True
        except OSError:
            return False
        return False

    def is_running(self) -> bool:
        """``postfix status``: master holds its lock file (the pid file alone may be stale)."""
        proc = subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), "status"],
            capture_output=True,
            timeout=30,
            env=self._env(),
        )
        return proc.returncode == 0

    def master_pid(self) -> int | None:
        """PID of this instance's master(8) while it runs."""
        if not self.is_running():
            return None
        try:
            return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, timeout: float = 20) -> None:
        """Stop the instance and wait until master (and with it postlogd) has exited.

        Decided by ``postfix status``, not by ``running``, so a half-failed start is cleaned
        up too."""
        self.running = False
        if not self.is_running():
            return
        pid = self.master_pid()
        self._postfix("stop", timeout=timeout)
        if pid is not None:
            wait_until(lambda: not _pid_alive(pid), timeout, f"postfix master {pid} to exit")

    def cleanup(self) -> None:
        """Stop (if running) and remove the temp dir unless SMTPGUARD_KEEP_E2E is set."""
        try:
            self.stop()
        finally:
            if os.environ.get("SMTPGUARD_KEEP_E2E"):
                print(f"keeping private Postfix instance in {self.root}")
            else:
                shutil.rmtree(self.root, ignore_errors=True)

    # -- observation ------------------------------------------------------------------------
    def read_log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.read_log().splitlines()[-lines:])

    def queue_is_empty(self) -> bool:
        """True when ``postqueue -p`` reports an empty queue (nothing active or deferred)."""
        proc = subprocess.run(
            [POSTQUEUE, "-c", str(self.config_dir), "-p"],
            capture_output=True,
            text=True,
            timeout=30,
            env=self._env(),
        )
        return proc.returncode == 0 and "Mail queue is empty" in proc.stdout

    def wait_settled(self, queue_ids: Iterable[str], sessions: int, timeout: float = 30) -> None:
        """Wait until every queued message is delivered and removed, and ``sessions`` smtpd
        sessions have logged their disconnect, so the log holds the complete story."""
        pending = set(queue_ids)

        def settled() -> bool:
            log = self.read_log()
            done = {qid for qid in pending if f": {qid}: removed" in log}
            disconnects = log.count("]: disconnect from ")
            return done == pending and disconnects >= sessions and self.queue_is_empty()

        try:
            wait_until(settled, timeout, f"{len(pending)} messages and {sessions} sessions")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- log tail ---\n{self.log_tail()}") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
