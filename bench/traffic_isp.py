"""Traffic model B: an access ISP's submission and MX gateway, with ground truth.

Why a second model: the first model (``generate_log.py``) is one MX host seen from
the Internet. Rules tuned on it can still lock out what an ISP's own customers do
every day. This model starts from the customers instead: roaming phones that
submit from a dozen carrier addresses an hour, hundreds of customers behind one
carrier-grade NAT address, a webmail front-end submitting for thousands of users
from one IP, mailing lists and forwarders with stale subscribers, newsletters at
fixed hours, a backup MX relaying everything (spam included), phones with a stale
password retrying for days. Its attacks include slow ones built to stay under
fixed limits (a slow brute force, a low-and-slow botnet, a stolen account that
ramps up over a day) beside the loud ones (brute force, dictionary attack, an
account used from hundreds of addresses, a spam run from a customer line).

Every habit is drawn from the seed (rates, sizes, hours, counts, address ranges,
names, the ISP's time zone), so rules tuned to one log are not tuned to the next.

Log form (also deliberately unlike model A): RFC 3339 stamps in UTC on host
``gw-<n>``, two Postfix instances (``postfix-mx`` for port 25, ``postfix-sub`` for
submission/smtps), long queue ids only, one smtpd process per session.

Ground truth (``IspTraffic.truth``):

* ``actors``: one entry per legitimate actor: ``name, kind, keys`` ([dimension,
  key] pairs: client_ip, client_net, sender, sender_domain, sasl_user).
* ``attacks``: ``name, kind, slow, keys, start`` (first attack line, epoch UTC),
  ``end``, and ``due_from``: from when a detector can be asked to have flagged it.
  Loud attacks: ``due_from = start``. Slow attacks: the first moment one of the
  attack's keys does something no legitimate key does -- its count of a feature
  (``FEATURES``: over a sliding hour; the auth features also over six hours)
  exceeds ``ABS_FACTOR`` times the highest value any legitimate key of the same
  dimension reaches anywhere in the log, or (for an account that had a legitimate
  owner before) its messages in an hour exceed ``OWN_FACTOR`` times the owner's own
  highest hour before the attack (or than the best hour of a busy customer -- the
  90th percentile of legitimate accounts' best hours -- if that is higher). Computed
  from the generated events, independent of any rule file; ``evidence`` says which
  feature crossed.
* ``counts[dimension][key][metric]`` for client_ip, sasl_user and sender (metrics
  connections, messages, recipients, rejects, auth_failures, with model A's
  definitions), so the log can be checked against ``replay --json``.
* ``shared_keys``: keys used by more than one actor (the ISP's own domain ...).

A key that an attack involves is never counted as a legitimate key, even if a
legitimate actor also used it (the account a thief stole; the /24 of the customer
line a spam bot runs on).
"""

from __future__ import annotations

import argparse
import datetime as dt
import heapq
import itertools
import json
import math
import random
import sys
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import IO

MODEL_VERSION = 1
ABS_FACTOR = 2.0  # a slow attack is evident above twice the legitimate maximum ...
OWN_FACTOR = 5.0  # ... or above five times its own account's best legitimate hour
HOUR = 3600.0
# (dimension, feature, window seconds) compared for ``due_from``; auth features also
# over 6 hours, since a slow guesser spreads its attempts over many hours
FEATURES = tuple(
    [(d, f, HOUR) for d in ("client_ip", "client_net")
     for f in ("auth_failures", "auth_users", "messages", "rejects")]
    + [(d, f, 6 * HOUR) for d in ("client_ip", "client_net")
       for f in ("auth_failures", "auth_users")]
    + [("sender", "messages", HOUR), ("sender", "client_ips", HOUR)]
    + [("sasl_user", f, HOUR) for f in ("messages", "client_ips", "recipients",
                                        "auth_failures")])

SAFE = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxy"  # no 'z': it separates
GIVEN = ("akira", "bea", "carlos", "dana", "elif", "femi", "gita", "hugo", "ilse", "jonas",
         "kofi", "leila", "marek", "nadia", "otto", "pia", "quentin", "rui", "saanvi", "timo",
         "ursula", "vlad", "wei", "xenia", "yara", "zeno", "ayla", "bruno", "chidi", "dilan")
FAMILY = ("abe", "bauer", "cruz", "dahl", "eze", "fischer", "gomez", "haas", "ishii", "jovanovic",
          "kaur", "lindqvist", "mori", "nowak", "okafor", "petrov", "quist", "reyes", "sato",
          "tran", "ueda", "varga", "weiss", "xu", "yamamoto", "zimmer", "ahmed", "bianchi")
ISP_NAMES = ("kabelnet", "fibrenorth", "lagoonline", "altanet", "peakfiber", "riverisp",
             "coastline-dsl", "mesanet", "tundra-broadband", "orchardnet")
BRANDS = ("shopmart", "travelzone", "dailybugle", "bankofexample", "musicbox", "fitclub",
          "gadgetworld", "cityrail", "cinemaplex", "homestore", "bookworm", "petpal")
EXT_DOMAINS = ("gmail.example", "outlook.example", "yahoo.example", "web.example",
               "gmx.example", "orange.example", "proton.example", "icloud.example",
               "uni-hamburg.example", "acme-corp.example", "contoso.example", "fabrikam.example")
BRUTE_USERS = ("admin", "info", "test", "sales", "office", "support", "webmaster", "contact",
               "postmaster", "user", "mail", "marketing", "billing", "hr", "scanner", "root")
TLS = "TLSv1.3 with cipher TLS_AES_128_GCM_SHA256 (128/128 bits) key-exchange X25519"


@dataclass
class IspConfig:
    seed: int = 1
    hours: float = 36.0
    start: str = "2026-05-11T00:00:00"  # UTC
    scale: float = 1.0  # population and volume multiplier (tests use < 1)
    attacks: bool = True


# ----------------------------------------------------------------------------- helpers


def iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).isoformat().replace("+00:00", "Z")


def net_of(ip: str) -> str:
    if ":" in ip:
        parts = ip.split(":")
        return ":".join(parts[:4]) + "::/64"
    return ip[: ip.rfind(".")] + ".0/24"


def domain_of(addr: str) -> str | None:
    return addr.rsplit("@", 1)[1] if "@" in addr else None


def b52(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, len(SAFE))
        out.append(SAFE[r])
    return "".join(reversed(out))


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class Ipv4Space:
    """Hands out addresses from /16 blocks of 240.0.0.0/4 (reserved: never a real
    host) so that every actor's range is disjoint unless it shares on purpose."""

    def __init__(self, rng: random.Random) -> None:
        blocks = [(a, b) for a in range(240, 256) for b in range(256)]
        rng.shuffle(blocks)
        self.blocks = blocks
        self.rng = rng

    def block(self) -> tuple[int, int]:
        return self.blocks.pop()

    def host(self, block: tuple[int, int], third: int | None = None) -> str:
        c = self.rng.randint(0, 255) if third is None else third
        return f"{block[0]}.{block[1]}.{c}.{self.rng.randint(1, 254)}"


