#!/usr/bin/env python3
"""Seeded, realistic Postfix log of one MX host, with exact ground truth.

Why: the replay counters, the parser's join logic and (later) anomaly detection need a
big log whose true per-key counts are known exactly and which carries every pitfall a
real MX log has: interleaved sessions, reused short queue ids, long queue ids, deferred
retries that re-log ``from=``, Postfix's own bounces, content-filter re-injection,
postscreen, NOQUEUE and queued rejects, SASL failures, other programs' lines.

Usage::

    python bench/generate_log.py --lines 1000000 --seed 42 --out big.log \
        --truth big.truth.json [--format bsd|maillog|rfc3339] [--anomalies]

``--model isp`` writes the second, independent traffic model instead (an access ISP's
gateway: bench/traffic_isp.py, its own options and ground truth).

The same seed and options always give byte-identical output. Lines are in time order;
the file holds ``--lines`` lines (a few more: the last session is always completed)
spread over ``--hours`` (default 36) from ``--start`` (default 2026-03-02T00:00 in
``--tz``, default UTC), with a day/night rhythm.

Ground truth (``--truth FILE``, JSON) -- THE CONTRACT ``replay --json`` MUST MEET
================================================================================

``counts[dimension][key][metric]`` holds, for every key that occurs, all five metrics
``connections, messages, recipients, rejects, auth_failures`` (zeros included).

Dimensions and keys
    client_ip       canonical IP text (``ipaddress`` form, IPv6 compressed)
    client_net      IPv4 ``a.b.c.0/24``; IPv6 ``/64`` (``2001:db8:a:b::/64``) -- the
                    sum of its client_ip rows
    sender          envelope sender as logged, lower-cased, without ``<>``; the null
                    sender is ``"<>"``; quoted local parts keep their quotes
    sender_domain   the part after the last ``@`` of a sender key (null sender: none)
                    -- the sum of its sender rows
    sasl_user       ``sasl_username=`` value exactly as logged (generated lower-case)
    recipient_domain  domain of an accepted envelope recipient / rejected ``to=``

Metrics
    connections     smtpd ``connect from name[ip]`` lines, every smtpd service
                    (``postfix/smtpd``, ``postfix/submission/smtpd``,
                    ``postfix/smtps/smtpd``) INCLUDING the content filter's
                    re-injection sessions on 127.0.0.1:10025 (key ``127.0.0.1``).
                    postscreen ``CONNECT from`` lines are NOT connections.
                    client_ip/client_net only.
    messages        messages that entered the system: counted ONCE per queue id, at
                    qmgr's first ``QID: from=<...>, size=..., nrcpt=N (queue active)``
                    (deferred retries log that line again: not counted again).
                    Counted: messages received by smtpd from a client (client_ip,
                    client_net, sender, sender_domain, sasl_user when the ``client=``
                    line carried ``sasl_username=``, recipient_domain) and messages
                    submitted locally via pickup (``QID: uid=N from=<...>``; no client:
                    sender, sender_domain, recipient_domain only).
                    NOT counted: Postfix's own non-delivery notifications (the NEWQID
                    after ``sender non-delivery notification: NEWQID``), and the
                    content filter's re-injected copy (``NEWQID: client=localhost
                    [127.0.0.1], orig_queue_id=OLDQID, orig_client=...``) -- that
                    message was already counted under OLDQID for its real client.
                    Messages whose client vanished before the end of DATA (``client=``
                    logged, no qmgr line) are not messages.
    recipients      the ``nrcpt`` of every counted message (accepted envelope
                    recipients; rejected RCPTs are not in it). For recipient_domain:
                    accepted envelope recipients in that domain, once per message --
                    the envelope recipient is ``orig_to=`` when an alias rewrote it,
                    else ``to=``; retries and alias fan-out do not add recipients.
                    recipient_domain ``messages``: counted messages with at least one
                    accepted recipient in that domain.
    rejects         ``reject:`` lines (``NOQUEUE: reject: ...`` and ``QID: reject:
                    ...`` from smtpd, and postscreen's ``NOQUEUE: reject:`` with its
                    comma-separated ``from=<>, to=<>``), under the client IP, the
                    ``from=`` sender (when the line has one), the ``to=`` domain.
                    ``milter-reject``/``reject_warning`` are never generated.
    auth_failures   ``warning: name[ip]: SASL <MECH> authentication failed: ...``
                    lines, under the client IP, and under sasl_user only when the line
                    ends with ``, sasl_username=<user>``.
    Metrics a dimension cannot have are 0 (connections and auth_failures for
    sender/sender_domain/recipient_domain, connections for sasl_user; sasl_user
    rejects are 0 because authenticated sessions are never rejected here).

Other fields: ``generator`` (options), ``span``, ``site`` (MTA host, local domains),
``line_kinds`` (lines per kind), ``stats`` (queue-id reuse, retries, bounces...),
``normal_heavy`` (steady legitimate high-volume keys: never anomalies),
``normal_sasl_users``, and ``anomalies`` (only with ``--anomalies``): one entry per
anomalous key: ``kind, dimension, key, start, start_iso, end, end_iso, details``
(epoch seconds UTC; ISO in UTC). Every key not listed in ``anomalies`` is normal.
Anomalies have fixed sizes ("hundreds", scaled by ``--anomaly-scale``) and happen
at random times in the busy part (09:00-17:00 local) of the second day of the span.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import heapq
import json
import math
import random
import sys
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, NamedTuple
from zoneinfo import ZoneInfo

GENERATOR_VERSION = 1

METRICS = ("connections", "messages", "recipients", "rejects", "auth_failures")
CONN, MSG, RCPT, REJ, AUTH = range(5)
DIMENSIONS = (
    "client_ip", "client_net", "sender", "sender_domain", "sasl_user", "recipient_domain",
)

MTA_HOST = "mx1"
MY_NAME = "mx1.example.net"
MY_IP4 = "192.0.2.25"
MY_IP6 = "2001:db8:25::25"
LOCAL_DOMAINS = ("example.net", "example.org", "shop.example.com")
LMTP_RELAY = f"{MY_NAME}[private/dovecot-lmtp]"
FILTER_RELAY = "127.0.0.1[127.0.0.1]:10025"
LOCALHOST_CLIENT = "localhost[127.0.0.1]"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
SAFE_CHARS = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"  # Postfix long-id alphabet

FIRST = (
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "mallory", "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter",
    "wendy", "anna", "ben", "chris", "dora", "emil", "fiona", "georg", "hanna", "igor",
    "julia", "kai", "lena", "max", "nina", "oscar", "paula", "quinn", "rosa", "sven", "tina",
    "uwe", "vera", "yuki", "zoe", "hiro", "mei", "raj", "sara", "tom", "lars", "ines", "omar",
)
LAST = (
    "smith", "jones", "brown", "meyer", "schmidt", "tanaka", "suzuki", "sato", "garcia",
    "martin", "rossi", "novak", "kowalski", "nielsen", "dubois", "silva", "kim", "lee", "chen",
    "wang", "ito", "kato", "weber", "wagner", "becker", "hoffmann", "klein", "wolf", "young",
    "king", "moreau", "jensen", "berg", "costa", "ferrari", "horvat", "popescu", "yilmaz",
)
WORDS = (
    "acme", "globex", "initech", "umbrella", "hooli", "vandelay", "wayne", "stark", "wonka",
    "tyrell", "cyberdyne", "soylent", "aperture", "oscorp", "gringotts", "monarch", "duff",
    "contoso", "fabrikam", "northwind", "tailspin", "adatum", "litware", "proseware",
    "woodgrove", "alpine", "cedar", "delta", "falcon", "granite", "harbor", "island", "jade",
    "kestrel", "lumen", "maple", "nova", "orbit", "pine", "quartz", "river", "summit", "terra",
    "urban", "vertex", "willow", "zenith", "amber", "birch", "coral", "dune", "ember", "fjord",
)
ROLES = ("info", "sales", "support", "office", "billing", "contact", "hr", "jobs", "news")
FREEMAIL = (
    "bigmail.example", "webpost.example", "mailhub.example", "inbox.test", "postbox.example",
)
FORGED = ("free-mail.test", "cheapmail.example", "mailbox-365.test", "webmail-online.example")
BRUTE_NAMES = (
    "admin", "test", "user", "info", "sales", "support", "office", "webmaster", "postmaster",
    "contact", "mail", "backup", "guest", "oracle", "root", "scanner", "marketing", "demo",
    "noreply", "accounting", "service", "manager", "www", "ftp", "smtp", "qwerty", "student",
)
BOT_HELOS = ("User", "ylmf-pc", "localhost", "WIN-3N8QH6ML1B", "ADMIN-PC", "dell", "home")
TLS13 = (
    "TLSv1.3 with cipher TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 "
    "server-signature RSA-PSS (2048 bits) server-digest SHA256"
)
TLS12 = "TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384 (256/256 bits)"
CMD_ORDER = (
    "helo", "ehlo", "starttls", "auth", "mail", "rcpt", "data", "bdat", "rset", "noop",
    "vrfy", "quit", "unknown",
)

# Reject reply texts by class: (code, enhanced, text with {rcpt}/{helo}/{ip}/{sender}).
REJECTS = {
    "unknown_user": ("550", "5.1.1",
                     "<{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table"),
    "relay": ("454", "4.7.1", "<{rcpt}>: Relay access denied"),
    "relay554": ("554", "5.7.1", "<{rcpt}>: Relay access denied"),
    "helo": ("504", "5.5.2", "<{helo}>: Helo command rejected: need fully-qualified hostname"),
    "client": ("450", "4.7.25", "Client host rejected: cannot find your hostname, [{ip}]"),
    "sender": ("450", "4.1.8", "<{sender}>: Sender address rejected: Domain not found"),
}


# ----------------------------------------------------------------------------- helpers


def fd(x: float) -> str:
    """Postfix's terse delay text (``0``, ``0.05``, ``0.5``, ``1.8``, ``30``)."""
    if x < 0.005:
        return "0"
    if x < 1:
        s = f"{x:.2f}".rstrip("0")
        return s[:-1] if s.endswith(".") else s
    if x < 10:
        s = f"{x:.1f}"
        return s[:-2] if s.endswith(".0") else s
    return str(int(x + 0.5))


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw; exact for small means, normal approximation above 30."""
    if lam <= 0:
        return 0
    if lam < 30:
        limit = math.exp(-lam)
        k, p = 0, rng.random()
        while p > limit:
            k += 1
            p *= rng.random()
        return k
    return max(0, int(rng.gauss(lam, math.sqrt(lam)) + 0.5))


def day_level(hour: float) -> float:
    """Inbound mail volume by local hour: trough 02:30, peak 14:30, ratio ~16."""
    x = (1 - math.cos(2 * math.pi * (hour - 2.5) / 24)) / 2
    return 0.06 + 0.94 * x**1.3


def office_level(hour: float) -> float:
    """Submission / IMAP use: an office day, almost nothing at night."""
    x = (1 - math.cos(2 * math.pi * (hour - 1.5) / 24)) / 2
    return 0.04 + 0.96 * x**3


def zipf_cum(n: int, s: float, q: float) -> list[float]:
    """Cumulative Zipf-Mandelbrot weights 1/(k+q)^s for random.choices."""
    acc, out = 0.0, []
    for k in range(1, n + 1):
        acc += 1.0 / (k + q) ** s
        out.append(acc)
    return out


def mixcase(addr: str) -> str:
    """``john.smith@acme.example`` -> ``John.Smith@Acme.EXAMPLE`` (same key, lower-cased)."""
    local, _, domain = addr.rpartition("@")
    parts = domain.split(".")
    return ".".join(p.capitalize() for p in local.split(".")) + "@" + ".".join(
        parts[:-1] + [parts[-1].upper()]
    )


def sender_key(logged: str) -> str:
    """The truth key of a logged sender (lower-cased; null sender ``<>``)."""
    return logged.lower() if logged else "<>"


def domain_of(addr: str) -> str | None:
    i = addr.rfind("@")
    return addr[i + 1 :].lower() if 0 <= i < len(addr) - 1 else None


def net_of(ip: str) -> str:
    """client_net key: IPv4 /24, IPv6 /64 (generated IPv6 addresses keep the /64 in
    their first four groups, written without ``::`` inside them)."""
    if ":" in ip:
        head = ip.split("::")[0].split(":")
        return ":".join((head + ["0"] * 4)[:4]) + "::/64"
    a, b, c, _ = ip.split(".")
    return f"{a}.{b}.{c}.0/24"


def long_qid(t: float, rng: random.Random) -> str:
    """enable_long_queue_ids form: base-52 seconds (6), base-52 usec (4), 'z', inode."""
    sec, usec = int(t), int((t % 1) * 1e6)
    out = []
    while sec:
        sec, r = divmod(sec, 52)
        out.append(SAFE_CHARS[r])
    head = "".join(reversed(out)).rjust(6, "0")
    us = []
    for _ in range(4):
        usec, r = divmod(usec, 52)
        us.append(SAFE_CHARS[r])
    inode = rng.randrange(51**2, 51**4)
    ino = []
    while inode:
        inode, r = divmod(inode, 51)
        ino.append(SAFE_CHARS[r])
    return head + "".join(reversed(us)) + "z" + "".join(reversed(ino))


# ----------------------------------------------------------------------------- truth


class Truth:
    """Exact per-key counts, bumped where the line that defines them is emitted."""

    def __init__(self) -> None:
        self.ip: dict[str, list[int]] = {}
        self.sender: dict[str, list[int]] = {}
        self.sasl: dict[str, list[int]] = {}
        self.rdom: dict[str, list[int]] = {}
        self.stats: dict[str, int] = {}

    @staticmethod
    def _bump(table: dict[str, list[int]], key: str, idx: int, n: int = 1) -> None:
        row = table.get(key)
        if row is None:
            row = table[key] = [0, 0, 0, 0, 0]
        row[idx] += n

    def stat(self, name: str, n: int = 1) -> None:
        self.stats[name] = self.stats.get(name, 0) + n

    def connection(self, ip: str) -> None:
        self._bump(self.ip, ip, CONN)

    def message(self, ip: str | None, sender: str, sasl: str | None, rcpts: list[str]) -> None:
        n = len(rcpts)
        key = sender_key(sender)
        self._bump(self.sender, key, MSG)
        self._bump(self.sender, key, RCPT, n)
        if ip is not None:
            self._bump(self.ip, ip, MSG)
            self._bump(self.ip, ip, RCPT, n)
        if sasl is not None:
            self._bump(self.sasl, sasl, MSG)
            self._bump(self.sasl, sasl, RCPT, n)
        seen: list[str] = []
        for r in rcpts:
            d = domain_of(r)
            if d is None:
                continue
            self._bump(self.rdom, d, RCPT)
            if d not in seen:
                seen.append(d)
                self._bump(self.rdom, d, MSG)
        self.stat("messages")

    def reject(self, ip: str, sender: str | None, rcpt: str | None) -> None:
        self._bump(self.ip, ip, REJ)
        if sender is not None:
            self._bump(self.sender, sender_key(sender), REJ)
        if rcpt is not None:
            d = domain_of(rcpt)
            if d is not None:
                self._bump(self.rdom, d, REJ)
        self.stat("rejects")

    def auth_failure(self, ip: str, user: str | None) -> None:
        self._bump(self.ip, ip, AUTH)
        if user is not None:
            self._bump(self.sasl, user, AUTH)
        self.stat("auth_failures")

    def counts(self) -> dict[str, dict[str, list[int]]]:
        """All six dimensions; client_net and sender_domain summed from their parts."""
        nets: dict[str, list[int]] = {}
        for ip, row in self.ip.items():
            _add_row(nets, net_of(ip), row)
        sdoms: dict[str, list[int]] = {}
        for s, row in self.sender.items():
            d = domain_of(s)
            if d is not None:
                _add_row(sdoms, d, row)
        return {
            "client_ip": self.ip, "client_net": nets, "sender": self.sender,
            "sender_domain": sdoms, "sasl_user": self.sasl, "recipient_domain": self.rdom,
        }


def _add_row(table: dict[str, list[int]], key: str, row: list[int]) -> None:
    acc = table.get(key)
    if acc is None:
        table[key] = list(row)
    else:
        for i, v in enumerate(row):
            acc[i] += v


# ----------------------------------------------------------------------------- world


class Host(NamedTuple):
    """An SMTP client: ``client`` is the ``name[ip]`` Postfix logs."""

    ip: str
    client: str
    helo: str
    domain: str


class User(NamedTuple):
    """A mailbox owner who submits mail with SASL from a few home/mobile hosts."""

    sasl: str
    address: str
    hosts: tuple[Host, ...]
    method: str


class Heavy(NamedTuple):
    """A steady high-volume legitimate sender (provider, newsletter, bank, own app)."""

    label: str
    hosts: tuple[Host, ...]
    domain: str
    mode: str  # "pool" (many users), "fixed" address, "verp" (per-message bounce address)
    fixed: str
    weight: float
    allowlisted: bool


@dataclass
class Config:
    """Generator options (the CLI flags)."""

    lines: int = 1_000_000
    seed: int = 42
    start: str = "2026-03-02T00:00"
    hours: float = 36.0
    tz: str = "UTC"
    fmt: str = "bsd"
    anomalies: bool = False
    anomaly_scale: float = 1.0
    long_qid_share: float = 0.05
    normal_hosts: int = 30_000
    users: int = 400


def rand_ip4(rng: random.Random) -> str:
    """An external IPv4 address: mostly 100.64/10 (not RFC 1918), some 198.18/15 and
    TEST-NETs. 100.127/16 and 198.19.250-255 are kept for anomalies."""
    r = rng.random()
    if r < 0.85:
        return f"100.{rng.randint(64, 126)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
    if r < 0.95:
        b = rng.randint(18, 19)
        c = rng.randint(0, 255) if b == 18 else rng.randint(0, 249)
        return f"198.{b}.{c}.{rng.randint(1, 254)}"
    return f"{rng.choice(('192.0.2', '198.51.100', '203.0.113'))}.{rng.randint(1, 254)}"


def rand_ip6(rng: random.Random) -> str:
    """A documentation-prefix IPv6 address in canonical compressed form."""
    return (f"2001:db8:{rng.randint(1, 0xFFFF):x}:{rng.randint(1, 0xFFFF):x}"
            f"::{rng.randint(1, 0xFFFF):x}")


def dyn_name(ip: str, isp: int) -> str:
    if ":" in ip:
        return f"dyn-{ip.replace(':', '-')}.isp{isp}.example"
    return f"{ip.replace('.', '-')}.dyn.isp{isp}.example"


def make_domain(rng: random.Random, i: int) -> str:
    w = rng.choice(WORDS)
    r = rng.random()
    if r < 0.5:
        return f"{w}{i % 997}.example"
    if r < 0.8:
        return f"{w}-{rng.choice(WORDS)}.test"
    return f"{w}{i % 89}.example.com"


def make_normal_host(rng: random.Random, i: int) -> Host:
    """A legitimate remote mail server (or a small office box) of its own domain."""
    ip = rand_ip6(rng) if rng.random() < 0.08 else rand_ip4(rng)
    domain = make_domain(rng, i)
    r = rng.random()
    if r < 0.7:
        name = f"{rng.choice(('mail', 'mx', 'smtp', 'out', 'mta'))}{rng.randint(1, 9)}.{domain}"
        helo = name
    elif r < 0.85:
        name, helo = "unknown", f"mail.{domain}"
    else:
        name = dyn_name(ip, rng.randint(1, 40))
        helo = name
    return Host(ip, f"{name}[{ip}]", helo, domain)


def make_heavies(rng: random.Random) -> list[Heavy]:
    """The steady heavy senders listed in the truth as normal_heavy."""

    def hosts(net: str, lows: Iterable[int], fmt: str, domain: str) -> tuple[Host, ...]:
        out = []
        for k, last in enumerate(lows):
            ip = f"{net}.{last}"
            name = fmt.format(k=k + 1)
            out.append(Host(ip, f"{name}[{ip}]", name, domain))
        return tuple(out)

    return [
        Heavy("bigmail", hosts("198.18.7", range(10, 18), "out{k}.mta.bigmail.example",
                               "bigmail.example"), "bigmail.example", "pool", "", 0.34, False),
        Heavy("shop-newsletter", hosts("100.70.3", (21, 22, 23, 24, 25),
                                       "news{k}.shop-one.example", "shop-one.example"),
              "shop-one.example", "fixed", "newsletter@shop-one.example", 0.18, False),
        Heavy("social-notify", hosts("100.66.4", range(40, 46), "mail-o{k}.notify.social.example",
                                     "notify.social.example"),
              "notify.social.example", "verp", "", 0.2, False),
        Heavy("bank-alerts", hosts("198.18.120", (5, 6), "smtp{k}.alerts.bank.example",
                                   "alerts.bank.example"),
              "alerts.bank.example", "fixed", "no-reply@alerts.bank.example", 0.08, False),
        Heavy("partner-relay", hosts("100.80.9", (77,), "relay.partner.example",
                                     "partner.example"),
              "partner.example", "pool", "", 0.1, False),
        Heavy("own-webapp", hosts("10.20.30", (40,), "app1.example.net", "example.net"),
              "example.net", "fixed", "noreply@example.net", 0.1, True),
    ]


# ----------------------------------------------------------------------------- processes


class ProcPool:
    """The processes of one Postfix service. A process serves one client (or one
    delivery) at a time and is reused until idle for max_idle seconds or max_use
    times -- so one pid never has two overlapping sessions, as in real logs."""

    __slots__ = ("idle", "new_pid", "max_idle", "max_use")

    def __init__(self, new_pid: Callable[[], int], max_idle: float = 100.0,
                 max_use: int = 100) -> None:
        self.idle: list[tuple[float, int, int]] = []
        self.new_pid = new_pid
        self.max_idle = max_idle
        self.max_use = max_use

    def acquire(self, t: float) -> tuple[int, int]:
        """(pid, uses so far) of a process free at time t."""
        idle = self.idle
        while idle and idle[0][0] < t - self.max_idle:
            heapq.heappop(idle)
        if idle and idle[0][0] <= t:
            _, pid, uses = heapq.heappop(idle)
            return pid, uses
        return self.new_pid(), 0

    def release(self, pid: int, uses: int, t: float) -> None:
        if uses + 1 < self.max_use:
            heapq.heappush(self.idle, (t, pid, uses + 1))


class Sess:
    """One smtpd session being generated: its clock, pid and command counters."""

    __slots__ = ("t", "pid", "uses", "pool", "tag", "host", "ip", "helo", "proto", "cmds", "rtt",
                 "last")

    def __init__(self, t: float, pool: ProcPool, tag: str, host: Host, rtt: float) -> None:
        self.t = t
        self.pool = pool
        self.pid, self.uses = pool.acquire(t)
        self.tag = f"{tag}[{self.pid}]: "
        self.host = host
        self.ip = host.ip
        self.helo = host.helo
        self.proto = "ESMTP"
        self.cmds: dict[str, list[int]] = {}
        self.rtt = rtt
        self.last = "CONNECT"  # what ``lost connection after X`` names

    def cmd(self, name: str, ok: bool = True, n: int = 1) -> None:
        c = self.cmds.get(name)
        if c is None:
            c = self.cmds[name] = [0, 0]
        if ok:
            c[0] += n
        c[1] += n
        self.last = "END-OF-MESSAGE" if name == "data" and ok else name.upper()

    def counters(self) -> str:
        """Postfix 3.x session fingerprint: ``ehlo=1 rcpt=0/1 ... commands=2/3``."""
        parts, ok_sum, total = [], 0, 0
        for name in CMD_ORDER:
            c = self.cmds.get(name)
            if c is None:
                continue
            ok_sum += c[0]
            total += c[1]
            parts.append(f"{name}={c[0]}" if c[0] == c[1] else f"{name}={c[0]}/{c[1]}")
        parts.append(f"commands={ok_sum}" if ok_sum == total else f"commands={ok_sum}/{total}")
        return " ".join(parts)


# ----------------------------------------------------------------------------- generator


class Generator:
    """Event-driven simulation: sessions start in time order, each session pushes all
    its (future) lines onto a heap, and the heap is written out in time order -- so
    concurrent sessions interleave exactly as a syslog would record them."""

    def __init__(self, cfg: Config) -> None:
        if cfg.fmt not in ("bsd", "maillog", "rfc3339"):
            raise ValueError(f"unknown format {cfg.fmt!r}")
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.tz = ZoneInfo(cfg.tz) if cfg.tz.upper() != "UTC" else dt.UTC
        start = dt.datetime.fromisoformat(cfg.start)
        if start.tzinfo is None:
            start = start.replace(tzinfo=self.tz)
        self.t_start = start.timestamp()
        self.minutes = max(1, int(math.ceil(cfg.hours * 60)))
        self.t_end = self.t_start + 60 * self.minutes
        self.others = cfg.fmt != "maillog"  # postlogd's maillog_file only has Postfix
        self.truth = Truth()
        self.heap: list[tuple[float, int, str]] = []
        self.seq = 0
        self.nlines = 0
        self.kinds: dict[str, int] = {}
        self._pid = 1000 + self.rng.randint(0, 5000)
        self._setup_processes()
        self._setup_world()
        self.live_qids: dict[str, float] = {}
        self.freed_qids: list[tuple[float, str]] = []
        self.ps_cache: dict[str, float] = {}
        self.anvil_window: dict[str, int] = {}
        self.last_line_t = self.t_start
        self.last_start_t = self.t_start
        self.bad_kinds = self._bad_kinds()
        self.anomalies = Anomalies(self)

    # ---- set-up

    def new_pid(self) -> int:
        self._pid += self.rng.randint(1, 9)
        if self._pid > 4_000_000:
            self._pid = 1000
        return self._pid

    def _setup_processes(self) -> None:
        np = self.new_pid
        self.pools = {name: ProcPool(np) for name in (
            "smtpd", "submission", "smtps", "reinject", "cleanup", "smtp", "lmtp", "virtual",
            "local", "bounce")}
        self.qmgr_pid = np()
        self.pickup_pid = np()
        self.postscreen_pid = np()
        self.anvil_pid = np()
        self.scache_pid = np()
        self.opendkim_pid = np()
        self.dovecot_pid = np()

    def _setup_world(self) -> None:
        rng, cfg = self.rng, self.cfg
        self.hosts = [make_normal_host(rng, i) for i in range(cfg.normal_hosts)]
        self.host_cw = zipf_cum(len(self.hosts), 1.05, 25.0)
        self.heavies = make_heavies(rng)
        self.heavy_cw = list(_accumulate(h.weight for h in self.heavies))
        self._setup_mailboxes()
        self._setup_users()
        self.bad_hosts = [self._bad_host() for _ in range(6000)]
        self.bad_cw = zipf_cum(len(self.bad_hosts), 0.8, 10.0)
        self.ext_domains = list(FREEMAIL) + [h.domain for h in self.hosts[:3000]]
        self.ext_cw = zipf_cum(len(self.ext_domains), 1.0, 2.0)

    def _setup_mailboxes(self) -> None:
        rng = self.rng
        boxes: list[str] = []
        seen: set[str] = set()
        while len(boxes) < 4000:
            d = LOCAL_DOMAINS[0] if rng.random() < 0.7 else rng.choice(LOCAL_DOMAINS[1:])
            f, last = rng.choice(FIRST), rng.choice(LAST)
            local = f"{f}.{last}" if rng.random() < 0.7 else f"{f}{rng.randint(1, 99)}"
            addr = f"{local}@{d}"
            if addr not in seen:
                seen.add(addr)
                boxes.append(addr)
        for d in LOCAL_DOMAINS:
            for role in (*ROLES[:5], "postmaster", "abuse"):
                addr = f"{role}@{d}"
                if addr not in seen:
                    seen.add(addr)
                    boxes.append(addr)
        self.mailboxes = boxes
        self.mailbox_set = seen
        self.mailbox_cw = zipf_cum(len(boxes), 0.9, 5.0)

    def _setup_users(self) -> None:
        rng = self.rng
        users = []
        for i in range(self.cfg.users):
            addr = self.mailboxes[i * 7 % 4000]
            sasl = addr if rng.random() < 0.75 else addr.split("@")[0].replace(".", "")
            n = 1 + (rng.random() < 0.5) + (rng.random() < 0.3)
            hosts = []
            for _ in range(n):
                ip = rand_ip6(rng) if rng.random() < 0.2 else rand_ip4(rng)
                name = dyn_name(ip, rng.randint(1, 40)) if rng.random() < 0.7 else "unknown"
                hosts.append(Host(ip, f"{name}[{ip}]", f"[{ip}]" if ":" not in ip else name,
                                  domain_of(addr) or ""))
            users.append(User(sasl, addr, tuple(hosts), "PLAIN" if rng.random() < 0.8 else "LOGIN"))
        self.users = users
        self.user_cw = zipf_cum(len(users), 1.0, 8.0)

    def _bad_host(self) -> Host:
        rng = self.rng
        ip = rand_ip6(rng) if rng.random() < 0.05 else rand_ip4(rng)
        name = "unknown" if rng.random() < 0.75 else dyn_name(ip, rng.randint(41, 90))
        return Host(ip, f"{name}[{ip}]", rng.choice(BOT_HELOS), "")

    # ---- output primitives

    def emit(self, t: float, kind: str, text: str) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, text))
        self.nlines += 1
        k = self.kinds
        k[kind] = k.get(kind, 0) + 1

    def other(self, t: float, kind: str, text: str) -> None:
        """A line of a non-Postfix program (dropped in maillog format)."""
        if self.others:
            self.emit(t, kind, text)

    def sm(self, s: Sess, kind: str, msg: str) -> None:
        """An smtpd line of session s at its current time."""
        self.emit(s.t, kind, s.tag + msg)

    def step(self, s: Sess, k: float = 1.0) -> float:
        s.t += s.rtt * k * (0.5 + self.rng.random())
        return s.t

    # ---- queue ids

    def new_qid(self, t: float) -> str:
        rng, live = self.rng, self.live_qids
        if rng.random() < self.cfg.long_qid_share:
            self.truth.stat("long_queue_ids")
            qid = long_qid(t, rng)
            live[qid] = 1e18
            return qid
        freed = self.freed_qids
        if freed and freed[0][0] < t - 1.0 and rng.random() < 0.04:
            qid = heapq.heappop(freed)[1]
            if live.get(qid, 0.0) < t - 1.0:
                live[qid] = 1e18
                self.truth.stat("queue_ids_reused")
                return qid
        while True:
            qid = f"{int((t % 1) * 1e6):05X}{rng.randrange(0x1000, 0x1000000):X}"
            if live.get(qid, 0.0) < t - 1.0:
                live[qid] = 1e18
                return qid

    def retire_qid(self, qid: str, t_removed: float) -> None:
        """The queue id is free again after its ``removed`` line (short ids get reused)."""
        self.live_qids[qid] = t_removed
        if "z" not in qid and self.rng.random() < 0.25 and len(self.freed_qids) < 4000:
            heapq.heappush(self.freed_qids, (t_removed, qid))

    def message_id(self, t: float, domain: str) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.4:
            return f"<{int(t * 1000):x}.{rng.getrandbits(40):010x}@{domain}>"
        if r < 0.7:
            h = f"{rng.getrandbits(128):032x}"
            return f"<{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}@{domain}>"
        return f"<CA+{base64.b64encode(rng.randbytes(24), b'-_').decode()}@mail.{domain}>"

    # ---- addresses

    def pick_host(self) -> Host:
        return self.rng.choices(self.hosts, cum_weights=self.host_cw)[0]

    def pick_mailbox(self) -> str:
        return self.rng.choices(self.mailboxes, cum_weights=self.mailbox_cw)[0]

    def pick_ext_domain(self) -> str:
        return self.rng.choices(self.ext_domains, cum_weights=self.ext_cw)[0]

    def unknown_local(self) -> str:
        rng = self.rng
        while True:
            local = rng.choice((
                f"{rng.choice(FIRST)}{rng.randint(100, 9999)}",
                f"{rng.choice(FIRST)}.{rng.choice(WORDS)}",
                f"{''.join(rng.choices('abcdefghijklmnopqrstuvwxyz', k=rng.randint(4, 9)))}",
            ))
            addr = f"{local}@{rng.choice(LOCAL_DOMAINS)}"
            if addr not in self.mailbox_set:
                return addr

    def person_at(self, domain: str) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.6:
            return f"{rng.choice(FIRST)}.{rng.choice(LAST)}@{domain}"
        if r < 0.85:
            return f"{rng.choice(FIRST)}@{domain}"
        return f"{rng.choice(ROLES)}@{domain}"

    def styled(self, addr: str) -> str:
        """How a sender is written on the wire: some mixed case, a few quoted locals."""
        r = self.rng.random()
        if r < 0.04:
            return mixcase(addr)
        if r < 0.045:
            # only forms that need quoting (Postfix logs others unquoted)
            local, _, domain = addr.rpartition("@")
            if "." in local and self.rng.random() < 0.5:
                return f'"{local.replace(".", " ")}"@{domain}'
            return f'"{local}..x"@{domain}'
        return addr

    def forged_sender(self) -> str:
        rng = self.rng
        d = rng.choice((f"{rng.choice(WORDS)}{rng.randint(1, 9999)}.test",
                        rng.choice(FORGED), f"{rng.choice(WORDS)}-mail.example"))
        local = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=rng.randint(5, 11)))
        return f"{local}@{d}"

    # ---- smtpd session pieces

    def open_session(self, t: float, host: Host, service: str = "smtpd",
                     postscreen: bool = True, allow: bool = False, warn: str = "") -> Sess:
        """postscreen CONNECT/PASS (port 25), then smtpd ``connect from``."""
        rng = self.rng
        if postscreen:
            t = self.postscreen_pass(t, host, allow)
        tag = {"smtpd": "postfix/smtpd", "submission": "postfix/submission/smtpd",
               "smtps": "postfix/smtps/smtpd", "reinject": "postfix/smtpd"}[service]
        rtt = rng.uniform(0.005, 0.2) if rng.random() < 0.85 else rng.uniform(0.2, 1.5)
        s = Sess(t, self.pools[service], tag, host, rtt)
        if warn:
            self.sm(s, "smtpd_other", warn)
            s.t += 0.0002
        self.sm(s, "smtpd_connect", f"connect from {host.client}")
        self.truth.connection(host.ip)
        if service == "smtpd":
            w = self.anvil_window
            w[host.ip] = w.get(host.ip, 0) + 1
        return s

    def postscreen_pass(self, t: float, host: Host, allow: bool) -> float:
        """postscreen's part of a good connection; returns when smtpd takes over."""
        rng = self.rng
        port = rng.randint(1024, 65535)
        ep = f"[{host.ip}]:{port}"
        tag = f"postfix/postscreen[{self.postscreen_pid}]: "
        me = f"[{MY_IP6}]:25" if ":" in host.ip else f"[{MY_IP4}]:25"
        self.emit(t, "postscreen_connect", f"{tag}CONNECT from {ep} to {me}")
        if allow:
            t += 0.0005
            self.emit(t, "postscreen_other", f"{tag}ALLOWLISTED {ep}")
        elif self.ps_cache.get(host.ip, -1e18) > t - 86400:
            t += 0.0005
            self.emit(t, "postscreen_pass", f"{tag}PASS OLD {ep}")
        else:
            if rng.random() < 0.1:
                self.emit(t + 0.3, "postscreen_other", f"{tag}DNSBL rank 1 for {ep}")
            t += 6.0 + rng.random() * 0.01
            self.emit(t, "postscreen_pass", f"{tag}PASS NEW {ep}")
        self.ps_cache[host.ip] = t
        return t + 0.001 + rng.random() * 0.002

    def greet(self, s: Sess, tls: bool, ehlo: bool = True) -> None:
        """EHLO (or HELO), optionally STARTTLS and the second EHLO."""
        self.step(s)
        if not ehlo:
            s.cmd("helo")
            s.proto = "SMTP"
            return
        s.cmd("ehlo")
        if tls:
            self.step(s)
            s.cmd("starttls")
            self.step(s, 2)
            proto = TLS13 if self.rng.random() < 0.7 else TLS12
            self.sm(s, "smtpd_tls", f"Anonymous TLS connection established from "
                                    f"{s.host.client}: {proto}")
            s.cmd("ehlo")

    def reject_rcpt(self, s: Sess, qid: str | None, cls: str, sender: str, rcpt: str) -> None:
        code, enh, text = REJECTS[cls]
        text = text.format(rcpt=rcpt, helo=s.helo, ip=s.ip, sender=sender)
        self.sm(s, "smtpd_reject",
                f"{qid or 'NOQUEUE'}: reject: RCPT from {s.host.client}: {code} {enh} {text}; "
                f"from=<{sender}> to=<{rcpt}> proto={s.proto} helo=<{s.helo}>")
        self.truth.reject(s.ip, sender, rcpt)

    def transaction(self, s: Sess, sender: str, rcpts: list[tuple[str, str | None]],
                    *, sasl: str | None = None, sasl_method: str = "PLAIN",
                    filtered: bool = False, abort: bool = False, dkim_sign: bool = False,
                    profile: str = "local", size: int = 0) -> str | None:
        """MAIL, RCPTs (some rejected), DATA, and the queued message's whole life.
        rcpts holds (address, reject class or None). Returns the queue id or None."""
        rng = self.rng
        self.step(s)
        s.cmd("mail")
        t_mail = s.t
        qid = None
        accepted: list[str] = []
        for rcpt, rej in rcpts:
            self.step(s)
            if rej is not None:
                s.cmd("rcpt", ok=False)
                self.reject_rcpt(s, qid, rej, sender, rcpt)
                continue
            s.cmd("rcpt")
            if qid is None:
                qid = self.new_qid(s.t)
                extra = f", sasl_method={sasl_method}, sasl_username={sasl}" if sasl else ""
                self.sm(s, "smtpd_client", f"{qid}: client={s.host.client}{extra}")
            accepted.append(rcpt)
        self.step(s)
        if qid is None:
            if rng.random() < 0.5:  # pipelining clients send DATA anyway
                s.cmd("data", ok=False)
            if rng.random() < 0.3:
                self.step(s)
                s.cmd("rset")
            return None
        size = size or int(rng.lognormvariate(9.0, 1.2)) + 600
        cleanup_pid, cleanup_uses = self.pools["cleanup"].acquire(s.t)
        dom = domain_of(sender) or s.host.domain or MY_NAME
        msgid = self.message_id(t_mail, dom)
        s.t += 0.01 + min(size / 2e6, 5.0) * rng.random()
        self.emit(s.t, "cleanup", f"postfix/cleanup[{cleanup_pid}]: {qid}: message-id={msgid}")
        if abort:
            s.cmd("data", ok=False)
            self.pools["cleanup"].release(cleanup_pid, cleanup_uses, s.t)
            self.live_qids[qid] = s.t + 1
            self.truth.stat("aborted_transactions")
            return None
        if dkim_sign:
            self.other(s.t + 0.002, "opendkim",
                       f"opendkim[{self.opendkim_pid}]: {qid}: DKIM-Signature field added "
                       f"(s=mail, d={domain_of(sender) or LOCAL_DOMAINS[0]})")
        elif rng.random() < 0.15:
            self.other(s.t + 0.002, "opendkim",
                       f"opendkim[{self.opendkim_pid}]: {qid}: DKIM verification successful")
        s.t += 0.003 + rng.random() * 0.01
        self.pools["cleanup"].release(cleanup_pid, cleanup_uses, s.t)
        s.cmd("data")
        self.truth.message(s.ip, sender, sasl, accepted)
        t_q = s.t + 0.001 + rng.random() * 0.004
        if filtered:
            self.filtered_life(qid, t_mail, t_q, sender, accepted, size, msgid, s.host, profile)
        else:
            self.life(qid, t_mail, t_q, sender, accepted, size, profile, msgid=msgid)
        s.t += 0.001
        return qid

    def close(self, s: Sess, how: str = "quit", after: str = "") -> float:
        """QUIT (or a lost connection / timeout / error limit after ``after``, default
        the last command), then ``disconnect``."""
        self.step(s)
        client = s.host.client
        after = after or s.last
        if how == "quit":
            s.cmd("quit")
        elif how == "lost":
            self.sm(s, "smtpd_lost", f"lost connection after {after} from {client}")
        elif how == "timeout":
            self.sm(s, "smtpd_other", f"timeout after {after} from {client}")
        elif how == "errors":
            self.sm(s, "smtpd_other", f"too many errors after {after} from {client}")
        s.t += 0.0005
        self.sm(s, "smtpd_disconnect", f"disconnect from {client} {s.counters()}")
        s.pool.release(s.pid, s.uses, s.t)
        return s.t

    # ---- queue life of a message

    def life(self, qid: str, t_arr: float, t_q: float, sender: str, rcpts: list[str],
             size: int, profile: str, *, ndr: bool = True, msgid: str = "") -> float:
        """qmgr ``from=``, delivery attempts (deferred ones retried, re-logging
        ``from=``), the non-delivery notification, ``removed``. Returns removed time."""
        rng = self.rng
        qmgr = f"postfix/qmgr[{self.qmgr_pid}]: {qid}: "
        head = f"{qmgr}from=<{sender}>, size={size}, nrcpt={len(rcpts)} (queue active)"
        self.emit(t_q, "qmgr_from", head)
        pending, t, attempt, t_end = rcpts, t_q, 0, t_q
        while pending:
            t_end, deferred, bounced = self.attempt(qid, t_arr, t_q, t, pending, profile,
                                                    attempt, msgid)
            if bounced and ndr and sender:
                t_end = self.send_ndr(qid, t_end, sender, bounced)
            if not deferred:
                break
            attempt += 1
            t = t_end + rng.uniform(300, 1500) * attempt
            self.emit(t, "qmgr_from", head)
            self.truth.stat("qmgr_from_relogged")
            pending = deferred
        t_end += 0.001 + rng.random() * 0.003
        self.emit(t_end, "qmgr_removed", f"{qmgr}removed")
        self.retire_qid(qid, t_end)
        return t_end

    def route(self, rcpt: str) -> tuple[str, str]:
        """(delivery agent, relay text) for a recipient."""
        d = domain_of(rcpt) or ""
        if d == "example.org":
            return "virtual", "virtual"
        if d in LOCAL_DOMAINS:
            return "lmtp", LMTP_RELAY
        if d == MY_NAME:
            return "local", "local"
        h = zlib.crc32(d.encode())
        ip = f"100.{64 + h % 60}.{(h >> 8) & 255}.{1 + ((h >> 16) % 250)}"
        return "smtp", f"mx{1 + (h >> 24) % 3}.{d}[{ip}]:25"

    def attempt(self, qid: str, t_arr: float, t_q: float, t: float, rcpts: list[str],
                profile: str, attempt: int, msgid: str) -> tuple[float, list[str], list[str]]:
        """One delivery round for rcpts; returns (end time, deferred, bounced)."""
        rng = self.rng
        p_def, p_bounce = {"local": (0.004, 0.003), "out": (0.03, 0.015),
                           "spam": (0.15, 0.15), "ndr": (0.06, 0.2)}[profile]
        if attempt >= 2:
            p_def = 0.0
        deferred: list[str] = []
        bounced: list[str] = []
        groups: dict[tuple[str, str], list[str]] = {}
        for r in rcpts:
            groups.setdefault(self.route(r), []).append(r)
        t_end = t
        for (agent, relay), members in groups.items():
            pool = self.pools[agent]
            tg = t + 0.002 + rng.random() * 0.05
            pid, uses = pool.acquire(tg)
            c = 0.0 if agent in ("virtual", "local") else rng.uniform(0.001, 0.03)
            if agent == "smtp":
                c = rng.uniform(0.05, 1.2)
            for i, r in enumerate(members):
                d = rng.uniform(0.005, 0.4 if agent == "smtp" else 0.08)
                tl = tg + c + d + i * 0.003
                x = rng.random()
                status = "sent" if x >= p_def + p_bounce else ("deferred" if x < p_def
                                                                 else "bounced")
                line = self.delivery_line(agent, pid, qid, r, relay, t_arr, t_q, tg, c, d, tl,
                                          status)
                if agent == "lmtp" and status == "sent" and msgid and rng.random() < 0.5:
                    self.other(tl - 0.0005, "dovecot",
                               f"dovecot: lmtp({r})<{pid + 7}><{self.sess_id()}>: "
                               f"msgid={msgid}: saved mail to INBOX")
                self.emit(tl, "delivery_" + status, line)
                if status == "deferred":
                    deferred.append(r)
                elif status == "bounced":
                    bounced.append(r)
                t_end = max(t_end, tl)
            pool.release(pid, uses, t_end)
        return t_end, deferred, bounced

    def delivery_line(self, agent: str, pid: int, qid: str, rcpt: str, relay: str,
                      t_arr: float, t_q: float, tg: float, c: float, d: float, tl: float,
                      status: str) -> str:
        rng = self.rng
        a, b = t_q - t_arr, tg - t_q
        orig = ""
        local = rcpt.split("@")[0]
        if agent != "smtp" and local in ("postmaster", "abuse", "hostmaster"):
            orig = f"orig_to=<{rcpt}>, "
            rcpt = f"ops@{domain_of(rcpt)}"
        if status == "sent":
            dsn, reply = "2.0.0", self.sent_reply(agent, rcpt)
        elif status == "deferred":
            dsn, reply, relay = self.defer_reply(agent, rcpt, relay)
        else:
            dsn, reply = self.bounce_reply(agent, rcpt, relay)
        conn = f"conn_use={rng.randint(2, 9)}, " if agent == "smtp" and rng.random() < 0.1 else ""
        return (f"postfix/{agent}[{pid}]: {qid}: to=<{rcpt}>, {orig}relay={relay}, {conn}"
                f"delay={fd(tl - t_arr)}, delays={fd(a)}/{fd(b)}/{fd(c)}/{fd(d)}, "
                f"dsn={dsn}, status={status} ({reply})")

    def sent_reply(self, agent: str, rcpt: str) -> str:
        rng = self.rng
        if agent == "lmtp":
            return f"250 2.0.0 <{rcpt}> {self.sess_id()} Saved"
        if agent == "virtual":
            return "delivered to maildir"
        if agent == "local":
            return "delivered to mailbox"
        if rng.random() < 0.5:
            return f"250 2.0.0 Ok: queued as {rng.getrandbits(40):010X}"
        return f"250 2.0.0 OK  {int(1.77e9) + rng.randint(0, 10**7)} {self.sess_id()} - gsmtp"

    def defer_reply(self, agent: str, rcpt: str, relay: str) -> tuple[str, str, str]:
        rng = self.rng
        if agent == "smtp":
            if rng.random() < 0.6:
                host = relay.rsplit(":", 1)[0]
                return ("4.2.0", f"host {host} said: 450 4.2.0 <{rcpt}>: Recipient address "
                        f"rejected: Greylisted, see https://postgrey.example/help/"
                        f"{domain_of(rcpt)}.html (in reply to RCPT TO command)", relay)
            mx = relay.split("[")[0]
            return ("4.4.1", f"connect to {mx}[{relay.split('[')[1].split(']')[0]}]:25: "
                    "Connection timed out", "none")
        if agent == "lmtp":
            return ("4.2.0", f"host {LMTP_RELAY} said: 451 4.2.0 <{rcpt}> Temporary "
                    "failure, try again later (in reply to end of DATA command)", relay)
        return "4.2.0", "maildir delivery failed: Resource temporarily unavailable", relay

    def bounce_reply(self, agent: str, rcpt: str, relay: str) -> tuple[str, str]:
        if agent == "smtp":
            host = relay.rsplit(":", 1)[0]
            return ("5.1.1", f"host {host} said: 550 5.1.1 <{rcpt}>: Recipient address "
                    "rejected: User unknown (in reply to RCPT TO command)")
        if agent == "lmtp":
            return ("5.2.2", f"host {LMTP_RELAY} said: 552 5.2.2 <{rcpt}> Quota exceeded "
                    "(mailbox for user is full) (in reply to end of DATA command)")
        return "5.2.2", "cannot update mailbox: disk quota exceeded"

    def send_ndr(self, qid: str, t: float, sender: str, bounced: list[str]) -> float:
        """``sender non-delivery notification: NEWQID`` and the bounce's own life
        (not a counted message). Returns the time of the notification line."""
        rng = self.rng
        pool = self.pools["bounce"]
        t += 0.005 + rng.random() * 0.02
        pid, uses = pool.acquire(t)
        nqid = self.new_qid(t)
        cpid, cuses = self.pools["cleanup"].acquire(t)
        msgid = f"<{int(t * 1e6):x}.{nqid}@{MY_NAME}>"
        self.emit(t, "cleanup", f"postfix/cleanup[{cpid}]: {nqid}: message-id={msgid}")
        self.pools["cleanup"].release(cpid, cuses, t + 0.001)
        t += 0.002
        self.emit(t, "bounce_ndr", f"postfix/bounce[{pid}]: {qid}: sender non-delivery "
                                   f"notification: {nqid}")
        pool.release(pid, uses, t)
        self.truth.stat("ndr_messages")
        profile = "local" if (domain_of(sender) in LOCAL_DOMAINS) else "ndr"
        self.life(nqid, t - 0.002, t + 0.001, "", [sender], 2500 + rng.randint(0, 4000),
                  profile, ndr=False, msgid=msgid)
        return t

    def filtered_life(self, qid: str, t_arr: float, t_q: float, sender: str,
                      rcpts: list[str], size: int, msgid: str, client: Host,
                      profile: str) -> None:
        """After-queue content filter: QID goes via smtp to 127.0.0.1:10025, whose smtpd
        re-injects it as NEWQID with orig_queue_id/orig_client (one message, not two)."""
        rng = self.rng
        qmgr = f"postfix/qmgr[{self.qmgr_pid}]: "
        self.emit(t_q, "qmgr_from", f"{qmgr}{qid}: from=<{sender}>, size={size}, "
                                    f"nrcpt={len(rcpts)} (queue active)")
        t = t_q + 0.005 + rng.random() * 0.02
        lh = Host("127.0.0.1", LOCALHOST_CLIENT, "localhost", "")
        s = Sess(t, self.pools["reinject"], "postfix/smtpd", lh, 0.0005)
        self.sm(s, "smtpd_connect", f"connect from {LOCALHOST_CLIENT}")
        self.truth.connection("127.0.0.1")
        self.truth.stat("reinjected_messages")
        s.cmd("ehlo")
        s.cmd("mail")
        s.cmd("rcpt", n=len(rcpts))
        s.t += 0.002
        nqid = self.new_qid(s.t)
        self.sm(s, "smtpd_client", f"{nqid}: client={LOCALHOST_CLIENT}, orig_queue_id={qid}, "
                                   f"orig_client={client.client}")
        s.t += 0.3 + rng.random() * 1.5  # the filter scans
        cpid, cuses = self.pools["cleanup"].acquire(s.t)
        self.emit(s.t, "cleanup", f"postfix/cleanup[{cpid}]: {nqid}: message-id={msgid}")
        self.pools["cleanup"].release(cpid, cuses, s.t + 0.002)
        s.cmd("data")
        tq2 = s.t + 0.003
        spid, suses = self.pools["smtp"].acquire(t)
        for i, r in enumerate(rcpts):
            tl = s.t + 0.002 + i * 0.0005
            self.emit(tl, "delivery_sent",
                      f"postfix/smtp[{spid}]: {qid}: to=<{r}>, relay={FILTER_RELAY}, "
                      f"delay={fd(tl - t_arr)}, delays={fd(t_q - t_arr)}/{fd(t - t_q)}/0/"
                      f"{fd(tl - t)}, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as {nqid})")
        t_done = s.t + 0.002 + len(rcpts) * 0.0005
        self.pools["smtp"].release(spid, suses, t_done)
        s.t = t_done + 0.001
        s.cmd("quit")
        self.sm(s, "smtpd_disconnect", f"disconnect from {LOCALHOST_CLIENT} {s.counters()}")
        s.pool.release(s.pid, s.uses, s.t)
        t_rm = t_done + 0.002
        self.emit(t_rm, "qmgr_removed", f"{qmgr}{qid}: removed")
        self.retire_qid(qid, t_rm)
        self.life(nqid, tq2 - 0.002, tq2, sender, rcpts, size + 900, profile, msgid=msgid)

    def sess_id(self) -> str:
        return base64.b64encode(self.rng.randbytes(12), b"+/").decode()

    # ---- traffic sources (one call = one session / burst)

    def src_mx(self, t: float) -> None:
        """A normal remote MTA delivering mail for local users."""
        rng = self.rng
        host = self.pick_host()
        s = self.open_session(t, host)
        self.greet(s, rng.random() < 0.75)
        for _ in range(1 + (rng.random() < 0.08) + (rng.random() < 0.03)):
            # 2 % null sender: DSNs from remote MTAs are client mail too
            sender = "" if rng.random() < 0.02 else self.styled(self.person_at(host.domain))
            rcpts = self.local_rcpts(rng.choice((1, 1, 1, 1, 1, 1, 2, 2, 3, 4, 7, 12)), 0.03)
            abort = rng.random() < 0.004
            self.transaction(s, sender, rcpts, filtered=rng.random() < 0.04, abort=abort)
            if abort:
                self.close(s, "lost", "DATA (0 bytes)")
                return
        if rng.random() < 0.01:
            self.close(s, "lost")  # dropped without QUIT
        else:
            self.close(s)

    def local_rcpts(self, n: int, p_unknown: float) -> list[tuple[str, str | None]]:
        """n distinct local recipients, some unknown (to be rejected)."""
        out: list[tuple[str, str | None]] = []
        seen: set[str] = set()
        while len(out) < n:
            if self.rng.random() < p_unknown:
                addr, rej = self.unknown_local(), "unknown_user"
            else:
                addr, rej = self.pick_mailbox(), None
            if addr not in seen:
                seen.add(addr)
                out.append((addr, rej))
        return out

    def src_heavy(self, t: float) -> None:
        """A steady heavy sender: pipelined transactions, one recipient each."""
        rng = self.rng
        hv = rng.choices(self.heavies, cum_weights=self.heavy_cw)[0]
        host = rng.choice(hv.hosts)
        s = self.open_session(t, host, allow=hv.allowlisted)
        self.greet(s, not hv.allowlisted)
        for _ in range(rng.randint(1, 5)):
            rcpt = self.pick_mailbox()
            if hv.mode == "fixed":
                sender = hv.fixed
            elif hv.mode == "verp":
                local, _, d = rcpt.partition("@")
                sender = f"bounce+{rng.getrandbits(40):010x}-{local}={d}@{hv.domain}"
            else:
                sender = self.styled(self.person_at(hv.domain))
            self.transaction(s, sender, [(rcpt, None)], size=int(rng.uniform(8e3, 9e4)))
        self.close(s)

    def src_sub(self, t: float) -> None:
        """An authenticated user submitting mail (587 or 465), DKIM-signed."""
        rng = self.rng
        user = rng.choices(self.users, cum_weights=self.user_cw)[0]
        host = user.hosts[0] if rng.random() < 0.8 else rng.choice(user.hosts)
        self.submission(t, user, host, [rng.choice((1, 1, 1, 2, 2, 3, 5, 12))])

    def submission(self, t: float, user: User, host: Host, batches: list[int],
                   profile: str = "out", sender: str | None = None,
                   service: str | None = None) -> float:
        rng = self.rng
        service = service or ("submission" if rng.random() < 0.8 else "smtps")
        s = self.open_session(t, host, service, postscreen=False)
        self.greet(s, service == "submission")
        if service == "smtps":
            self.sm(s, "smtpd_tls", f"Anonymous TLS connection established from "
                                    f"{host.client}: {TLS13}")
        if profile == "out" and rng.random() < 0.03:
            self.step(s, 3)
            s.cmd("auth", ok=False)
            self.auth_fail(s, user.method, "authentication failure", user.sasl)
        self.step(s)
        s.cmd("auth")
        for n in batches:
            rcpts: list[tuple[str, str | None]] = []
            seen: set[str] = set()
            while len(rcpts) < n:
                if profile == "spam" or rng.random() < 0.65:
                    addr = self.person_at(self.pick_ext_domain())
                else:
                    addr = self.pick_mailbox()
                if addr not in seen:
                    seen.add(addr)
                    rcpts.append((addr, None))
            snd = sender if sender is not None else self.styled(user.address)
            self.transaction(s, snd, rcpts, sasl=user.sasl, sasl_method=user.method,
                             dkim_sign=True, profile=profile)
        return self.close(s)

    def auth_fail(self, s: Sess, method: str, reason: str, user: str | None) -> None:
        tail = f", sasl_username={user}" if user is not None else ""
        self.sm(s, "smtpd_sasl_fail", f"warning: {s.host.client}: SASL {method} "
                                      f"authentication failed: {reason}{tail}")
        self.truth.auth_failure(s.ip, user)

    def src_bad(self, t: float) -> None:
        """Background abuse: postscreen drops, rejects, scanners, stray auth failures."""
        rng = self.rng
        host = self.bad_host()
        x = rng.random()
        for limit, fn in self.bad_kinds:
            if x < limit:
                fn(t, host)
                return

    def bad_host(self) -> Host:
        rng = self.rng
        if rng.random() < 0.6:
            return rng.choices(self.bad_hosts, cum_weights=self.bad_cw)[0]
        ip = rand_ip4(rng)
        name = "unknown" if rng.random() < 0.8 else dyn_name(ip, rng.randint(41, 90))
        return Host(ip, f"{name}[{ip}]", rng.choice(BOT_HELOS), "")

    def _bad_kinds(self) -> list[tuple[float, Callable[[float, Host], object]]]:
        table = [
            (0.12, self.bad_pregreet), (0.12, self.bad_dnsbl), (0.07, self.bad_hangup),
            (0.12, self.bad_scan), (0.16, self.bad_spam), (0.06, self.bad_relay),
            (0.05, self.bad_helo), (0.06, self.bad_client), (0.04, self.bad_sender),
            (0.12, self.bad_auth), (0.02, self.bad_nonsmtp), (0.02, self.bad_pipelining),
            (0.02, self.bad_timeout), (0.02, self.bad_too_many),
        ]
        acc, out = 0.0, []
        for w, fn in table:
            acc += w
            out.append((acc, fn))
        out[-1] = (2.0, out[-1][1])
        return out

    def ps_begin(self, t: float, host: Host) -> tuple[str, str]:
        ep = f"[{host.ip}]:{self.rng.randint(1024, 65535)}"
        tag = f"postfix/postscreen[{self.postscreen_pid}]: "
        me = f"[{MY_IP6}]:25" if ":" in host.ip else f"[{MY_IP4}]:25"
        self.emit(t, "postscreen_connect", f"{tag}CONNECT from {ep} to {me}")
        return tag, ep

    def ps_reject(self, t: float, host: Host, tag: str, ep: str, reply: str) -> None:
        """postscreen's dummy-SMTP reject (comma-separated from/to/proto/helo)."""
        sender = self.forged_sender() if self.rng.random() < 0.9 else ""
        rcpt = self.pick_mailbox() if self.rng.random() < 0.7 else self.unknown_local()
        self.emit(t, "postscreen_reject",
                  f"{tag}NOQUEUE: reject: RCPT from {ep}: {reply}; from=<{sender}>, "
                  f"to=<{rcpt}>, proto=ESMTP, helo=<{host.helo}>")
        self.truth.reject(host.ip, sender, rcpt)

    def bad_pregreet(self, t: float, host: Host) -> None:
        rng = self.rng
        tag, ep = self.ps_begin(t, host)
        greet = rng.choice(("EHLO User", "EHLO ylmf-pc", "HELO localhost", "EHLO [127.0.0.1]"))
        after = rng.uniform(0.05, 2.0)
        t += after
        self.emit(t, "postscreen_other", f"{tag}PREGREET {len(greet) + 2} after "
                                         f"{fd(after)} from {ep}: {greet}\\r\\n")
        if rng.random() < 0.5:
            t += rng.uniform(0.5, 5)
            self.ps_reject(t, host, tag, ep, "550 5.5.1 Protocol error")
        t += rng.uniform(0.1, 3)
        self.emit(t, "postscreen_other", f"{tag}DISCONNECT {ep}")

    def bad_dnsbl(self, t: float, host: Host) -> None:
        rng = self.rng
        tag, ep = self.ps_begin(t, host)
        t += rng.uniform(0.05, 0.5)
        self.emit(t, "postscreen_other", f"{tag}DNSBL rank {rng.randint(3, 9)} for {ep}")
        if rng.random() < 0.75:
            t += rng.uniform(6, 8)
            self.ps_reject(t, host, tag, ep, f"550 5.7.1 Service unavailable; client "
                                             f"[{host.ip}] blocked using zen.spamhaus.org")
        t += rng.uniform(0.1, 3)
        self.emit(t, "postscreen_other", f"{tag}DISCONNECT {ep}")

    def bad_hangup(self, t: float, host: Host) -> None:
        rng = self.rng
        tag, ep = self.ps_begin(t, host)
        after = rng.uniform(0.1, 5.5)
        if rng.random() < 0.03:
            self.emit(t + 0.0005, "postscreen_reject",
                      f"{tag}NOQUEUE: reject: CONNECT from {ep}: too many connections")
            self.truth.reject(host.ip, None, None)
            after = 0.01
        else:
            self.emit(t + after, "postscreen_other",
                      f"{tag}HANGUP after {fd(after)} from {ep} in tests before SMTP handshake")
        self.emit(t + after + 0.0005, "postscreen_other", f"{tag}DISCONNECT {ep}")

    def bad_open(self, t: float, host: Host, hostname_warning: float = 0.1) -> Sess:
        """smtpd session of a bot that got through postscreen."""
        warn = ""
        if host.client.startswith("unknown") and self.rng.random() < hostname_warning:
            # rDNS exists but does not match: Postfix warns, then logs the client as unknown
            warn = (f"warning: hostname {dyn_name(host.ip, 99)} does not resolve to address "
                    f"{host.ip}: Name or service not known")
        return self.open_session(t, host, warn=warn)

    def bad_scan(self, t: float, host: Host) -> None:
        rng = self.rng
        s = self.bad_open(t, host)
        if rng.random() < 0.5:
            self.greet(s, False)
        s.t += rng.uniform(0.1, 20)
        self.close(s, "lost")

    def bad_spam(self, t: float, host: Host) -> None:
        """Spam run: unknown users rejected, now and then one message accepted."""
        rng = self.rng
        s = self.bad_open(t, host)
        self.greet(s, rng.random() < 0.3, ehlo=rng.random() < 0.8)
        sender = self.forged_sender() if rng.random() < 0.95 else ""
        n = rng.randint(1, 4)
        rcpts = [(self.unknown_local(), "unknown_user") for _ in range(n)]
        if rng.random() < 0.3:
            rcpts.insert(rng.randint(0, n), (self.pick_mailbox(), None))
        self.transaction(s, sender, rcpts)
        self.close(s, "quit" if rng.random() < 0.6 else "lost")

    def bad_simple_reject(self, t: float, host: Host, cls: str, rcpt_fn: Callable[[], str],
                          helo: str | None = None) -> None:
        rng = self.rng
        s = self.bad_open(t, host)
        if helo is not None:
            s.helo = helo
        self.greet(s, False, ehlo=rng.random() < 0.7)
        sender = self.forged_sender()
        self.transaction(s, sender, [(rcpt_fn(), cls) for _ in range(rng.randint(1, 3))])
        self.close(s, "quit" if rng.random() < 0.5 else "lost")

    def bad_relay(self, t: float, host: Host) -> None:
        cls = "relay" if self.rng.random() < 0.8 else "relay554"
        self.bad_simple_reject(t, host, cls, lambda: self.person_at(self.pick_ext_domain()))

    def bad_helo(self, t: float, host: Host) -> None:
        helo = self.rng.choice(("localhost", "ylmf-pc", "User", "WIN-3N8QH6ML1B", "dell"))
        self.bad_simple_reject(t, host, "helo", self.pick_mailbox, helo)

    def bad_client(self, t: float, host: Host) -> None:
        rng = self.rng
        if rng.random() < 0.15 and host.client.startswith("unknown"):
            s = self.bad_open(t, host, 0.0)
            self.sm(s, "smtpd_reject", f"NOQUEUE: reject: CONNECT from {host.client}: 450 "
                                       f"4.7.25 Client host rejected: cannot find your "
                                       f"hostname, [{host.ip}]; proto=SMTP")
            self.truth.reject(host.ip, None, None)
            s.t += rng.uniform(0.1, 2)
            self.close(s, "lost")
            return
        self.bad_simple_reject(t, host, "client", self.pick_mailbox)

    def bad_sender(self, t: float, host: Host) -> None:
        self.bad_simple_reject(t, host, "sender", self.pick_mailbox)

    def bad_auth(self, t: float, host: Host) -> None:
        """A stray password guess (port 25 or submission)."""
        rng = self.rng
        service = "smtpd" if rng.random() < 0.4 else "submission"
        s = self.open_session(t, host, service, postscreen=service == "smtpd")
        self.greet(s, service == "submission")
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            self.step(s, 10)
            s.cmd("auth", ok=False)
            self.brute_fail(s)
        self.close(s, "lost" if rng.random() < 0.7 else "quit")

    def brute_fail(self, s: Sess) -> None:
        rng = self.rng
        r = rng.random()
        user: str | None = None
        if r < 0.35:
            mech, reason = "LOGIN", "UGFzc3dvcmQ6"
        elif r < 0.6:
            mech, reason = "LOGIN", "authentication failure"
        else:
            mech = "LOGIN" if rng.random() < 0.7 else "PLAIN"
            reason = "authentication failure" if rng.random() < 0.7 else "(reason unavailable)"
            user = self.brute_name()
        self.auth_fail(s, mech, reason, user)

    def brute_name(self) -> str:
        rng = self.rng
        r = rng.random()
        if r < 0.4:
            return rng.choice(BRUTE_NAMES)
        if r < 0.7:
            return f"{rng.choice(BRUTE_NAMES)}@{rng.choice(LOCAL_DOMAINS)}"
        return f"{rng.choice(BRUTE_NAMES)}{rng.randint(1, 999)}"

    def bad_nonsmtp(self, t: float, host: Host) -> None:
        s = self.bad_open(t, host)
        self.step(s)
        s.cmd("unknown", ok=False)
        self.sm(s, "smtpd_other", f"warning: non-SMTP command from {host.client}: GET / HTTP/1.1")
        self.close(s, "none")

    def bad_pipelining(self, t: float, host: Host) -> None:
        s = self.bad_open(t, host)
        self.step(s)
        self.sm(s, "smtpd_other", f"improper command pipelining after CONNECT from "
                                  f"{host.client}: EHLO {host.helo}\\r\\nMAIL FROM:<>\\r\\n")
        s.cmd("ehlo")
        self.close(s)

    def bad_timeout(self, t: float, host: Host) -> None:
        s = self.bad_open(t, host)
        self.greet(s, False)
        s.t += 300
        self.close(s, "timeout")

    def bad_too_many(self, t: float, host: Host) -> None:
        """A small dictionary run that hits smtpd_hard_error_limit (20)."""
        s = self.bad_open(t, host)
        self.greet(s, False)
        sender = self.forged_sender()
        self.transaction(s, sender, [(self.unknown_local(), "unknown_user") for _ in range(20)])
        self.close(s, "errors")

    def src_pickup(self, t: float) -> None:
        """Local submission (cron output, a web form): no client IP, still a message."""
        rng = self.rng
        uid, who = (0, "root") if rng.random() < 0.5 else (33, "www-data")
        qid = self.new_qid(t)
        self.emit(t, "pickup", f"postfix/pickup[{self.pickup_pid}]: {qid}: uid={uid} "
                               f"from=<{who}>")
        sender = f"{who}@{MY_NAME}"
        rcpt = "ops@example.net" if uid == 0 else self.person_at(self.pick_ext_domain())
        cpid, cuses = self.pools["cleanup"].acquire(t)
        self.emit(t + 0.003, "cleanup", f"postfix/cleanup[{cpid}]: {qid}: message-id="
                                        f"<{int(t * 1e6):x}.{qid}@{MY_NAME}>")
        self.pools["cleanup"].release(cpid, cuses, t + 0.005)
        self.truth.message(None, sender, None, [rcpt])
        self.truth.stat("pickup_messages")
        self.life(qid, t, t + 0.006, sender, [rcpt], rng.randint(700, 6000),
                  "local" if uid == 0 else "out")

    def src_ssh(self, t: float) -> None:
        """sshd password guessing (IP only in free text), sometimes an admin login."""
        rng = self.rng
        pid = self.new_pid()
        if rng.random() < 0.04:
            self.ssh_login(t, pid)
            return
        ip = self.bad_host().ip
        port = rng.randint(30000, 65000)
        user = rng.choice(BRUTE_NAMES)
        tag = f"sshd[{pid}]: "
        if user == "root":
            self.other(t, "sshd", f"{tag}pam_unix(sshd:auth): authentication failure; logname= "
                                  f"uid=0 euid=0 tty=ssh ruser= rhost={ip}  user=root")
            t += rng.uniform(1, 3)
            self.other(t, "sshd", f"{tag}Failed password for root from {ip} port {port} ssh2")
            who = "authenticating user root"
        else:
            self.other(t, "sshd", f"{tag}Invalid user {user} from {ip} port {port}")
            t += rng.uniform(0.5, 2)
            self.other(t, "sshd", f"{tag}pam_unix(sshd:auth): check pass; user unknown")
            t += 0.001
            self.other(t, "sshd", f"{tag}pam_unix(sshd:auth): authentication failure; logname= "
                                  f"uid=0 euid=0 tty=ssh ruser= rhost={ip}")
            t += rng.uniform(1, 3)
            self.other(t, "sshd", f"{tag}Failed password for invalid user {user} from {ip} "
                                  f"port {port} ssh2")
            who = f"invalid user {user}"
        t += rng.uniform(0.1, 1)
        self.other(t, "sshd", f"{tag}Received disconnect from {ip} port {port}:11: Bye Bye "
                              "[preauth]")
        self.other(t + 0.0003, "sshd", f"{tag}Disconnected from {who} {ip} port {port} [preauth]")

    def ssh_login(self, t: float, pid: int) -> None:
        rng = self.rng
        port = rng.randint(40000, 65000)
        n = rng.randint(100, 9999)
        tag = f"sshd[{pid}]: "
        self.other(t, "sshd", f"{tag}Accepted publickey for ops from 10.0.5.17 port {port} ssh2: "
                              f"ED25519 SHA256:{self.sess_id()}{self.sess_id()[:11]}")
        self.other(t + 0.01, "sshd", f"{tag}pam_unix(sshd:session): session opened for user "
                                     "ops(uid=1000) by (uid=0)")
        self.other(t + 0.02, "systemd", f"systemd-logind[{self.dovecot_pid - 3}]: New session "
                                        f"{n} of user ops.")
        self.other(t + 0.03, "systemd", f"systemd[1]: Started session-{n}.scope - Session {n} "
                                        "of User ops.")
        t += rng.uniform(60, 1800)
        self.other(t, "sshd", f"{tag}pam_unix(sshd:session): session closed for user ops")
        self.other(t + 0.01, "systemd", f"systemd[1]: session-{n}.scope: Deactivated "
                                        "successfully.")

    def src_kernel(self, t: float) -> None:
        """A firewall drop logged by the kernel (IP in free text)."""
        rng = self.rng
        up = t - self.t_start + 259_200.0
        ip = rand_ip4(rng)
        self.other(t, "kernel",
                   f"kernel: [{int(up):5d}.{int((up % 1) * 1e6):06d}] [UFW BLOCK] IN=eth0 OUT= "
                   f"MAC=52:54:00:4a:1b:2c:fe:54:00:9d:3e:01:08:00 SRC={ip} DST={MY_IP4} LEN=44 "
                   f"TOS=0x00 PREC=0x00 TTL={rng.randint(30, 250)} ID={rng.randint(1, 65535)} "
                   f"PROTO=TCP SPT={rng.randint(1024, 65535)} "
                   f"DPT={rng.choice((23, 22, 3389, 445, 8080, 5900, 1433))} WINDOW=1024 "
                   "RES=0x00 SYN URGP=0")

    def src_imap(self, t: float) -> None:
        """A user reading mail: dovecot imap-login and logout (rip= in free text)."""
        rng = self.rng
        user = rng.choices(self.users, cum_weights=self.user_cw)[0]
        ip = rng.choice(user.hosts).ip
        sid = self.sess_id()
        mpid = self.new_pid()
        if rng.random() < 0.05:
            self.other(t, "dovecot", f"dovecot: imap-login: Disconnected: Connection closed "
                                     f"(auth failed, 1 attempts in 2 secs): user=<{user.address}>, "
                                     f"method=PLAIN, rip={ip}, lip={MY_IP4}, TLS, session=<{sid}>")
            return
        self.other(t, "dovecot", f"dovecot: imap-login: Login: user=<{user.address}>, "
                                 f"method=PLAIN, rip={ip}, lip={MY_IP4}, mpid={mpid}, TLS, "
                                 f"session=<{sid}>")
        t += rng.uniform(5, 3600)
        self.other(t, "dovecot", f"dovecot: imap({user.address})<{mpid}><{sid}>: Disconnected: "
                                 f"Logged out in={rng.randint(50, 9000)} "
                                 f"out={rng.randint(500, 900000)} deleted=0 expunged=0 "
                                 "trashed=0 hdr_count=0 hdr_bytes=0 body_count=0 body_bytes=0")

    # ---- periodic (fixed-time) lines

    def periodic(self, t0: float, minute: int) -> None:
        """cron, systemd timers, anvil/scache statistics: by the clock, not by volume."""
        rng = self.rng
        if minute % 10 == 0:
            self.cron(t0 + 1 + rng.random(),
                      "command -v debian-sa1 > /dev/null && debian-sa1 1 1")
            self.anvil(t0 + rng.uniform(0, 59))
        if minute % 60 == 17:
            self.cron(t0 + 1 + rng.random(), "   cd / && run-parts --report /etc/cron.hourly")
        if minute % 30 == 9:
            t = t0 + 3 + rng.random()
            self.other(t, "systemd", "systemd[1]: Starting phpsessionclean.service - Clean php "
                                     "session files...")
            self.other(t + 0.4, "systemd", "systemd[1]: phpsessionclean.service: Deactivated "
                                           "successfully.")
            self.other(t + 0.41, "systemd", "systemd[1]: Finished phpsessionclean.service - "
                                            "Clean php session files.")
        if minute % 1440 == 0:
            t = t0 + 2
            self.other(t, "systemd", "systemd[1]: Starting logrotate.service - Rotate log "
                                     "files...")
            self.emit(t + 0.5, "postfix_other", f"postfix/postfix-script[{self.new_pid()}]: "
                                                "refreshing the Postfix mail system")
            self.emit(t + 0.6, "postfix_other", f"postfix/master[{self.qmgr_pid - 2}]: reload "
                                                "-- version 3.8.6, configuration /etc/postfix")
            self.other(t + 0.9, "systemd", "systemd[1]: logrotate.service: Deactivated "
                                           "successfully.")

    def cron(self, t: float, cmd: str) -> None:
        pid = self.new_pid()
        self.other(t, "cron", f"CRON[{pid}]: pam_unix(cron:session): session opened for user "
                              "root(uid=0) by (uid=0)")
        self.other(t + 0.002, "cron", f"CRON[{pid + 1}]: (root) CMD ({cmd})")
        self.other(t + 0.4, "cron", f"CRON[{pid}]: pam_unix(cron:session): session closed for "
                                    "user root")

    def anvil(self, t: float) -> None:
        """``statistics: max connection rate ... for (smtp:IP) at Mon dd hh:mm:ss``."""
        w = self.anvil_window
        if not w:
            return
        ip, n = max(w.items(), key=lambda kv: (kv[1], kv[0]))
        when = self.ctime(t - self.rng.uniform(1, 500))
        tag = f"postfix/anvil[{self.anvil_pid}]: statistics: "
        self.emit(t, "anvil", f"{tag}max connection rate {max(1, n // 4)}/60s for (smtp:{ip}) "
                              f"at {when}")
        self.emit(t, "anvil", f"{tag}max connection count {1 + n // 20} for (smtp:{ip}) "
                              f"at {when}")
        self.emit(t, "anvil", f"{tag}max cache size {len(w)} at {when}")
        if self.rng.random() < 0.3:
            tag = f"postfix/scache[{self.scache_pid}]: statistics: "
            self.emit(t + 0.001, "postfix_other", f"{tag}start interval {when}")
            self.emit(t + 0.002, "postfix_other", f"{tag}domain lookup hits=2 miss=9 success=18%")
            self.emit(t + 0.003, "postfix_other", f"{tag}address lookup hits=0 miss=11 success=0%")
            self.emit(t + 0.004, "postfix_other", f"{tag}max simultaneous domains=1 addresses=2 "
                                                  "connection=2")
        self.anvil_window = {}

    def ctime(self, t: float) -> str:
        """``%.15s`` of ctime(): ``Mar  2 10:12:01``."""
        d = dt.datetime.fromtimestamp(t, self.tz)
        return f"{MONTHS[d.month - 1]} {d.day:2d} {d:%H:%M:%S}"

    # ---- output

    def flush(self, out: IO[str], limit: float) -> None:
        """Write every pending line stamped before limit, in time order."""
        heap, buf = self.heap, []
        pop = heapq.heappop
        fmt = self.cfg.fmt
        sec, prefix = -1, ""
        while heap and heap[0][0] < limit:
            t, _, text = pop(heap)
            s = int(t)
            if s != sec:
                sec, prefix = s, self.stamp_prefix(s)
            if fmt == "rfc3339":
                buf.append(f"{prefix[0]}.{int((t - s) * 1e6):06d}{prefix[1]}{text}\n")
            else:
                buf.append(prefix + text + "\n")
            self.last_line_t = t
        out.write("".join(buf))

    def stamp_prefix(self, sec: int) -> str | tuple[str, str]:
        d = dt.datetime.fromtimestamp(sec, self.tz)
        fmt = self.cfg.fmt
        if fmt == "bsd":
            return f"{MONTHS[d.month - 1]} {d.day:2d} {d:%H:%M:%S} {MTA_HOST} "
        if fmt == "maillog":
            return f"{MONTHS[d.month - 1]} {d.day:02d} {d:%H:%M:%S} {MTA_HOST} "
        off = d.isoformat()[19:] or "+00:00"
        return (f"{d:%Y-%m-%dT%H:%M:%S}", f"{off} {MTA_HOST} ")

    # ---- the run

    def run(self, out: IO[str]) -> None:
        ctl = Controller(self)
        for minute in range(self.minutes):
            t0 = self.t_start + 60 * minute
            self.flush(out, t0)
            if self.nlines >= self.cfg.lines:
                break
            if minute % 60 == 0:
                self.live_qids = {q: u for q, u in self.live_qids.items() if u >= t0 - 2}
            before = self.nlines
            self.periodic(t0, minute)
            ctl.fixed_lines += self.nlines - before
            for t, _, src, arg in ctl.plan_minute(minute, t0):
                if self.nlines >= self.cfg.lines:
                    break
                self.last_start_t = t
                before = self.nlines
                if src < 0:
                    self.anomalies.run_item(t, arg)
                    self.anomalies.lines += self.nlines - before
                else:
                    ctl.sources[src].fn(t)
                    ctl.note(src, self.nlines - before)
        self.flush(out, math.inf)

    def truth_json(self) -> dict:
        counts = {
            dim: {k: dict(zip(METRICS, row, strict=True)) for k, row in table.items()}
            for dim, table in self.truth.counts().items()
        }
        return {
            "definitions": truth_definitions(),
            "generator": {"version": GENERATOR_VERSION, **asdict(self.cfg)},
            "span": {"start": self.t_start, "start_iso": iso(self.t_start),
                     "end": self.t_end, "end_iso": iso(self.t_end),
                     "last_session_start": self.last_start_t,
                     "last_session_start_iso": iso(self.last_start_t),
                     "last_line": self.last_line_t, "last_line_iso": iso(self.last_line_t)},
            "site": {"mta_host": MTA_HOST, "hostname": MY_NAME, "ip": [MY_IP4, MY_IP6],
                     "local_domains": list(LOCAL_DOMAINS), "content_filter": FILTER_RELAY},
            "lines": self.nlines,
            "line_kinds": dict(sorted(self.kinds.items())),
            "stats": dict(sorted({**self.truth.stats,
                                  "anomaly_lines": self.anomalies.lines}.items())),
            "normal_heavy": self.normal_heavy(),
            "normal_sasl_users": [u.sasl for u in self.users
                                  if u.sasl not in self.anomalies.sasl_users],
            "anomalies": self.anomalies.report(),
            "counts": counts,
        }

    def normal_heavy(self) -> list[dict]:
        out = []
        for hv in self.heavies:
            share = hv.weight / self.heavy_cw[-1]
            common = {"label": hv.label, "share_of_heavy_sessions": round(share, 3)}
            for h in hv.hosts:
                out.append({"dimension": "client_ip", "key": h.ip, **common})
            out.append({"dimension": "client_net", "key": net_of(hv.hosts[0].ip), **common})
            if hv.mode == "fixed":
                out.append({"dimension": "sender", "key": hv.fixed, **common})
            out.append({"dimension": "sender_domain", "key": hv.domain, **common})
        return out


