"""A private, throw-away Exim 4 daemon that writes a real main log, for end-to-end tests.

Why like this: installing Exim would replace this host's MTA (Debian's packages conflict),
so the binary is unpacked under ``$SMTPGUARD_MTA_ROOT`` (tests/install-test-mtas.sh) and
copied without its setuid bit. It runs as root in a private mount namespace that lends it
its compiled-in user (Debian-exim) through copies of /etc/passwd and /etc/group, listens on
127.0.0.1:<free port> of the host (every 127.0.0.x is a distinct client), and keeps config,
spool, log and mailboxes in one temp dir.

The configuration (see ``_config``): example.test is the local domain with the mailboxes of
mta_scenario.MAILBOXES; only 127.0.0.1 and authenticated clients may relay; recipients are
verified at RCPT; "gone" is accepted at RCPT but fails on delivery (redirect ``:fail:``,
skipped while verifying), so Exim bounces the message; a message over SIZE_LIMIT and one with
the REFUSE_SUBJECT are refused after DATA; PLAIN and LOGIN check a password file.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from .mta_scenario import LOCAL_DOMAIN, MAILBOXES, REFUSE_SUBJECT, SASL_USERS, SIZE_LIMIT
from .postfix_instance import free_port, stop_group, wait_until

MTA_ROOT = os.environ.get("SMTPGUARD_MTA_ROOT", "/")
EXIM_USER = "Debian-exim"
# The log_selector the README names (Tests): without +received_recipients the <= line
# lists no recipients. "" is Exim's (and Debian's) default.
RECOMMENDED_SELECTOR = "+smtp_connection +smtp_no_mail +received_recipients +incoming_port +pid"


def exim_binary() -> str | None:
    for rel in ("usr/sbin/exim4", "usr/sbin/exim"):
        path = os.path.join(MTA_ROOT, rel)
        if os.path.isfile(path) and not os.path.islink(path):
            return path
    return None


def skip_unless_exim_usable() -> str:
    if os.geteuid() != 0:
        pytest.skip("needs root: a private Exim daemon runs in its own mount namespace")
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    binary = exim_binary()
    if binary is None:
        pytest.skip(f"no Exim under SMTPGUARD_MTA_ROOT={MTA_ROOT!r}: installing it would "
                    "replace this host's MTA; run tests/install-test-mtas.sh and export "
                    "SMTPGUARD_MTA_ROOT=/opt/smtpguard-test-mta/root")
    return binary


def _free_id() -> int:
    used = {p.pw_uid for p in pwd.getpwall()}
    return next(uid for uid in range(64000, 65000) if uid not in used)


class EximInstance:
    """One daemon under ``root``; ``start`` / ``stop``; the log is ``main_log``."""

    def __init__(self, binary: str, log_selector: str = RECOMMENDED_SELECTOR) -> None:
        self.binary = binary
        self.log_selector = log_selector
        self.root = Path(tempfile.mkdtemp(prefix="sg-exim-real-", dir="/tmp"))
        self.root.chmod(0o755)  # the Exim user must reach spool, log and mailboxes
        self.host = "127.0.0.1"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.wrapper: list[str] = []
        try:
            user = pwd.getpwnam(EXIM_USER)
            self.uid, self.gid = user.pw_uid, user.pw_gid
        except KeyError:
            self.uid = self.gid = _free_id()
            etc = self.root / "etc"
            etc.mkdir()
            shutil.copy("/etc/passwd", etc / "passwd")
            shutil.copy("/etc/group", etc / "group")
            with open(etc / "passwd", "a") as fh:
                fh.write(f"{EXIM_USER}:x:{self.uid}:{self.gid}:Exim:/nonexistent:"
                         "/usr/sbin/nologin\n")
            with open(etc / "group", "a") as fh:
                fh.write(f"{EXIM_USER}:x:{self.gid}:\n")
            self.wrapper = ["unshare", "--mount", "sh", "-c",
                            f"mount --bind {etc}/passwd /etc/passwd && "
                            f"mount --bind {etc}/group /etc/group && exec \"$@\"", "exim"]
        for sub in ("spool", "log", "mail"):
            (self.root / sub).mkdir()
            os.chown(self.root / sub, self.uid, self.gid)
        (self.root / "sasl-passwd").write_text(
            "".join(f"{user}: {password}\n" for user, password in SASL_USERS.items()))
        self.exe = self.root / "exim4"
        shutil.copyfile(binary, self.exe)  # no setuid bit: LD_LIBRARY_PATH must work
        self.exe.chmod(0o755)
        self.conf = self.root / "exim.conf"
        self.conf.write_text(self._config())

    @property
    def main_log(self) -> Path:
        return self.root / "log" / "mainlog"

    def _config(self) -> str:
        r = self.root
        mailboxes = " : ".join(MAILBOXES)
        return f"""\