# ----------------------------------------------------------------------------- log writing


class Session:
    """One smtpd session being written: clock, tag, client, command counters."""

    def __init__(self, log: Log, t: float, ip: str, name: str, helo: str, sub: bool) -> None:
        self.log, self.t, self.ip, self.helo, self.sub = log, t, ip, helo, sub
        self.client = f"{name}[{ip}]"
        self.inst = "postfix-sub" if sub else "postfix-mx"
        self.tag = (f"{self.inst}/submission/smtpd[{log.pid()}]: " if sub
                    else f"{self.inst}/smtpd[{log.pid()}]: ")
        self.cmds: dict[str, list[int]] = {}
        self.put(f"connect from {self.client}")
        log.tally("client_ip", ip, 0)
        log.mine("client_ip", ip)

    def put(self, text: str) -> None:
        self.log.add(self.t, self.tag + text)

    def step(self, lo: float = 0.02, hi: float = 0.3) -> None:
        self.t += self.log.rng.uniform(lo, hi)

    def cmd(self, name: str, ok: bool = True) -> None:
        c = self.cmds.setdefault(name, [0, 0])
        c[0] += ok
        c[1] += 1

    def close(self, lost: bool = False) -> float:
        self.step()
        if lost:
            self.put(f"lost connection after AUTH from {self.client}")
        else:
            self.cmd("quit")
        self.t += 0.0004
        order = ("ehlo", "starttls", "auth", "mail", "rcpt", "data", "quit")
        parts, ok_sum, total = [], 0, 0
        for n in order:
            if n in self.cmds:
                ok, tot = self.cmds[n]
                ok_sum, total = ok_sum + ok, total + tot
                parts.append(f"{n}={ok}" if ok == tot else f"{n}={ok}/{tot}")
        parts.append(f"commands={ok_sum}" if ok_sum == total else f"commands={ok_sum}/{total}")
        self.put(f"disconnect from {self.client} " + " ".join(parts))
        return self.t


