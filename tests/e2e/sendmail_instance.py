"""A private, throw-away Sendmail 8 daemon whose syslog lines are collected, for end-to-end
tests.

Why like this: installing Sendmail would replace this host's MTA, so the Debian binary is
unpacked under ``$SMTPGUARD_MTA_ROOT`` (tests/install-test-mtas.sh) and copied without its
setgid bit. Sendmail only logs through syslog(3), so it runs in private mount and UTS
namespaces where ``/dev`` is a small tmpfs whose ``/dev/log`` is this test's datagram socket
(the lines are written to ``log_file`` in the classic syslog file format, ``Mmm dd hh:mm:ss
host sm-mta[pid]: …``), the host name is mx.example.test, ``/etc/passwd`` is a copy with the
mailboxes as users, and ``/usr/lib/sasl2`` holds its Cyrus SASL config (a private sasldb).
It listens on 127.0.0.1:<free port> of the host, so every 127.0.0.x is a distinct client.

The configuration (``_mc``): example.test is local (class w); a mailbox is a user of the
private passwd, delivered by a small local mailer script that fails permanently for "gone"
(so Sendmail bounces the message); only 127.0.0.1 and authenticated clients may relay;
MaxMessageSize is SIZE_LIMIT; a header check refuses the REFUSE_SUBJECT at DATA; AUTH PLAIN
and LOGIN against the sasldb.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from .mta_scenario import LOCAL_DOMAIN, MAILBOXES, REFUSE_SUBJECT, SASL_USERS, SIZE_LIMIT
from .postfix_instance import free_port, stop_group, wait_until

MTA_ROOT = os.environ.get("SMTPGUARD_MTA_ROOT", "/")
SASLPASSWD2 = "/usr/sbin/saslpasswd2"
HOSTNAME = f"mx.{LOCAL_DOMAIN}"
NOBODY = 65534


def _find(name: str, dirs: tuple[str, ...]) -> str | None:
    for d in dirs:
        path = os.path.join(MTA_ROOT, d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def skip_unless_sendmail_usable() -> tuple[str, str, str]:
    """(sendmail binary, cf directory, m4) or skip with the reason."""
    if os.geteuid() != 0:
        pytest.skip("needs root: a private Sendmail daemon runs in its own namespaces")
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    binary = _find("sendmail", ("usr/libexec/sendmail", "usr/lib/sm.bin"))
    cf_dir = os.path.join(MTA_ROOT, "usr/share/sendmail/cf")
    m4 = _find("m4", ("usr/bin",)) or shutil.which("m4")
    if binary is None or not os.path.isdir(cf_dir) or m4 is None:
        pytest.skip(f"no Sendmail (sendmail-bin, sendmail-cf, m4) under SMTPGUARD_MTA_ROOT="
                    f"{MTA_ROOT!r}: installing it would replace this host's MTA; run "
                    "tests/install-test-mtas.sh and export "
                    "SMTPGUARD_MTA_ROOT=/opt/smtpguard-test-mta/root")
    if not os.access(SASLPASSWD2, os.X_OK):
        pytest.skip(f"{SASLPASSWD2} missing (package sasl2-bin); run tests/install-test-deps.sh")
    if not os.path.isdir("/usr/lib/sasl2"):
        pytest.skip("/usr/lib/sasl2 missing (package libsasl2-2): nowhere to mount the config")
    return binary, cf_dir, m4


def tcp_listening(port: int) -> bool:
    """True once a socket of this network namespace listens on IPv4 ``port``."""
    with open("/proc/net/tcp") as table:
        next(table)
        for row in table:
            local, state = row.split()[1], row.split()[3]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                return True
    return False


class SyslogCollector:
    """A /dev/log stand-in: each datagram ``<pri>Mmm dd hh:mm:ss tag[pid]: msg`` becomes the
    file line ``Mmm dd hh:mm:ss HOST tag[pid]: msg`` (what rsyslog writes to mail.log)."""

    def __init__(self, socket_path: Path, log_file: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(socket_path))
        os.chmod(socket_path, 0o666)  # children log after giving up root too
        self.out = log_file.open("ab")
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            data = data.rstrip(b"\n\0")
            if data.startswith(b"<"):
                data = data[data.find(b">") + 1 :]
            with self.lock:
                self.out.write(data[:15] + b" mx " + data[16:] + b"\n")
                self.out.flush()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(timeout=5)
        with self.lock:
            self.out.close()


class SendmailInstance:
    """One daemon under ``root``; ``start`` / ``stop``; its syslog lines in ``log_file``."""

    def __init__(self, binary: str, cf_dir: str, m4: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="sg-sendmail-real-", dir="/tmp"))
        self.root.chmod(0o755)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.syslog: SyslogCollector | None = None
        r = self.root
        (r / "queue").mkdir(mode=0o700)
        (r / "mail").mkdir()
        (r / "mail").chmod(0o1777)
        (r / "service.switch").write_text("hosts files\naliases files\n")
        (r / "hosts").write_text(f"127.0.0.1 {HOSTNAME} localhost\n")
        (r / "relay-domains").write_text("")
        (r / "local-host-names").write_text(f"{LOCAL_DOMAIN}\n{HOSTNAME}\n")
        etc = r / "etc"
        etc.mkdir()
        shutil.copy("/etc/passwd", etc / "passwd")
        with open(etc / "passwd", "a") as fh:
            for name in MAILBOXES:
                fh.write(f"{name}:x:{NOBODY}:{NOBODY}:{name}:/nonexistent:/usr/sbin/nologin\n")
        deliver = r / "deliver"
        deliver.write_text(
            "#!/bin/sh\n# Local mailer (F=f adds -f SENDER): the user is the last argument;"
            " 'gone' fails\n# permanently (EX_NOUSER), so Sendmail bounces the message.\n"
            'shift $(($# - 1))\n'
            'if [ "$1" = gone ]; then echo "mailbox closed" >&2; exit 67; fi\n'
            f'cat >> "{r}/mail/$1"\n')
        deliver.chmod(0o755)
        self._write_sasl()
        self.exe = r / "sendmail"
        shutil.copyfile(binary, self.exe)  # without setgid: LD_LIBRARY_PATH must work
        self.exe.chmod(0o755)
        (r / "sendmail.mc").write_text(self._mc(cf_dir))
        with open(r / "sendmail.cf", "w") as out:
            subprocess.run([m4, str(r / "sendmail.mc")], stdout=out, check=True, timeout=60)
        (r / "aliases").write_text("mailer-daemon: postmaster\n")
        # newaliases, with a qualified host name (else Sendmail waits a minute for one).
        subprocess.run(["unshare", "--uts", "sh", "-c", f'hostname {HOSTNAME} && exec "$@"',
                        "newaliases", str(self.exe), "-C", str(r / "sendmail.cf"), "-bi"],
                       env=self._env(), check=True, capture_output=True, timeout=60)

    @staticmethod
    def _env() -> dict[str, str]:
        env = dict(os.environ)
        if MTA_ROOT != "/":
            env["LD_LIBRARY_PATH"] = os.path.join(MTA_ROOT, "usr/lib/x86_64-linux-gnu")
        return env

    @property
    def log_file(self) -> Path:
        return self.root / "mail.log"

    def _write_sasl(self) -> None:
        sasl = self.root / "sasl"
        sasl.mkdir()
        sasldb = self.root / "sasldb2"
        (sasl / "Sendmail.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {sasldb}\n"
            "mech_list: PLAIN LOGIN\n")
        for user, password in SASL_USERS.items():
            subprocess.run([SASLPASSWD2, "-f", str(sasldb), "-c", "-p", "-u", HOSTNAME, user],
                           input=password, text=True, check=True, capture_output=True,
                           timeout=30)
        sasldb.chmod(0o600)

    def _mc(self, cf_dir: str) -> str:
        r = self.root
        return f"""\