primary_hostname = mx.{LOCAL_DOMAIN}
domainlist local_domains = {LOCAL_DOMAIN}
hostlist relay_from_hosts = 127.0.0.1
spool_directory = {r}/spool
log_file_path = {r}/log/%slog
pid_file_path = {r}/exim.pid
daemon_smtp_ports = {self.port}
local_interfaces = {self.host}
host_lookup =
rfc1413_hosts =
exim_path = {self.exe}
keep_environment = LD_LIBRARY_PATH
log_selector = {self.log_selector}
message_size_limit = {SIZE_LIMIT}
smtputf8_advertise_hosts = *
auth_advertise_hosts = *
acl_smtp_rcpt = acl_check_rcpt
acl_smtp_data = acl_check_data

begin acl
acl_check_rcpt:
  accept authenticated = *
  deny    message = relay not permitted
          domains = ! +local_domains
          hosts = ! +relay_from_hosts
  require verify = recipient
  accept

acl_check_data:
  deny    message = 550 5.7.1 content refused
          condition = ${{if match{{$h_subject:}}{{{REFUSE_SUBJECT}}}}}
  accept

begin routers
gone:
  driver = redirect
  domains = +local_domains
  local_parts = gone
  allow_fail
  data = :fail: mailbox closed
  no_verify

mailbox:
  driver = accept
  domains = +local_domains
  local_parts = {mailboxes}
  transport = mailbox_file

begin transports
mailbox_file:
  driver = appendfile
  file = {r}/mail/$local_part_data
  user = {EXIM_USER}

begin authenticators
plain:
  driver = plaintext
  public_name = PLAIN
  server_prompts = :
  server_condition = ${{if eq{{$auth3}}{{${{lookup{{$auth2}}lsearch{{{r}/sasl-passwd}}\
{{$value}}{{\\N*no such user*\\N}}}}}}}}
  server_set_id = $auth2

login:
  driver = plaintext
  public_name = LOGIN
  server_prompts = Username:: : Password::
  server_condition = ${{if eq{{$auth2}}{{${{lookup{{$auth1}}lsearch{{{r}/sasl-passwd}}\
{{$value}}{{\\N*no such user*\\N}}}}}}}}
  server_set_id = $auth1
"""

    def start(self) -> None:
        env = dict(os.environ)
        if MTA_ROOT != "/":
            env["LD_LIBRARY_PATH"] = os.path.join(MTA_ROOT, "usr/lib/x86_64-linux-gnu")
        self.proc = subprocess.Popen([*self.wrapper, str(self.exe), "-C", str(self.conf), "-bdf"],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     start_new_session=True)

        # Not a test connection: it would be logged and counted as a client's.
        def listening() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(self.failure("Exim exited"))
            log = self.main_log.read_text(errors="replace") if self.main_log.exists() else ""
            return " daemon started: " in log

        try:
            wait_until(listening, 20, f"Exim on {self.host}:{self.port}")
        except TimeoutError:
            raise AssertionError(self.failure("Exim did not start")) from None

    def failure(self, what: str) -> str:
        panic = self.root / "log" / "paniclog"
        out = b""
        if self.proc is not None and self.proc.poll() is not None and self.proc.stdout:
            out = self.proc.stdout.read()
        return (f"{what}: {out.decode(errors='replace')}"
                f"{panic.read_text() if panic.exists() else ''}")

    def wait_settled(self, completed: int, timeout: float = 30) -> None:
        """Until ``completed`` messages have left the queue (``Completed`` lines) and the
        spool input directory is empty."""
        def done() -> bool:
            log = self.main_log.read_text(errors="replace") if self.main_log.exists() else ""
            spool = self.root / "spool" / "input"
            queued = [p for p in spool.rglob("*-H")] if spool.exists() else []
            return log.count(" Completed") >= completed and not queued
        try:
            wait_until(done, timeout, f"{completed} messages completed by Exim")
        finally:
            time.sleep(0.2)

    def stop(self) -> None:
        stop_group(self.proc)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