def _accumulate(values: Iterable[float]) -> Iterable[float]:
    acc = 0.0
    for v in values:
        acc += v
        yield acc


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def truth_definitions() -> str:
    """The contract section of this module's docstring (copied into the truth file)."""
    doc = __doc__ or ""
    i = doc.find("Ground truth")
    return doc[i:].strip() if i >= 0 else doc


# ----------------------------------------------------------------------------- volume control


class Source(NamedTuple):
    name: str
    fn: Callable[[float], None]
    weight: float
    profile: list[float]
    prior_lines: float


class Controller:
    """Picks how many sessions each source starts per minute so that the file reaches
    ``--lines`` right at the end of the span: the per-minute rate multiplier is
    re-derived every minute from the lines still wanted and what the remaining
    profile would produce at the observed lines per session."""

    def __init__(self, g: Generator) -> None:
        self.g = g
        hours = [self._local_hour(g.t_start + 60 * m + 30) for m in range(g.minutes)]
        day = [day_level(h) for h in hours]
        office = [office_level(h) for h in hours]
        flat = [1.0] * g.minutes
        mild = [0.5 + 0.5 * d for d in day]
        self.sources = [
            Source("mx", g.src_mx, 1.0, day, 11.0),
            Source("heavy", g.src_heavy, 0.16, flat, 17.0),
            Source("submission", g.src_sub, 0.35, office, 14.0),
            Source("bad", g.src_bad, 0.75, mild, 5.0),
            Source("ssh", g.src_ssh, 0.14, flat, 6.0 if g.others else 0.0),
            Source("kernel", g.src_kernel, 0.55, flat, 1.0 if g.others else 0.0),
            Source("imap", g.src_imap, 0.45, office, 2.0 if g.others else 0.0),
            Source("pickup", g.src_pickup, 0.004, flat, 6.0),
        ]
        self.suffix = [self._suffix(s) for s in self.sources]
        self.lines = [0] * len(self.sources)
        self.sessions = [0] * len(self.sources)
        self.fixed_lines = 0
        self.seq = 0

    def _local_hour(self, t: float) -> float:
        d = dt.datetime.fromtimestamp(t, self.g.tz)
        return d.hour + d.minute / 60

    @staticmethod
    def _suffix(src: Source) -> list[float]:
        out = [0.0] * (len(src.profile) + 1)
        for i in range(len(src.profile) - 1, -1, -1):
            out[i] = out[i + 1] + src.weight * src.profile[i]
        return out

    def note(self, src: int, lines: int) -> None:
        self.lines[src] += lines
        self.sessions[src] += 1

    def lines_per_session(self, i: int) -> float:
        prior = self.sources[i].prior_lines
        return (self.lines[i] + 20 * prior) / (self.sessions[i] + 20)

    def multiplier(self, minute: int) -> float:
        g = self.g
        left = g.minutes - minute
        fixed_rate = self.fixed_lines / minute if minute else 1.0
        # Aim a little past --lines (the run stops at --lines, just before the span ends).
        # Anomalies count with their planned size, so normal traffic does not react to them.
        anomalies = g.anomalies.budget if g.anomalies.pending() else g.anomalies.lines
        target = (g.cfg.lines * 1.002 + 50 - anomalies
                  - self.fixed_lines - fixed_rate * left - sum(self.lines))
        expect = sum(self.lines_per_session(i) * self.suffix[i][minute]
                     for i in range(len(self.sources)))
        return max(0.0, target / expect) if expect > 0 else 0.0

    def plan_minute(self, minute: int, t0: float) -> list[tuple[float, int, int, object]]:
        """All session starts of this minute, normal and anomalous, in time order."""
        rng = self.g.rng
        m = self.multiplier(minute)
        starts: list[tuple[float, int, int, object]] = []
        for i, src in enumerate(self.sources):
            for _ in range(poisson(rng, m * src.weight * src.profile[minute])):
                self.seq += 1
                starts.append((t0 + 60 * rng.random(), self.seq, i, None))
        for t, item in self.g.anomalies.items_before(t0 + 60):
            self.seq += 1
            starts.append((t, self.seq, -1, item))
        starts.sort(key=lambda x: (x[0], x[1]))
        return starts