divert(-1)
divert(0)dnl
include(`{cf_dir}/m4/cf.m4')dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `{HOSTNAME}')dnl
define(`confSERVICE_SWITCH_FILE', `{r}/service.switch')dnl
define(`confHOSTS_FILE', `{r}/hosts')dnl
define(`QUEUE_DIR', `{r}/queue')dnl
define(`confPID_FILE', `{r}/sendmail.pid')dnl
define(`STATUS_FILE', `{r}/statistics')dnl
dnl Without an alias database Sendmail checks no local user at RCPT ("will queue").
define(`ALIAS_FILE', `{r}/aliases')dnl
define(`confCR_FILE', `{r}/relay-domains')dnl
define(`confCW_FILE', `{r}/local-host-names')dnl
define(`confDONT_PROBE_INTERFACES', `true')dnl
dnl Everything lives under /tmp, which Sendmail's path checks call unsafe.
define(`confDONT_BLAME_SENDMAIL',
       `ClassFileInUnsafeDirPath,MapInUnsafeDirPath,RunProgramInUnsafeDirPath')dnl
dnl A busy test machine must not make Sendmail queue (and skip the user check) or refuse.
define(`confQUEUE_LA', `10000')dnl
define(`confREFUSE_LA', `10000')dnl
define(`confDELAY_LA', `0')dnl
define(`confDELIVERY_MODE', `background')dnl
define(`confMAX_MESSAGE_SIZE', `{SIZE_LIMIT}')dnl
define(`confAUTH_MECHANISMS', `PLAIN LOGIN')dnl
TRUST_AUTH_MECH(`PLAIN LOGIN')dnl
define(`LOCAL_MAILER_PATH', `{r}/deliver')dnl
define(`LOCAL_MAILER_ARGS', `deliver $u')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`use_cw_file')dnl
DAEMON_OPTIONS(`Family=inet, Name=MTA-v4, Addr={self.host}, Port={self.port}')dnl
MAILER(`local')dnl
MAILER(`smtp')dnl
LOCAL_RULESETS
HSubject: $>check_subject
Scheck_subject
R$* {REFUSE_SUBJECT} $*\t$#error $@ 5.7.1 $: "550 content refused"
"""

    def start(self) -> None:
        r = self.root
        self.syslog = SyslogCollector(r / "log.sock", self.log_file)
        (r / "olddev").mkdir()
        setup = (
            f"mount --bind /dev {r}/olddev && mount -t tmpfs -o mode=755 tmpfs /dev && "
            "for n in null zero random urandom; do touch /dev/$n && "
            f"mount --bind {r}/olddev/$n /dev/$n || exit 1; done && "
            f"ln -s {r}/log.sock /dev/log && "
            f"mount --bind {r}/etc/passwd /etc/passwd && "
            f"mount --bind {r}/sasl /usr/lib/sasl2 && "
            f"hostname {HOSTNAME} && exec \"$@\"")
        self.proc = subprocess.Popen(
            ["unshare", "--uts", "--mount", "sh", "-c", setup, "sm-mta", str(self.exe),
             "-L", "sm-mta", "-C", str(r / "sendmail.cf"), "-bD", "-q1s"],
            env=self._env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True)

        # Not with a test connection: it would be logged as a client's.
        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                out = self.proc.stdout.read() if self.proc.stdout else b""
                raise AssertionError(f"Sendmail exited: {out.decode(errors='replace')}")
            return tcp_listening(self.port)

        try:
            wait_until(listening, 30, f"Sendmail on {self.host}:{self.port}")
        except TimeoutError:
            raise AssertionError("Sendmail did not start: " + (
                self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            )) from None

    def wait_settled(self, deliveries: int, timeout: float = 60) -> None:
        """Until ``deliveries`` final ``stat=`` lines are logged and the queue is empty."""
        def done() -> bool:
            log = self.log_file.read_text(errors="replace") if self.log_file.exists() else ""
            finals = sum(1 for line in log.splitlines()
                         if ", stat=Sent" in line or "dsn=5." in line)
            queued = list((self.root / "queue").glob("qf*"))
            return finals >= deliveries and not queued
        wait_until(done, timeout, f"{deliveries} final deliveries by Sendmail")
        time.sleep(0.3)

    def stop(self) -> None:
        stop_group(self.proc)
        time.sleep(0.2)  # the last datagrams
        if self.syslog is not None:
            self.syslog.close()
            self.syslog = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