class Log:
    """Lines in a heap (sessions overlap), written in time order; the truth counts."""

    def __init__(self, rng: random.Random, host: str, local_domains: list[str]) -> None:
        self.rng, self.host, self.local = rng, host, set(local_domains)
        self.heap: list[tuple[float, int, str]] = []
        self.seq = 0
        self.lines = 0
        self._pid = rng.randint(3000, 90000)
        self._qn = rng.randint(0, 50000)
        self.qmgr_pid = {"postfix-mx": self.pid(), "postfix-sub": self.pid()}
        self.agent_pids = [self.pid() for _ in range(rng.randint(3, 12))]  # long-lived
        self.counts: dict[str, dict[str, list[int]]] = {
            "client_ip": {}, "sasl_user": {}, "sender": {}}
        # evidence streams: (time, actor, dimension, key, feature, amount or member)
        self.events: list[tuple[float, int, str, str, str, object]] = []
        self.actor = -1  # whose lines are being written (index into the truth)
        self.keys: dict[int, set[tuple[str, str]]] = {}  # keys each actor's lines made
        self.tried: dict[int, set[str]] = {}  # user names each actor failed to log in as

    def mine(self, dim: str, key: str) -> None:
        self.keys.setdefault(self.actor, set()).add((dim, key))
        if dim == "client_ip":
            self.keys[self.actor].add(("client_net", net_of(key)))
        elif dim == "sender" and "@" in key:
            self.keys[self.actor].add(("sender_domain", key.rsplit("@", 1)[1]))

    def add(self, t: float, text: str) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, text))

    def pid(self) -> int:
        self._pid += self.rng.randint(1, 9)
        if self._pid > 4_000_000:
            self._pid = 1000
        return self._pid

    def qid(self, t: float) -> str:
        self._qn += 1
        return b52(int(t), 6) + b52(int((t % 1) * 1e6), 4) + "z" + b52(self._qn, 4)

    def tally(self, dim: str, key: str, metric: int, n: int = 1) -> None:
        row = self.counts[dim].get(key)
        if row is None:
            row = self.counts[dim][key] = [0, 0, 0, 0, 0]
        row[metric] += n

    def ev(self, t: float, dim: str, key: str, feature: str, value: object = 1) -> None:
        """One observation for the slow attacks' ``due_from`` (see evident_times)."""
        self.events.append((t, self.actor, dim, key, feature, value))

    def flush(self, out: IO[str], before: float) -> float | None:
        heap, buf, last = self.heap, [], None
        while heap and heap[0][0] < before:
            t, _, text = heapq.heappop(heap)
            s = int(t)
            stamp = dt.datetime.fromtimestamp(s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
            buf.append(f"{stamp}.{int((t - s) * 1e6):06d}+00:00 {self.host} {text}\n")
            last = t
        self.lines += len(buf)
        out.write("".join(buf))
        return last

    # -- pieces of a session

    def greet(self, s: Session, tls: bool = True) -> None:
        s.step()
        s.cmd("ehlo")
        if tls:
            s.step()
            s.cmd("starttls")
            s.step(0.05, 0.2)
            s.put(f"Anonymous TLS connection established from {s.client}: {TLS}")
            s.cmd("ehlo")

    def auth_fail(self, s: Session, user: str | None) -> None:
        s.step(0.3, 2.5)
        s.cmd("auth", ok=False)
        tail = f", sasl_username={user}" if user else ""
        reason = "authentication failure" if user else "UGFzc3dvcmQ6"
        s.put(f"warning: {s.client}: SASL LOGIN authentication failed: {reason}{tail}")
        self.tally("client_ip", s.ip, 4)
        self.ev(s.t, "client_ip", s.ip, "auth_failures")
        if user:
            self.tally("sasl_user", user, 4)
            self.tried.setdefault(self.actor, set()).add(user)
            self.ev(s.t, "sasl_user", user, "auth_failures")
            self.ev(s.t, "client_ip", s.ip, "auth_users", user)

    def reject(self, s: Session, sender: str, rcpt: str) -> None:
        s.step(0.01, 0.1)
        s.cmd("rcpt", ok=False)
        s.put(f"NOQUEUE: reject: RCPT from {s.client}: 550 5.1.1 <{rcpt}>: Recipient address "
              f"rejected: User unknown in virtual mailbox table; from=<{sender}> to=<{rcpt}> "
              f"proto=ESMTP helo=<{s.helo}>")
        self.tally("client_ip", s.ip, 3)
        self.tally("sender", sender or "<>", 3)
        self.ev(s.t, "client_ip", s.ip, "rejects")
        self.mine("sender", sender or "<>")

    def message(self, s: Session, sender: str, rcpts: list[str], unknown: Iterable[str] = (),
                sasl: str | None = None, p_bounce: float = 0.0, p_defer: float = 0.0) -> None:
        """MAIL, RCPTs (``unknown`` ones rejected), DATA and the message's queue life."""
        rng = self.rng
        s.step()
        s.cmd("mail")
        bad = set(unknown)
        qid, accepted = None, []
        for r in rcpts:
            if r in bad:
                self.reject(s, sender, r)
                continue
            s.step(0.01, 0.1)
            s.cmd("rcpt")
            if qid is None:
                qid = self.qid(s.t)
                extra = f", sasl_method=PLAIN, sasl_username={sasl}" if sasl else ""
                s.put(f"{qid}: client={s.client}{extra}")
            accepted.append(r)
        if qid is None:
            return
        s.step(0.05, 0.6)
        s.cmd("data")
        inst = s.inst
        self.add(s.t, f"{inst}/cleanup[{self.pid()}]: {qid}: message-id="
                      f"<{b52(rng.getrandbits(40), 8)}.{qid[-5:]}@{domain_of(sender) or 'local'}>")
        tq = s.t + rng.uniform(0.002, 0.02)
        size = int(rng.lognormvariate(8.6, 1.0)) + 700
        qmgr = f"{inst}/qmgr[{self.qmgr_pid[inst]}]: {qid}: "
        head = f"{qmgr}from=<{sender}>, size={size}, nrcpt={len(accepted)} (queue active)"
        self.add(tq, head)
        key = sender or "<>"
        self.mine("sender", key)
        if sasl:
            self.mine("sasl_user", sasl)
        self.tally("client_ip", s.ip, 1)
        self.tally("client_ip", s.ip, 2, len(accepted))
        self.tally("sender", key, 1)
        self.tally("sender", key, 2, len(accepted))
        self.ev(tq, "client_ip", s.ip, "messages")
        self.ev(tq, "sender", key, "messages")
        self.ev(tq, "sender", key, "client_ips", s.ip)
        if sasl:
            self.tally("sasl_user", sasl, 1)
            self.tally("sasl_user", sasl, 2, len(accepted))
            self.ev(tq, "sasl_user", sasl, "messages")
            self.ev(tq, "sasl_user", sasl, "client_ips", s.ip)
            self.ev(tq, "sasl_user", sasl, "recipients", len(accepted))
        t = tq
        pending = accepted
        tries = 0
        while pending:
            later = []
            for r in pending:
                t += rng.uniform(0.01, 0.4)
                d = domain_of(r)
                x = rng.random()
                status = ("deferred" if x < p_defer and tries == 0 else
                          "bounced" if x < p_defer + p_bounce else "sent")
                t = self._delivery(inst, qid, r, d, status, tq, t, sender)
                if status == "deferred":
                    later.append(r)
            if not later:
                break
            tries += 1
            t += rng.uniform(300, 1800)
            self.add(t, head)
            pending = later
        self.add(t + 0.002, f"{qmgr}removed")

    def _delivery(self, inst: str, qid: str, r: str, d: str | None, status: str, tq: float,
                  t: float, sender: str) -> float:
        rng = self.rng
        delays = f"delay={t - tq + 0.1:.2f}, delays=0.1/0/{rng.uniform(0, .1):.2f}/{t - tq:.2f}"
        if d in self.local:
            relay = "store1.mail.internal[10.20.0.5]:24"
            agent = "lmtp"
            text = {"sent": f"250 2.0.0 <{r}> Saved",
                    "deferred": f"451 4.2.0 <{r}> Mailbox locked, try later",
                    "bounced": f"552 5.2.2 <{r}> Mailbox full"}[status]
            text = f"host {relay[:-3]} said: {text} (in reply to end of DATA command)" \
                if status != "sent" else text
        else:
            agent = "smtp"
            relay = f"mx.{d}[192.0.2.{1 + zlib.crc32(str(d).encode()) % 250}]:25"
            text = {"sent": f"250 2.0.0 Ok: queued as {b52(rng.getrandbits(30), 6)}",
                    "deferred": f"host {relay[:-3]} said: 421 4.7.0 Try again later "
                                "(in reply to MAIL FROM command)",
                    "bounced": f"host {relay[:-3]} said: 550 5.1.1 <{r}>: User unknown "
                               "(in reply to RCPT TO command)"}[status]
        dsn = {"sent": "2.0.0", "deferred": "4.7.0", "bounced": "5.1.1"}[status]
        self.add(t, f"{inst}/{agent}[{rng.choice(self.agent_pids)}]: {qid}: "
                    f"to=<{r}>, relay={relay}, {delays}, dsn={dsn}, status={status} ({text})")
        if status == "bounced" and sender:
            t += 0.01
            nq = self.qid(t)
            self.add(t, f"{inst}/bounce[{self.pid()}]: {qid}: sender non-delivery notification: "
                        f"{nq}")
            self.add(t + 0.001, f"{inst}/cleanup[{self.pid()}]: {nq}: message-id=<ndr.{nq}@gw>")
            qmgr = f"{inst}/qmgr[{self.qmgr_pid[inst]}]: {nq}: "
            self.add(t + 0.002, f"{qmgr}from=<>, size=3100, nrcpt=1 (queue active)")
            nd = domain_of(sender)
            if nd in self.local:
                line = (f"to=<{sender}>, relay=store1.mail.internal[10.20.0.5]:24, delay=0.1, "
                        f"delays=0/0/0/0.1, dsn=2.0.0, status=sent (250 2.0.0 <{sender}> Saved)")
                self.add(t + 0.05, f"{inst}/lmtp[{self.agent_pids[0]}]: {nq}: {line}")
            else:
                self.add(t + 0.2, f"{inst}/smtp[{self.agent_pids[-1]}]: {nq}: to=<{sender}>, "
                                  f"relay=mx.{nd}[192.0.2.9]:25, delay=0.3, delays=0/0/0.1/0.2, "
                                  "dsn=2.0.0, status=sent (250 2.0.0 Ok)")
            self.add(t + 0.3, f"{qmgr}removed")
        return t


# ----------------------------------------------------------------------------- the world


@dataclass
class Actor:
    name: str
    kind: str
    attack: bool = False
    slow: bool = False
    index: int = 0
    keys: set[tuple[str, str]] = field(default_factory=set)
    first: float | None = None
    last: float | None = None
    details: dict = field(default_factory=dict)


Job = tuple[float, int, int, Callable[[float], float]]  # (time, seq, actor, fn)


class IspTraffic:
    """Builds the world from the seed, then writes the log in time order."""

    def __init__(self, cfg: IspConfig) -> None:
        self.cfg = cfg
        self.rng = rng = random.Random(cfg.seed)
        self.t0 = dt.datetime.fromisoformat(cfg.start).replace(tzinfo=dt.UTC).timestamp()
        self.t1 = self.t0 + cfg.hours * HOUR
        self.tz_hours = rng.choice((-8, -5, -3, 0, 1, 2, 3, 5.5, 8, 9))
        isp = rng.choice(ISP_NAMES)
        self.isp_domain = f"{isp}.example"
        self.local_domains = [self.isp_domain] + [
            f"{rng.choice(BRANDS)}-{rng.choice(('law', 'dental', 'bakery', 'club', 'gmbh'))}"
            f".example" for _ in range(rng.randint(1, 3))]
        self.log = Log(rng, f"gw-{rng.randint(1, 9)}.{self.isp_domain}", self.local_domains)
        self.space = Ipv4Space(rng)
        self.actors: list[Actor] = []
        self.jobs: list[Job] = []
        self._seq = 0
        self._used_names: set[str] = set()
        self.owned: set[str] = set()  # accounts a roamer or stale phone stands for
        self.mailboxes = [self.customer_address() for _ in range(self.n(2500, 5000))]
        self.build()

    # -- small tools

    def n(self, lo: int, hi: int) -> int:
        return max(1, round(self.rng.randint(lo, hi) * self.cfg.scale))

    def local_hour(self, t: float) -> float:
        return (t / HOUR + self.tz_hours) % 24

    def day(self, t: float) -> float:
        """0.15 at night .. 1.0 in the afternoon (local time)."""
        h = self.local_hour(t)
        return 0.15 + 0.85 * max(0.0, math.sin(math.pi * (h - 6.5) / 16)) if 6.5 < h < 22.5 \
            else 0.15

    def customer_address(self, domain: str | None = None) -> str:
        rng = self.rng
        while True:
            g, f = rng.choice(GIVEN), rng.choice(FAMILY)
            local = rng.choice((f"{g}.{f}", f"{g[0]}{f}", f"{g}{rng.randint(1, 99)}",
                                f"{f}.{g}{rng.randint(60, 99)}"))
            addr = f"{local}@{domain or self.rng.choice(self.local_domains)}"
            if addr not in self._used_names:
                self._used_names.add(addr)
                return addr

    def ext_addr(self) -> str:
        rng = self.rng
        return f"{rng.choice(GIVEN)}.{rng.choice(FAMILY)}{rng.randint(1, 999)}@" \
               f"{rng.choice(EXT_DOMAINS)}"

    def stale_addr(self) -> str:
        rng = self.rng
        return f"{rng.choice(GIVEN)}{rng.choice(FAMILY)}{rng.randint(100, 9999)}@" \
               f"{rng.choice(self.local_domains)}"

    def own_user(self) -> str:
        """An account that only this actor (roamer, stale phone) is about."""
        user = self.rng.choice([m for m in self.mailboxes if m not in self.owned])
        self.owned.add(user)
        return user

    def actor(self, name: str, kind: str, attack: bool = False, slow: bool = False) -> Actor:
        a = Actor(name, kind, attack, slow, index=len(self.actors))
        self.actors.append(a)
        return a

    def at(self, t: float, a: Actor, fn: Callable[[float], float]) -> None:
        if self.t0 <= t < self.t1:
            self._seq += 1
            self.jobs.append((t, self._seq, a.index, fn))

    def poisson_times(self, lo: float, hi: float, per_hour: Callable[[float], float]
                      ) -> list[float]:
        """Event times in [lo, hi) of a Poisson process with a varying hourly rate."""
        rng, out, t = self.rng, [], lo
        while t < hi:
            step = min(HOUR, hi - t)
            k = poisson(rng, per_hour(t) * step / HOUR)
            out.extend(t + rng.random() * step for _ in range(k))
            t += step
        return sorted(out)

    def submit(self, t: float, ip: str, name: str, user: str, sender: str,
               batches: list[list[str]], *, fail_first: bool = False, p_bounce: float = 0.01,
               lost: bool = False) -> float:
        log = self.log
        s = Session(log, t, ip, name, self.rng.choice(("[192.168.1.20]", "iPhone", "laptop",
                                                       "DESKTOP-7Q2", "android")), True)
        log.greet(s)
        if fail_first:
            log.auth_fail(s, user)
        s.step()
        s.cmd("auth")
        for rcpts in batches:
            log.message(s, sender, rcpts, sasl=user, p_bounce=p_bounce, p_defer=0.01)
        return s.close(lost)

    def deliver_in(self, t: float, ip: str, name: str, helo: str,
                   msgs: list[tuple[str, list[str], list[str]]], tls: bool = True) -> float:
        """Port 25: messages (sender, recipients, the unknown ones among them)."""
        log = self.log
        s = Session(log, t, ip, name, helo, False)
        log.greet(s, tls)
        for sender, rcpts, unknown in msgs:
            log.message(s, sender, rcpts, unknown, p_defer=0.002)
        return s.close()

    def rcpts_local(self, k: int, p_unknown: float) -> tuple[list[str], list[str]]:
        rng = self.rng
        rc, unk = [], []
        for _ in range(k):
            if rng.random() < p_unknown:
                x = self.stale_addr()
                unk.append(x)
            else:
                x = rng.choice(self.mailboxes)
            if x not in rc:
                rc.append(x)
        return rc, [u for u in unk if u in rc]

    # -- building

    def build(self) -> None:
        self.build_background()
        self.build_roamers()
        self.build_cgnat()
        self.build_webmail()
        self.build_lists()
        self.build_newsletters()
        self.build_backup_mx()
        self.build_forwarders()
        self.build_stale_phones()
        if self.cfg.attacks:
            self.build_attacks()

    def build_background(self) -> None:
        """Home customers (one line each) and ordinary inbound mail servers."""
        rng = self.rng
        self.home_blocks = [self.space.block() for _ in range(rng.randint(2, 4))]
        self.home = []
        for i in range(self.n(300, 700)):
            a = self.actor(f"home-{i}", "home_customer")
            ip = self.space.host(rng.choice(self.home_blocks), rng.randint(0, 40))
            user = rng.choice(self.mailboxes)
            rate = rng.uniform(0.3, 6.0) / 24
            self.home.append((a, ip, user, rate))
            for t in self.poisson_times(self.t0, self.t1, lambda t, r=rate: r * self.day(t) * 2):
                k = 1 + (rng.random() < 0.2)
                batches = [[self.ext_addr() if rng.random() < 0.7 else rng.choice(self.mailboxes)
                            for _ in range(1 + poisson(rng, 0.6))] for _ in range(k)]
                self.at(t, a, lambda t, ip=ip, u=user, b=batches: self.submit(
                    t, ip, f"dyn-{ip.replace('.', '-')}.{self.isp_domain}", u, u, b,
                    fail_first=rng.random() < 0.005))
        n_servers = self.n(150, 400)
        for i in range(n_servers):
            a = self.actor(f"inbound-{i}", "inbound_server")
            ip = self.space.host(self.space.block())
            dom = rng.choice(EXT_DOMAINS) if rng.random() < 0.5 else \
                f"{rng.choice(BRANDS)}{rng.randint(1, 99)}.example"
            rate = min(300.0, rng.paretovariate(1.3) * 0.6)  # per hour: heavy tail, capped
            senders = [f"{rng.choice(GIVEN)}.{rng.choice(FAMILY)}@{dom}"
                       for _ in range(rng.randint(1, 20))]
            for t in self.poisson_times(self.t0, self.t1, lambda t, r=rate: r * self.day(t)):
                msgs = []
                for _ in range(1 + poisson(rng, 0.3)):
                    rc, unk = self.rcpts_local(1 + poisson(rng, 0.4), 0.01)
                    msgs.append((rng.choice(senders), rc, unk))
                self.at(t, a, lambda t, ip=ip, m=msgs, d=dom: self.deliver_in(
                    t, ip, f"out{rng.randint(1, 9)}.{d}", f"out.{d}", m))

    def build_roamers(self) -> None:
        """Users submitting from ~10-12 different carrier/home/office addresses every
        hour, day and night, for the whole log."""
        rng = self.rng
        self.mobile_blocks = [self.space.block() for _ in range(rng.randint(2, 4))]
        for i in range(rng.randint(3, 7)):
            a = self.actor(f"roamer-{i}", "roaming_user")
            user = self.own_user()
            lo = rng.randint(9, 11)
            hi = lo + rng.randint(1, 2)
            fixed = [self.space.host(rng.choice(self.home_blocks)) for _ in range(2)]
            v6 = rng.random() < 0.5
            a.details = {"ips_per_hour": [lo, hi]}
            h = self.t0 + rng.uniform(0, 600)
            while h < self.t1:
                k = rng.randint(lo, hi)
                ips = list(fixed)
                while len(ips) < k:
                    if v6 and rng.random() < 0.3:
                        ips.append(f"2001:db8:{rng.randint(0x100, 0xfff):x}:"
                                   f"{rng.randint(1, 0xffff):x}::{rng.randint(1, 0xffff):x}")
                    else:
                        ips.append(self.space.host(rng.choice(self.mobile_blocks)))
                for ip in ips:
                    t = h + rng.random() * HOUR
                    batches = [[self.ext_addr() for _ in range(1 + poisson(rng, 0.5))]
                               for _ in range(1 + (rng.random() < 0.3))]
                    self.at(t, a, lambda t, ip=ip, u=user, b=batches: self.submit(
                        t, ip, "unknown", u, u, b))
                h += HOUR

    def build_cgnat(self) -> None:
        """One public address in front of hundreds of mobile customers."""
        rng = self.rng
        a = self.actor("cgnat", "carrier_nat")
        self.cgnat_ip = ip = self.space.host(rng.choice(self.mobile_blocks))
        users = rng.sample(self.mailboxes, self.n(150, 400))
        a.details = {"customers": len(users)}
        cum = list(itertools.accumulate(1 / (i + 1) ** 0.7 for i in range(len(users))))
        per_user_day = rng.uniform(2, 8)
        rate = len(users) * per_user_day / 24
        for t in self.poisson_times(self.t0, self.t1, lambda t: rate * self.day(t) * 1.8):
            u = rng.choices(users, cum_weights=cum)[0]  # a few customers send most
            batches = [[self.ext_addr() if rng.random() < 0.8 else rng.choice(self.mailboxes)
                        for _ in range(1 + poisson(rng, 0.4))]]
            self.at(t, a, lambda t, u=u, b=batches: self.submit(
                t, ip, "cgn-pool.mobile.example", u, u, b, fail_first=rng.random() < 0.005))

    def build_webmail(self) -> None:
        rng = self.rng
        a = self.actor("webmail", "webmail_frontend")
        ip = self.space.host(self.space.block())
        users = rng.sample(self.mailboxes, min(len(self.mailboxes), self.n(1500, 4000)))
        peak = rng.uniform(150, 700) * self.cfg.scale
        a.details = {"users": len(users), "peak_per_hour": round(peak)}
        for t in self.poisson_times(self.t0, self.t1, lambda t: peak * self.day(t)):
            u = rng.choice(users)
            b = [[self.ext_addr() if rng.random() < 0.6 else rng.choice(self.mailboxes)
                  for _ in range(1 + poisson(rng, 0.7))]]
            self.at(t, a, lambda t, u=u, b=b: self.submit(
                t, ip, f"webmail.{self.isp_domain}", u, u, b))

    def build_lists(self) -> None:
        """Inbound list servers with stale subscribers; a customer's list server
        sending out through us with many bounces."""
        rng = self.rng
        for i in range(rng.randint(1, 3)):
            a = self.actor(f"list-in-{i}", "mailing_list_inbound")
            ip = self.space.host(self.space.block())
            dom = f"lists.{rng.choice(BRANDS)}-{rng.choice(('org', 'project', 'users'))}.example"
            lists = [f"{w}-bounces@{dom}" for w in rng.sample(
                ("announce", "devel", "users", "help", "community", "events", "jobs"), 3)]
            subs = self.n(60, 400)
            stale = rng.uniform(0.03, 0.12)
            a.details = {"subscribers": subs, "stale_share": round(stale, 3)}
            posts = rng.uniform(0.5, 3)
            for t in self.poisson_times(self.t0, self.t1, lambda t, r=posts: r * self.day(t)):
                sender = rng.choice(lists)
                rc, unk = self.rcpts_local(subs, stale)
                chunks = [rc[j:j + 50] for j in range(0, len(rc), 50)]
                msgs = [(sender, c, [u for u in unk if u in c]) for c in chunks]
                self.at(t, a, lambda t, m=msgs, ip=ip, d=dom: self.deliver_in(
                    t, ip, f"mail.{d}", f"mail.{d}", m))
        a = self.actor("list-out", "customer_list_server")
        ip = self.space.host(rng.choice(self.home_blocks), 200 + rng.randint(0, 50))
        cust = f"{rng.choice(BRANDS)}-club.example"
        user = f"lists@{cust}"
        sender = f"members-bounces@{cust}"
        subs = [self.ext_addr() for _ in range(self.n(200, 1200))]
        p_bounce = rng.uniform(0.05, 0.18)
        a.details = {"subscribers": len(subs), "bounce_share": round(p_bounce, 3)}
        posts = rng.uniform(0.2, 0.8)
        for t in self.poisson_times(self.t0, self.t1, lambda t: posts * self.day(t)):
            batches = [subs[j:j + 40] for j in range(0, len(subs), 40)]
            self.at(t, a, lambda t, b=batches: self.submit(
                t, ip, f"lists.{cust}", user, sender, b, p_bounce=p_bounce))

    def build_newsletters(self) -> None:
        """Bulk senders at fixed local hours, one message per recipient."""
        rng = self.rng
        for i in range(rng.randint(2, 4)):
            brand = rng.choice(BRANDS)
            a = self.actor(f"newsletter-{i}", "newsletter")
            blk = self.space.block()
            c = rng.randint(0, 255)
            ips = [self.space.host(blk, c) for _ in range(rng.randint(1, 3))]
            dom = f"news.{brand}.example"
            verp = rng.random() < 0.5
            size = self.n(800, 6000)
            hours = sorted(rng.sample(range(6, 20), rng.randint(1, 2)))
            minute = rng.choice((0, 0, 15, 30, 45))
            spread = rng.uniform(300, 1800)
            stale = rng.uniform(0.005, 0.03)
            a.details = {"recipients": size, "local_hours": hours, "minute": minute,
                         "spread_s": round(spread), "verp": verp}
            day0 = math.floor((self.t0 / HOUR + self.tz_hours) / 24) * 24
            for d in range(int(self.cfg.hours // 24) + 2):
                for h in hours:
                    start = (day0 + 24 * d + h - self.tz_hours) * HOUR + minute * 60
                    if not self.t0 <= start < self.t1:
                        continue
                    rc, unk = self.rcpts_local(size, stale)
                    per_sess = rng.randint(20, 100)
                    for j in range(0, len(rc), per_sess):
                        chunk = rc[j:j + per_sess]
                        msgs = []
                        for r in chunk:
                            snd = (f"bounce-{rng.getrandbits(32):08x}@{dom}" if verp
                                   else f"newsletter@{dom}")
                            msgs.append((snd, [r], [r] if r in unk else []))
                        t = start + spread * j / max(1, len(rc))
                        ip = rng.choice(ips)
                        self.at(t, a, lambda t, m=msgs, ip=ip, d=dom: self.deliver_in(
                            t, ip, f"o{rng.randint(1, 40)}.{d}", f"o.{d}", m))

    def build_backup_mx(self) -> None:
        """A secondary MX elsewhere that accepts everything for our domains and
        relays it to us: spam, unknown users and all, day and night."""
        rng = self.rng
        a = self.actor("backup-mx", "backup_mx")
        ip = self.space.host(self.space.block())
        rate = rng.uniform(20, 150) * self.cfg.scale
        unknown = rng.uniform(0.15, 0.4)
        a.details = {"per_hour": round(rate), "unknown_share": round(unknown, 3)}
        for t in self.poisson_times(self.t0, self.t1, lambda t: rate * (0.5 + 0.5 * self.day(t))):
            msgs = []
            for _ in range(1 + poisson(rng, 1.5)):
                rc, unk = self.rcpts_local(1 + poisson(rng, 0.5), unknown)
                msgs.append((self.ext_addr() if rng.random() < 0.7 else
                             f"{rng.choice(BRUTE_USERS)}@{rng.choice(BRANDS)}.example", rc, unk))
            self.at(t, a, lambda t, m=msgs: self.deliver_in(
                t, ip, f"mx2.{self.isp_domain}-backup.example", "mx2.backup.example", m,
                tls=False))

    def build_forwarders(self) -> None:
        """Forwarding services re-sending mail to our users (SRS senders), some of
        whose mailboxes are gone."""
        rng = self.rng
        for i in range(rng.randint(1, 3)):
            a = self.actor(f"forwarder-{i}", "forwarder")
            ip = self.space.host(self.space.block())
            dom = f"alumni.{rng.choice(('uni', 'college', 'tech'))}{rng.randint(1, 9)}.example"
            rate = rng.uniform(10, 80) * self.cfg.scale
            stale = rng.uniform(0.05, 0.2)
            a.details = {"per_hour": round(rate), "stale_share": round(stale, 3)}
            for t in self.poisson_times(self.t0, self.t1,
                                        lambda t, r=rate: r * (0.4 + 0.6 * self.day(t))):
                orig = self.ext_addr()
                srs = (f"srs0={b52(rng.getrandbits(20), 4).lower()}={rng.randint(10, 99)}="
                       f"{domain_of(orig)}={orig.split('@')[0]}@{dom}")
                rc, unk = self.rcpts_local(1, stale)
                self.at(t, a, lambda t, s=srs, rc=rc, unk=unk, ip=ip, d=dom: self.deliver_in(
                    t, ip, f"fwd.{d}", f"fwd.{d}", [(s, rc, unk)]))

    def build_stale_phones(self) -> None:
        """A phone with an old password retrying every few minutes, for days; its
        owner meanwhile sends mail from home with the right one."""
        rng = self.rng
        for i in range(rng.randint(3, 7)):
            a = self.actor(f"stale-phone-{i}", "stale_password")
            user = self.own_user()
            every = rng.uniform(120, 600)
            behind_nat = rng.random() < 0.5
            a.details = {"every_s": round(every), "behind_cgnat": behind_nat}
            t = self.t0 + rng.uniform(0, every)
            ip, ip_until = self.cgnat_ip, math.inf
            if not behind_nat:
                ip_until = -1.0
            while t < self.t1:
                if t >= ip_until:
                    ip = self.space.host(rng.choice(self.mobile_blocks))
                    ip_until = t + rng.uniform(1, 4) * HOUR
                self.at(t, a, lambda t, ip=ip, u=user: self.stale_try(t, ip, u))
                t += every * rng.uniform(0.8, 1.2)

    def stale_try(self, t: float, ip: str, user: str) -> float:
        log = self.log
        s = Session(log, t, ip, "unknown", "android-phone", True)
        log.greet(s)
        log.auth_fail(s, user)
        return s.close(lost=True)

    # -- attacks

    def attack_ip(self) -> str:
        return self.space.host(self.space.block())

    def build_attacks(self) -> None:
        rng = self.rng
        span = self.t1 - self.t0

        def loud_start(length: float) -> float:
            return self.t0 + rng.uniform(600, max(900, span - length - 600))

        # loud: password guessing from one address
        a = self.actor("bruteforce", "sasl_bruteforce", attack=True)
        ip = self.attack_ip()
        n, dur = rng.randint(300, 900), rng.uniform(900, 2700)
        t = loud_start(dur)
        names = [rng.choice(BRUTE_USERS) + rng.choice(("", f"@{self.isp_domain}"))
                 for _ in range(40)] + rng.sample(self.mailboxes, 20)
        while n > 0:
            k = min(n, rng.randint(1, 5))
            n -= k
            self.at(t + rng.random() * dur, a, lambda t, k=k, ip=ip: self.guess(t, ip, k, names))
        # loud: dictionary attack
        a = self.actor("dictionary", "dictionary_attack", attack=True)
        ip = self.attack_ip()
        sender = f"{rng.choice(BRUTE_USERS)}@{rng.choice(BRANDS)}-promo.example"
        n, dur = rng.randint(300, 800), rng.uniform(600, 1800)
        t = loud_start(dur)
        while n > 0:
            k = min(n, rng.randint(10, 50))
            n -= k
            rc = [self.stale_addr() for _ in range(k)]
            self.at(t + rng.random() * dur, a, lambda t, rc=rc, ip=ip: self.deliver_in(
                t, ip, "unknown", "mail.invalid", [(sender, rc, rc)], tls=False))
        # loud: stolen account used from hundreds of addresses in an hour
        a = self.actor("stolen-250", "stolen_account_many_ips", attack=True)
        user = rng.choice([m for m in self.mailboxes if m not in self.owned])
        n_ips, dur = rng.randint(250, 400), rng.uniform(2400, 3600)
        t = loud_start(dur)
        blocks = [self.space.block() for _ in range(rng.randint(5, 20))]
        for _ in range(n_ips):
            ip = self.space.host(rng.choice(blocks))
            for _ in range(1 + (rng.random() < 0.3)):
                b = [[self.ext_addr() for _ in range(rng.randint(5, 30))]]
                self.at(t + rng.random() * dur, a, lambda t, ip=ip, b=b: self.submit(
                    t, ip, "unknown", user, user, b, p_bounce=0.1))
        # loud: spam run from a bot on a customer's line (port 25, forged senders)
        a = self.actor("spamrun", "spam_run", attack=True)
        _victim, ip, _u, _r = rng.choice(self.home)
        n, dur = rng.randint(300, 1200), rng.uniform(900, 2400)
        t = loud_start(dur)
        forged = [f"{rng.choice(GIVEN)}@{rng.choice(BRANDS)}{rng.randint(1, 99)}.example"
                  for _ in range(30)]
        while n > 0:
            k = min(n, rng.randint(1, 6))
            n -= k
            msgs = []
            for _ in range(k):
                rc, unk = self.rcpts_local(rng.randint(1, 4), 0.05)
                msgs.append((rng.choice(forged), rc, unk))
            self.at(t + rng.random() * dur, a, lambda t, m=msgs, ip=ip: self.deliver_in(
                t, ip, "unknown", "WIN-BOT", m, tls=False))
        self.build_slow_attacks()

    def build_slow_attacks(self) -> None:
        rng = self.rng
        span = self.t1 - self.t0
        # slow brute force: a guess every few minutes from 1-3 addresses, for hours
        a = self.actor("slow-bruteforce", "slow_bruteforce", attack=True, slow=True)
        dur = rng.uniform(0.3, 0.5) * span
        t0 = self.t0 + rng.uniform(HOUR, span - dur - HOUR)
        users = rng.sample(self.mailboxes, 200) + [f"{u}@{self.isp_domain}" for u in BRUTE_USERS]
        rng.shuffle(users)
        every = rng.uniform(90, 300)
        a.details = {"every_s": round(every), "hours": round(dur / HOUR, 1)}
        for _ in range(rng.randint(1, 3)):
            ip = self.attack_ip()
            t = t0 + rng.uniform(0, every)
            j = rng.randint(0, len(users))
            while t < t0 + dur:
                user = users[j % len(users)]
                j += 1
                self.at(t, a, lambda t, ip=ip, u=user: self.guess(t, ip, 1, [u]))
                t += every * rng.uniform(0.8, 1.2)
        # low-and-slow botnet: hundreds of addresses, each sending a message or two
        a = self.actor("slow-botnet", "slow_botnet", attack=True, slow=True)
        dom = f"secure-{rng.choice(BRANDS)}-billing.example"
        senders = [f"{w}@{dom}" for w in rng.sample(("invoice", "billing", "no-reply"), 2)]
        dur = rng.uniform(3, 8) * HOUR
        per_hour = rng.uniform(30, 80)  # new addresses per sender and hour
        n_ips = round(per_hour * len(senders) * dur / HOUR)
        t0 = self.t0 + rng.uniform(HOUR, span - dur - HOUR)
        a.details = {"ips": n_ips, "hours": round(dur / HOUR, 1)}
        bot_blocks = [self.space.block() for _ in range(rng.randint(20, 60))]
        bots: set[str] = set()
        while len(bots) < n_ips:
            bots.add(self.space.host(rng.choice(bot_blocks)))  # /24s rarely shared
        for ip in sorted(bots):
            for _ in range(rng.randint(1, 3)):
                rc, unk = self.rcpts_local(rng.randint(1, 3), 0.02)
                msgs = [(rng.choice(senders), rc, unk)]
                self.at(t0 + rng.random() * dur, a, lambda t, m=msgs, ip=ip: self.deliver_in(
                    t, ip, "unknown", "DESKTOP", m, tls=False))
        # stolen account that ramps up over a day
        _owner, _home_ip, user, _rate = rng.choice([h for h in self.home
                                                   if h[3] >= 2 / 24 and h[2] not in self.owned])
        a = self.actor("slow-stolen", "ramping_stolen_account", attack=True, slow=True)
        t0 = self.t0 + rng.uniform(0.3, 0.45) * span
        r0, doubling = rng.uniform(2, 5), rng.uniform(1.5, 3.0) * HOUR
        cap = rng.uniform(250, 700)
        a.details = {"start_per_hour": round(r0, 1), "doubling_h": round(doubling / HOUR, 2),
                     "cap_per_hour": round(cap)}
        ips = [self.attack_ip() for _ in range(rng.randint(2, 4))]
        for t in self.poisson_times(t0, self.t1, lambda t: min(
                cap, r0 * 2 ** ((t - t0) / doubling))):
            b = [[self.ext_addr() for _ in range(rng.randint(3, 15))]]
            ip = rng.choice(ips)
            self.at(t, a, lambda t, ip=ip, b=b: self.submit(t, ip, "unknown", user, user, b,
                                                             p_bounce=0.08))

    def guess(self, t: float, ip: str, k: int, names: list[str]) -> float:
        log, rng = self.log, self.rng
        s = Session(log, t, ip, "unknown", "User", True)
        log.greet(s, tls=rng.random() < 0.5)
        for _ in range(k):
            log.auth_fail(s, rng.choice(names) if rng.random() < 0.8 else None)
        return s.close(lost=True)

    # -- running

    def run(self, out: IO[str]) -> dict:
        jobs = sorted(self.jobs, key=lambda j: (j[0], j[1]))
        log = self.log
        for t, _seq, idx, fn in jobs:
            log.flush(out, t)
            log.actor = idx
            end = fn(t)
            a = self.actors[idx]
            a.first = t if a.first is None else min(a.first, t)
            a.last = end if a.last is None else max(a.last, end)
        log.flush(out, math.inf)
        return self.truth()

    # -- ground truth

    def truth(self) -> dict:
        log = self.log
        for a in self.actors:
            a.keys = set(log.keys.get(a.index, ()))
            if not a.attack:  # a legitimate user failing is about that user's account
                a.keys |= {("sasl_user", u) for u in log.tried.get(a.index, ())}
        attack_keys: set[tuple[str, str]] = set()
        for a in self.actors:
            if a.attack:
                attack_keys |= a.keys
        owners: Counter[tuple[str, str]] = Counter()
        for a in self.actors:
            if not a.attack:
                owners.update(a.keys)
        actors = [{"name": a.name, "kind": a.kind,
                   "keys": sorted(list(k) for k in a.keys - attack_keys),
                   "details": a.details} for a in self.actors if not a.attack and a.keys]
        evident = self.evident_times(attack_keys)
        attacks = []
        for a in self.actors:
            if not a.attack or a.first is None:
                continue
            due, why = evident[a.index] if a.slow else (a.first, "loud: from its first line")
            attacks.append({"name": a.name, "kind": a.kind, "slow": a.slow,
                            "keys": sorted(list(k) for k in a.keys),
                            "start": round(a.first, 3), "start_iso": iso(a.first),
                            "end": round(a.last, 3), "end_iso": iso(a.last),
                            "due_from": None if due is None else round(due, 3),
                            "due_from_iso": None if due is None else iso(due),
                            "evidence": why, "details": a.details})
        metrics = ("connections", "messages", "recipients", "rejects", "auth_failures")
        return {
            "model": "isp", "version": MODEL_VERSION, "config": asdict(self.cfg),
            "span": {"start": self.t0, "end": self.t1, "start_iso": iso(self.t0),
                     "end_iso": iso(self.t1)},
            "site": {"host": log.host, "local_domains": self.local_domains,
                     "isp_domain": self.isp_domain, "utc_offset_hours": self.tz_hours},
            "lines": log.lines,
            "factors": {"absolute": ABS_FACTOR, "own_history": OWN_FACTOR,
                        "features": [list(f) for f in FEATURES]},
            "actors": actors,
            "attacks": attacks,
            "shared_keys": sorted(list(k) for k, n in owners.items()
                                  if n > 1 and k not in attack_keys),
            "counts": {d: {k: dict(zip(metrics, row, strict=True)) for k, row in tab.items()}
                       for d, tab in log.counts.items()},
        }

    def evident_times(self, attack_keys: set[tuple[str, str]]
                      ) -> dict[int, tuple[float | None, str]]:
        """For each slow attack: when one of its keys first exceeds what legitimate
        keys ever do (see the module docstring)."""
        streams: dict[tuple[str, str, str], list[tuple[float, int, object]]] = {}
        for t, actor, d, key, feat, val in self.log.events:
            streams.setdefault((d, key, feat), []).append((t, actor, val))
            if d == "client_ip":  # a client IP's events are also its network's
                streams.setdefault(("client_net", net_of(key), feat), []).append((t, actor, val))
        for evs in streams.values():
            evs.sort(key=lambda e: e[0])
        windows: dict[tuple[str, str], list[float]] = {}
        for d, f, w in FEATURES:
            windows.setdefault((d, f), []).append(w)
        legit_max: dict[tuple[str, str, float], float] = {}
        account_hours = []  # each legitimate account's best hour of messages
        for (d, key, feat), evs in streams.items():
            if (d, key) in attack_keys:
                continue
            for w in windows.get((d, feat), ()):
                best = max((v for _t, v in _sliding(evs, feat, w)), default=0)
                if best > legit_max.get((d, feat, w), 0):
                    legit_max[(d, feat, w)] = best
                if d == "sasl_user" and feat == "messages":
                    account_hours.append(best)
        account_hours.sort()
        busy = account_hours[int(0.9 * (len(account_hours) - 1))] if account_hours else 0
        out: dict[int, tuple[float | None, str]] = {}
        for a in self.actors:
            if not (a.attack and a.slow) or a.first is None:
                continue
            best_t, why = None, "never beyond the legitimate maximum"
            for (d, key, feat), evs in streams.items():
                if (d, key) not in a.keys:
                    continue
                for w in windows.get((d, feat), ()):
                    limit = ABS_FACTOR * legit_max.get((d, feat, w), 0)
                    own_limit = math.inf
                    if d == "sasl_user" and feat == "messages":
                        before = [e for e in evs if e[0] < a.first]
                        own_best = max((v for _t, v in _sliding(before, feat, w)), default=0)
                        if own_best:  # never below what a busy customer does anyway
                            own_limit = OWN_FACTOR * max(own_best, busy)
                    for t, v in _sliding(evs, feat, w):
                        if t < a.first or not (v > limit or v > own_limit):
                            continue
                        if best_t is None or t < best_t:
                            best_t = t
                            what = (f"> {ABS_FACTOR:g} x legitimate max {limit / ABS_FACTOR:g}"
                                    if v > limit else
                                    f"> {OWN_FACTOR:g} x max(own best hour, busy customer) "
                                    f"{own_limit / OWN_FACTOR:g}")
                            why = f"{d} {key}: {feat} in {w / HOUR:g}h = {v:g} {what}"
                        break
            out[a.index] = (best_t, why)
        return out


def _sliding(evs: list[tuple[float, int, object]], feat: str, window: float
             ) -> Iterable[tuple[float, float]]:
    """(time, value in the window ending then) after each event: a sum, or for the
    distinct features (client_ips, auth_users) the number of distinct members."""
    q: deque[tuple[float, object]] = deque()
    if feat in ("client_ips", "auth_users"):
        members: Counter[object] = Counter()
        for t, _a, m in evs:
            q.append((t, m))
            members[m] += 1
            while q[0][0] <= t - window:
                _t, old = q.popleft()
                members[old] -= 1
                if not members[old]:
                    del members[old]
            yield t, len(members)
    else:
        total = 0.0
        for t, _a, v in evs:
            q.append((t, v))
            total += v  # type: ignore[operator]
            while q[0][0] <= t - window:
                total -= q.popleft()[1]  # type: ignore[operator]
            yield t, total


def generate(cfg: IspConfig, out: IO[str]) -> dict:
    """Write model B's log to ``out``; return its ground truth."""
    return IspTraffic(cfg).run(out)


def main_isp(a: argparse.Namespace) -> int:
    """``generate_log.py --model isp``: --seed, --hours, --start (UTC), --scale,
    --anomalies (the attacks), --out, --truth."""
    cfg = IspConfig(seed=a.seed, hours=a.hours, start=a.start, scale=a.scale,
                    attacks=a.anomalies)
    if a.out == "-":
        truth = generate(cfg, sys.stdout)
    else:
        with open(a.out, "w", encoding="utf-8", buffering=1 << 20) as fh:
            truth = generate(cfg, fh)
    if a.truth:
        with open(a.truth, "w", encoding="utf-8") as fh:
            json.dump(truth, fh, indent=1)
    if not a.quiet:
        print(f"model isp: {truth['lines']} lines, {len(truth['actors'])} legitimate actors, "
              f"{len(truth['attacks'])} attacks", file=sys.stderr)
    return 0


__all__ = ["IspConfig", "IspTraffic", "generate"]