# ----------------------------------------------------------------------------- anomalies


class Anomalies:
    """Planned abuse (botnet burst, stolen SASL account, SASL brute force, dictionary
    attack) in the busy part of the second day; records what really happened."""

    def __init__(self, g: Generator) -> None:
        self.g = g
        self.plan: list[tuple[float, int, tuple]] = []
        self.pos = 0
        self.entries: list[dict] = []
        self.sasl_users: set[str] = set()
        self.budget = 0.0  # planned lines: the volume controller sets them aside up front
        self.lines = 0  # lines they really produced
        if g.cfg.anomalies:
            self._plan_all()

    # -- planning

    def window(self) -> tuple[float, float]:
        g = self.g
        first = dt.datetime.fromtimestamp(g.t_start, g.tz)
        day2 = (first + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        lo = max(day2.replace(hour=9).timestamp(), g.t_start)
        hi = min(day2.replace(hour=17).timestamp(), g.t_end - 3600)
        if hi - lo < 5400:
            lo, hi = g.t_start + 0.55 * (g.t_end - g.t_start), g.t_end - 0.1 * (g.t_end - g.t_start)
        return lo, hi

    def n(self, lo: int, hi: int) -> int:
        return max(1, round(self.g.rng.randint(lo, hi) * self.g.cfg.anomaly_scale))

    def _entry(self, kind: str, dim: str, key: str, details: dict) -> int:
        self.entries.append({"kind": kind, "dimension": dim, "key": key, "first": None,
                             "last": None, "details": details})
        return len(self.entries) - 1

    def _add(self, t: float, est: float, item: tuple) -> None:
        self.plan.append((t, len(self.plan), item))
        self.budget += est

    def _start(self, duration: float) -> float:
        lo, hi = self.window()
        return lo + self.g.rng.random() * max(0.0, hi - lo - duration)

    def _plan_all(self) -> None:
        self._plan_botnet()
        self._plan_stolen_account()
        self._plan_bruteforce()
        self._plan_dictionary()
        self.plan.sort()

    def _plan_botnet(self) -> None:
        rng = self.g.rng
        ips = ["100.127.45.17", "100.127.45.83", "100.127.45.201", "198.19.251.9",
               "100.127.200.55"]
        t0 = self._start(1800)
        net_entry = self._entry("botnet", "client_net", "100.127.45.0/24", {"ips": ips[:3]})
        for ip in ips:
            host = Host(ip, f"unknown[{ip}]", rng.choice(BOT_HELOS), "")
            msgs = self.n(200, 400)
            e = self._entry("botnet", "client_ip", ip, {"messages_planned": msgs})
            start, dur = t0 + rng.uniform(0, 300), rng.uniform(480, 1200)
            while msgs > 0:
                k = min(msgs, rng.randint(1, 4))
                msgs -= k
                # Only hosts inside the /24 make the /24's anomaly start and end.
                in_net = ip in ips[:3]
                self._add(start + rng.random() * dur, 6 + k * (14 if self.g.others else 11),
                          ("botnet", (e, net_entry if in_net else None), host, k))

    def _plan_stolen_account(self) -> None:
        g, rng = self.g, self.g.rng
        user = g.users[min(len(g.users) - 1, 30)]
        self.sasl_users.add(user.sasl)
        n_ips = self.n(250, 350)
        e = self._entry("sasl_account_abuse", "sasl_user", user.sasl,
                        {"distinct_ips_planned": n_ips, "address": user.address})
        start, dur = self._start(3600), rng.uniform(1800, 3600)
        for _ in range(n_ips):
            ip = rand_ip6(rng) if rng.random() < 0.1 else (
                f"100.127.{rng.randint(60, 199)}.{rng.randint(1, 254)}")
            host = Host(ip, f"unknown[{ip}]", f"[{ip}]", "")
            for _ in range(1 + (rng.random() < 0.4)):
                k = 1 + (rng.random() < 0.4)
                est = 8 + k * (23 if g.others else 22)
                self._add(start + rng.random() * dur, est, ("stolen", e, user, host, k))

    def _plan_bruteforce(self) -> None:
        rng = self.g.rng
        for ip in ("100.127.9.13", "198.19.252.77", "2001:db8:bad:1::66"):
            host = Host(ip, f"unknown[{ip}]", "User", "")
            fails = self.n(300, 600)
            e = self._entry("sasl_bruteforce", "client_ip", ip, {"failures_planned": fails})
            start, dur = self._start(2400), rng.uniform(1200, 2400)
            while fails > 0:
                k = min(fails, rng.randint(1, 3))
                fails -= k
                self._add(start + rng.random() * dur, 4 + k, ("brute", e, host, k))

    def _plan_dictionary(self) -> None:
        rng = self.g.rng
        ip = "100.127.9.99"
        host = Host(ip, f"unknown[{ip}]", "mail.example.invalid", "")
        n = self.n(400, 600)
        e = self._entry("dictionary_attack", "client_ip", ip, {"rcpts_planned": n})
        start, dur = self._start(1500), rng.uniform(900, 1500)
        sender = self.g.forged_sender()
        while n > 0:
            k = min(n, 20)
            n -= k
            self._add(start + rng.random() * dur, 5 + k, ("dict", e, host, k, sender))

    # -- running

    def pending(self) -> bool:
        return self.pos < len(self.plan)

    def items_before(self, limit: float) -> list[tuple[float, tuple]]:
        out = []
        while self.pos < len(self.plan) and self.plan[self.pos][0] < limit:
            t, _, item = self.plan[self.pos]
            out.append((t, item))
            self.pos += 1
        return out

    def run_item(self, t: float, item: tuple) -> None:
        kind = item[0]
        g = self.g
        if kind == "botnet":
            _, (e, net_e), host, k = item
            end = self.botnet_session(t, host, k)
            self._seen(e, t, end)
            if net_e is not None:
                self._seen(net_e, t, end)
        elif kind == "stolen":
            _, e, user, host, k = item
            sender = user.address if g.rng.random() < 0.6 else g.forged_sender()
            end = g.submission(t, user, host, [g.rng.randint(5, 20) for _ in range(k)],
                               profile="spam", sender=sender,
                               service="submission" if g.rng.random() < 0.7 else "smtps")
            self._seen(e, t, end)
        elif kind == "brute":
            _, e, host, k = item
            self._seen(e, t, self.brute_session(t, host, k))
        elif kind == "dict":
            _, e, host, k, sender = item
            self._seen(e, t, self.dict_session(t, host, k, sender))

    def _seen(self, e: int, start: float, end: float) -> None:
        entry = self.entries[e]
        if entry["first"] is None or start < entry["first"]:
            entry["first"] = start
        if entry["last"] is None or end > entry["last"]:
            entry["last"] = end

    def botnet_session(self, t: float, host: Host, k: int) -> float:
        g, rng = self.g, self.g.rng
        s = g.open_session(t, host)
        g.greet(s, False)
        for _ in range(k):
            rcpts = g.local_rcpts(rng.randint(3, 12), 0.08)
            g.transaction(s, g.forged_sender(), rcpts)
        return g.close(s)

    def brute_session(self, t: float, host: Host, k: int) -> float:
        g = self.g
        s = g.open_session(t, host, "submission", postscreen=False)
        g.greet(s, True)
        for _ in range(k):
            g.step(s, 10)
            s.cmd("auth", ok=False)
            self._brute_fail(s)
        return g.close(s, "lost")

    def _brute_fail(self, s: Sess) -> None:
        g, rng = self.g, self.g.rng
        user = None
        if rng.random() < 0.6:
            user = (f"{rng.choice(BRUTE_NAMES + FIRST)}{rng.randint(1, 9999)}"
                    f"{rng.choice(('', '@example.net', '@example.org'))}")
        reason = "authentication failure" if user else "UGFzc3dvcmQ6"
        g.auth_fail(s, "LOGIN", reason, user)

    def dict_session(self, t: float, host: Host, k: int, sender: str) -> float:
        g = self.g
        s = g.open_session(t, host)
        g.greet(s, False)
        g.transaction(s, sender, [(g.unknown_local(), "unknown_user") for _ in range(k)])
        return g.close(s, "errors" if k == 20 else "quit")

    def report(self) -> list[dict]:
        out = []
        for e in self.entries:
            if e["first"] is None:
                continue
            out.append({"kind": e["kind"], "dimension": e["dimension"], "key": e["key"],
                        "start": round(e["first"], 3), "start_iso": iso(e["first"]),
                        "end": round(e["last"], 3), "end_iso": iso(e["last"]),
                        "details": e["details"]})
        return out


# ----------------------------------------------------------------------------- API / CLI


def generate(cfg: Config, out: IO[str]) -> dict:
    """Write the log to ``out``; return the truth document."""
    g = Generator(cfg)
    g.run(out)
    return g.truth_json()


def write_truth(truth: dict, path: str) -> None:
    """Metadata indented, one compact line per counted key (large but diffable)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("{\n")
        items = [(k, v) for k, v in truth.items() if k != "counts"]
        for k, v in items:
            fh.write(f"{json.dumps(k)}: {json.dumps(v, indent=1)},\n")
        fh.write('"counts": {\n')
        dims = list(truth["counts"].items())
        for di, (dim, table) in enumerate(dims):
            fh.write(f" {json.dumps(dim)}: {{\n")
            rows = list(table.items())
            for ri, (key, row) in enumerate(rows):
                sep = "," if ri < len(rows) - 1 else ""
                fh.write(f"  {json.dumps(key)}: {json.dumps(row, separators=(',', ':'))}{sep}\n")
            fh.write(" }" + ("," if di < len(dims) - 1 else "") + "\n")
        fh.write("}\n}\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", required=True, help="log file to write ('-' for stdout)")
    p.add_argument("--truth", help="write the ground truth JSON here")
    p.add_argument("--format", dest="fmt", choices=("bsd", "maillog", "rfc3339"),
                   default="bsd")
    p.add_argument("--start", default="2026-03-02T00:00", help="local start time (ISO)")
    p.add_argument("--hours", type=float, default=36.0)
    p.add_argument("--tz", default="UTC", help="zone of the log's local time")
    p.add_argument("--anomalies", action="store_true", help="inject the anomalies")
    p.add_argument("--anomaly-scale", type=float, default=1.0)
    p.add_argument("--long-qid-share", type=float, default=0.05)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--model", choices=("mx", "isp"), default="mx",
                   help="mx: this module's MX host (default); isp: bench/traffic_isp.py, an "
                        "access ISP's gateway (RFC 3339 stamps; --lines, --fmt, --tz and "
                        "--long-qid-share do not apply; --anomalies adds its attacks)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="model isp: population and volume multiplier")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.model == "isp":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import traffic_isp  # sibling module, also when loaded from a file path

        return traffic_isp.main_isp(a)
    cfg = Config(lines=a.lines, seed=a.seed, start=a.start, hours=a.hours, tz=a.tz,
                 fmt=a.fmt, anomalies=a.anomalies, anomaly_scale=a.anomaly_scale,
                 long_qid_share=a.long_qid_share)
    t0 = time.perf_counter()
    if a.out == "-":
        truth = generate(cfg, sys.stdout)
    else:
        with open(a.out, "w", encoding="utf-8", buffering=1 << 20) as fh:
            truth = generate(cfg, fh)
    secs = time.perf_counter() - t0
    if a.truth:
        write_truth(truth, a.truth)
    if not a.quiet:
        print(f"{truth['lines']} lines in {secs:.1f} s ({truth['lines'] / secs:,.0f} lines/s), "
              f"last line {truth['span']['last_line_iso']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
