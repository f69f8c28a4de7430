"""Decision latency of the daemon: from writing the log line that crosses a refuse
threshold to the refusal being in force, in nftables and in the Postfix access map.

Run (as root): ``.venv/bin/python bench/bench_latency.py [--trials 100]
[--watch inotify|poll|both] [--parts nftables|postfix|both]``.

What is measured. ``smtpguard-logwatch run`` runs as a subprocess with one action
(first the nftables action with ``netns`` = a private network namespace created here
and deleted at exit, so the host's ruleset is never touched; then the postfix action
on a private map directory). Each trial takes a fresh client address, appends the
burst of relay-denied rejects that crosses the rule (6 lines, one ``write()``) and
stamps ``time.monotonic()`` right after the write. It ends when the refusal exists:

* nftables: ``ip netns exec NS nft monitor`` runs for the whole benchmark and a thread
  stamps each line it prints; the trial ends at the ``add element inet smtpguard
  refuse4 { ADDR timeout ...`` event. The kernel sends these events when the
  transaction commits, so the stamp is the moment the element can drop packets plus
  a pipe read. Polling ``nft list set`` instead would add half a poll interval of
  error and a fork+exec per poll competing with the daemon for the CPU.
* postfix: an inotify watch on the map directory; the trial ends at the IN_MOVED_TO of
  ``smtpguard_client.db``, the rename that makes the new db what smtpd opens (the
  action builds a temp db with postmap and renames it over the live one). The entry is
  then confirmed with ``postmap -q ADDR hash:DIR/smtpguard_client`` (not timed).

Baselines in the same run, timed through the same detector (monitor / inotify), so the
ratios isolate what the daemon adds:

* floor: the enforcement command alone, run directly: the same ``ip netns exec NS nft
  -j -f -`` transaction the action submits (add, delete, add with timeout) into a
  separate table; ``postmap`` of a map of the same size into a temp db renamed over
  the live one;
* action: the action's own ``apply()`` called in this process (its validation, lock,
  map rendering, fsyncs), into separate tables / directories.

The daemon runs with its defaults (checkpoint every 30 s, expire every 5 s), so a
checkpoint or job that holds the lock now and then shows in the tail. Target: p99 <=
1 s. The exit status is non-zero only on errors (a trial that never completed, a
daemon that did not start or stop cleanly), never for missing the target.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import queue
import random
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from smtpguard_logwatch.actions.nftables import NftablesAction
from smtpguard_logwatch.actions.postfix_maps import PostfixMapsAction
from smtpguard_logwatch.engine.ledger import Decision
from smtpguard_logwatch.engine.local import host_addresses
from smtpguard_logwatch.follow import inotify

TARGET_P99 = 1.0  # seconds
BURST = 6  # lines per trial; the rule fires above 5
TRIAL_TIMEOUT = 10.0  # seconds until a trial counts as failed
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
RULES = """\
rule relay_burst for client_ip:
    when rejects(relay_denied) in 1m > 5
    add 100 points
ladder client_ip:
    at 100 points refuse for 1h
"""
MAP = "smtpguard_client"  # the postfix action's client map (see postfix_maps.MAPS)
ADD_RE = re.compile(r"^add element inet (\w+) (\w+) \{ ([0-9a-f.:]+) timeout ")


class BenchError(Exception):
    """Something broke (not a missed target); reported, exit status 1."""


# -- inputs -------------------------------------------------------------------------------


def addresses() -> Iterator[str]:
    """Fresh client addresses, never one of this host's (the daemon never scores those):
    TEST-NET-2 and -3, then the benchmarking range 198.18.0.0/15."""
    local = set(host_addresses())
    for net in ("198.51.100.0/24", "203.0.113.0/24", "198.18.0.0/15"):
        for addr in ipaddress.ip_network(net).hosts():
            if str(addr) not in local:
                yield str(addr)


def burst(ip: str) -> bytes:
    """The crossing burst: BURST Postfix relay-denied rejects, stamped now (UTC)."""
    stamp = time.strftime("%b %e %H:%M:%S", time.gmtime())
    return "".join(
        f"{stamp} mx postfix/smtpd[4242]: NOQUEUE: reject: RCPT from unknown[{ip}]: 554 "
        f"5.7.1 <u{i}@elsewhere.example>: Relay access denied; from=<a@b.example> "
        f"to=<u{i}@elsewhere.example> proto=ESMTP helo=<h>\n" for i in range(BURST)).encode()


# -- detectors -------------------------------------------------------------------------------


class NftMonitor:
    """``nft monitor`` in the namespace; each printed line stamped on arrival."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, "nft", "monitor"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)
        self.lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put((time.monotonic(), line.rstrip("\n")))

    def ready(self) -> None:
        """Make a change and wait for its event: the monitor is listening."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            nft(self.netns, "add table inet sgbench_probe\ndelete table inet sgbench_probe\n")
            with contextlib.suppress(queue.Empty):
                while True:
                    _t, line = self.lines.get(timeout=0.5)
                    if "sgbench_probe" in line:
                        self.drain()
                        return
        raise BenchError("nft monitor printed nothing within 10 s")

    def drain(self) -> None:
        with contextlib.suppress(queue.Empty):
            while True:
                self.lines.get_nowait()

    def wait(self, table: str, ip: str, deadline: float) -> float | None:
        """The stamp of the first element add of ``ip`` into ``table``, or None."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                stamp, line = self.lines.get(timeout=left)
            except queue.Empty:
                return None
            m = ADD_RE.match(line)
            if m and m[1] == table and m[3] == ip:
                return stamp

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


class MapWatch:
    """inotify on a map directory: the rename of the live db."""

    def __init__(self, directory: Path, conf: Path) -> None:
        self.directory, self.conf = directory, conf
        self.ino = inotify.Inotify()
        self.ino.add_watch(str(directory), inotify.IN_MOVED_TO)

    def drain(self) -> None:
        self.ino.read()

    def wait(self, ip: str, deadline: float) -> float | None:
        """The stamp of the first rename of the db that holds ``ip``, or None."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([self.ino.fileno()], [], [], left)
            if not ready:
                return None
            stamp = time.monotonic()
            if any(e.name == f"{MAP}.db" for e in self.ino.read()) and self.holds(ip):
                return stamp

    def holds(self, ip: str) -> bool:
        proc = subprocess.run(["postmap", "-c", str(self.conf), "-q", ip,
                               f"hash:{self.directory / MAP}"], capture_output=True,
                              text=True, timeout=30)
        return proc.returncode == 0

    def close(self) -> None:
        self.ino.close()


# -- tools ------------------------------------------------------------------------------------


def nft(netns: str, script: str, json_mode: bool = False) -> None:
    argv = ["ip", "netns", "exec", netns, "nft", *(["-j"] if json_mode else []), "-f", "-"]
    proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")


def element_doc(table: str, ip: str) -> str:
    """What the action submits for a refusal: add, delete, add with the timeout."""
    ref = {"family": "inet", "table": table, "name": "refuse4"}
    return json.dumps({"nftables": [
        {"add": {"element": {**ref, "elem": [ip]}}},
        {"delete": {"element": {**ref, "elem": [ip]}}},
        {"add": {"element": {**ref, "elem": [{"elem": {"val": ip, "timeout": 3600}}]}}},
    ]})


def refuse(ip: str) -> Decision:
    now = time.time()
    return Decision(now, "client_ip", ip, "refuse", now + 3600, ("bench",))


@contextlib.contextmanager
def network_namespace() -> Iterator[str]:
    name = f"sgbench-{os.getpid()}"
    res = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                         timeout=30)
    if res.returncode != 0:
        raise BenchError(f"cannot create network namespace {name}: {res.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


# -- the daemon -------------------------------------------------------------------------------


class Daemon:
    """``smtpguard-logwatch run`` with one action, following ``log``."""

    def __init__(self, work: Path, name: str, watch: str, action: str) -> None:
        self.dir = work / name
        self.dir.mkdir()
        self.log = self.dir / "mail.log"
        self.log.touch()
        (self.dir / "t.rules").write_text(RULES)
        config = self.dir / "config.toml"
        config.write_text(f"""\
[logs]
files = ["{self.log}"]
timezone = "UTC"
[state]
database = "{self.dir}/state.sqlite"
control_socket = "{self.dir}/control.sock"
[rules]
files = ["{self.dir}/t.rules"]
warmup = 0
[breaker]
max_refusals = 1000000
[daemon]
watch = "{watch}"
{action}""")
        self.stderr_path = self.dir / "daemon.stderr"
        self._stderr = self.stderr_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smtpguard_logwatch", "run", "--config", str(config),
             "--log-format", "plain"],
            cwd=str(work), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=self._stderr)
        deadline = time.monotonic() + 30
        while " started pid=" not in self.stderr():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"daemon did not start:\n{self.tail()}")
            time.sleep(0.05)
        self.fd = os.open(self.log, os.O_WRONLY | os.O_APPEND)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.stderr().splitlines()[-n:])

    def write(self, data: bytes) -> float:
        """One write() of the burst; the stamp right after it."""
        if os.write(self.fd, data) != len(data):
            raise BenchError("short write to the log")
        return time.monotonic()

    def stop(self) -> None:
        os.close(self.fd)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise BenchError(f"daemon did not stop within 30 s of SIGTERM:\n{self.tail()}"
                             ) from None
        finally:
            self._stderr.close()
        if rc != 0 or "checkpoint=saved" not in self.stderr():
            raise BenchError(f"daemon exited with {rc}:\n{self.tail()}")
        if " ERROR:" in self.stderr():
            raise BenchError(f"daemon logged errors:\n{self.tail()}")


# -- measurements ------------------------------------------------------------------------------


class Series:
    def __init__(self, label: str) -> None:
        self.label = label
        self.ms: list[float] = []
        self.failed = 0

    def pct(self, p: int) -> float:
        if len(self.ms) < 2:
            return self.ms[0] if self.ms else float("nan")
        return statistics.quantiles(self.ms, n=100, method="inclusive")[p - 1]

    def row(self) -> dict[str, float]:
        return {"p50": self.pct(50), "p95": self.pct(95), "p99": self.pct(99),
                "max": max(self.ms, default=float("nan"))}


def trials(series: Series, n: int, ips: Iterator[str],
           start: Callable[[str], float], wait: Callable[[str, float], float | None],
           gap: tuple[float, float]) -> Series:
    """``n`` trials: ``start(ip)`` returns t0, ``wait(ip, deadline)`` the end stamp."""
    for _ in range(n):
        ip = next(ips)
        t0 = start(ip)
        end = wait(ip, t0 + TRIAL_TIMEOUT)
        if end is None:
            series.failed += 1
            print(f"  {series.label}: {ip} not enforced within {TRIAL_TIMEOUT:g} s",
                  file=sys.stderr)
        else:
            series.ms.append((end - t0) * 1000)
        time.sleep(random.uniform(*gap))  # noqa: S311 - spreads trials over poll phases
    return series


def bench_nftables(args: argparse.Namespace, work: Path, ips: Iterator[str], ns: str,
                   watches: list[str]) -> list[Series]:
    monitor = NftMonitor(ns)
    out: list[Series] = []
    try:
        monitor.ready()
        # floor: the transaction itself, into a table of the same shape
        nft(ns, "add table inet sgbench_floor\nadd set inet sgbench_floor refuse4 "
                "{ type ipv4_addr; flags timeout; }\n")
        floor = Series("floor: nft -j -f, run directly")

        def run_nft(ip: str) -> float:
            t0 = time.monotonic()
            nft(ns, element_doc("sgbench_floor", ip), json_mode=True)
            return t0
        out.append(trials(floor, args.trials, ips, run_nft,
                          lambda ip, d: monitor.wait("sgbench_floor", ip, d), (0.0, 0.01)))
        # the action in this process
        action = NftablesAction(netns=ns, table="sgbench_action")
        action.apply(refuse(next(ips)))  # creates the table
        monitor.drain()

        def apply(ip: str) -> float:
            t0 = time.monotonic()
            action.apply(refuse(ip))
            return t0
        out.append(trials(Series("action.apply(), in-process"), args.trials, ips, apply,
                          lambda ip, d: monitor.wait("sgbench_action", ip, d), (0.0, 0.01)))
        # the daemon
        for watch in watches:
            if table_exists(ns, "smtpguard"):
                nft(ns, "delete table inet smtpguard\n")  # each daemon starts from none
            daemon = Daemon(work, f"nft-{watch}", watch,
                            f'[actions.nftables]\nnetns = "{ns}"\n')
            try:
                monitor.drain()
                label = f"daemon, watch={watch}" + (" (0.25 s)" if watch == "poll" else "")
                out.append(trials(Series(label), args.trials, ips,
                                  lambda ip, dm=daemon: dm.write(burst(ip)),
                                  lambda ip, d: monitor.wait("smtpguard", ip, d), args.gap))
            finally:
                daemon.stop()
    finally:
        monitor.close()
    return out


def table_exists(ns: str, table: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "inet", table],
                          capture_output=True, timeout=30).returncode == 0


def bench_postfix(args: argparse.Namespace, work: Path, ips: Iterator[str],
                  watches: list[str]) -> list[Series]:
    conf = work / "postfix-conf"
    conf.mkdir()
    (conf / "main.cf").write_text("")  # postmap -c needs a main.cf; defaults suffice
    # Postfix waits (0.3 s steps, ~2 s) while main.cf's mtime is recent, in case it is
    # still being edited: date it back so the first postmap does not pay for that.
    old = time.time() - 3600
    os.utime(conf / "main.cf", (old, old))
    out: list[Series] = []

    # floor: postmap of a map of the same size, renamed over the live db
    floor_dir = work / "floor-maps"
    floor_dir.mkdir()
    watch_floor = MapWatch(floor_dir, conf)
    entries: list[str] = []
    reject = "554 5.7.1 Service unavailable; too much traffic from your address"

    def postmap(ip: str) -> float:
        t0 = time.monotonic()
        entries.append(ip)
        fd, tmp = tempfile.mkstemp(prefix=f".{MAP}.", suffix=".tmp", dir=floor_dir)
        with os.fdopen(fd, "w") as fh:
            fh.write("".join(f'# smtpguard: {{"dimension":"client_ip","key":"{e}"}}\n'
                             for e in entries))
            fh.write("".join(f"{e}\t{reject}\n" for e in entries))
        proc = subprocess.run(["postmap", "-c", str(conf), f"hash:{tmp}"],
                              capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise BenchError(f"postmap failed: {proc.stderr.strip()}")
        os.replace(tmp + ".db", floor_dir / f"{MAP}.db")
        os.replace(tmp, floor_dir / MAP)
        return t0
    try:
        out.append(trials(Series("floor: postmap + rename, run directly"), args.trials, ips,
                          postmap, watch_floor.wait, (0.0, 0.01)))
    finally:
        watch_floor.close()

    # the action in this process
    act_dir = work / "action-maps"
    action = PostfixMapsAction(directory=str(act_dir), config_directory=str(conf),
                               map_type="hash")
    action.reconcile([], time.time())
    watch_act = MapWatch(act_dir, conf)

    def apply(ip: str) -> float:
        t0 = time.monotonic()
        action.apply(refuse(ip))
        return t0
    try:
        out.append(trials(Series("action.apply(), in-process"), args.trials, ips, apply,
                          watch_act.wait, (0.0, 0.01)))
    finally:
        watch_act.close()

    for watch in watches:
        maps = work / f"maps-{watch}"
        maps.mkdir()
        daemon = Daemon(work, f"postfix-{watch}", watch,
                        f'[actions.postfix]\ndirectory = "{maps}"\n'
                        f'config_directory = "{conf}"\nmap_type = "hash"\n')
        watcher = MapWatch(maps, conf)
        try:
            watcher.drain()
            label = f"daemon, watch={watch}" + (" (0.25 s)" if watch == "poll" else "")
            out.append(trials(Series(label), args.trials, ips,
                              lambda ip, dm=daemon: dm.write(burst(ip)), watcher.wait,
                              args.gap))
        finally:
            watcher.close()
            daemon.stop()
    return out


# -- report ------------------------------------------------------------------------------------


def report(title: str, series: list[Series]) -> None:
    print(f"\n{title}")
    print(f"  {'':38}{'n':>5}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}   "
          f"{'p50 x':>7}{'p99 x':>7}")
    floor = series[0].row()
    for s in series:
        r = s.row()
        fails = f"  ({s.failed} FAILED)" if s.failed else ""
        print(f"  {s.label:38}{len(s.ms):>5}" + "".join(f"{r[k]:>9.1f}" for k in r)
              + f"   {r['p50'] / floor['p50']:>7.1f}{r['p99'] / floor['p99']:>7.1f}{fails}")
    print("  (milliseconds; x = ratio to the floor row)")
    for s in series:
        if s.label.startswith("daemon") and s.ms:
            p99 = s.pct(99) / 1000
            verdict = "met" if p99 <= TARGET_P99 else "MISSED"
            print(f"  target p99 <= {TARGET_P99:g} s, {s.label}: {verdict} ({p99:.3f} s)")


def environment() -> str:
    def out(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True,
                                  timeout=10).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "?"
    return (f"{platform.node()}: {os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}, {out(['nft', '--version'])}, "
            f"Postfix {out(['postconf', '-d', '-h', 'mail_version'])}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=100, help="trials per row (default 100)")
    p.add_argument("--watch", choices=["inotify", "poll", "both"], default="both",
                   help="the daemon's [daemon] watch setting(s) to measure (default both)")
    p.add_argument("--parts", choices=["nftables", "postfix", "both"], default="both")
    p.add_argument("--seed", type=int, default=1, help="for the pauses between trials")
    args = p.parse_args(argv)
    if args.trials < 1:
        p.error("--trials must be >= 1")
    args.gap = (0.02, 0.27)  # pause between daemon trials: spreads them over poll phases
    random.seed(args.seed)
    if os.geteuid() != 0:
        print("bench_latency: needs root (a network namespace, nft, postmap of private "
              "maps); run it as root", file=sys.stderr)
        return 2
    os.environ["PATH"] = SBIN
    parts = ["nftables", "postfix"] if args.parts == "both" else [args.parts]
    needs = {"nftables": ("nft", "ip"), "postfix": ("postmap", "postconf")}
    for part in list(parts):
        missing = [tool for tool in needs[part] if shutil.which(tool) is None]
        if missing:
            print(f"bench_latency: {part} part skipped: {', '.join(missing)} not found "
                  f"(install {'nftables, iproute2' if part == 'nftables' else 'postfix'})",
                  file=sys.stderr)
            parts.remove(part)
    if not parts:
        return 2
    watches = ["inotify", "poll"] if args.watch == "both" else [args.watch]

    def terminate(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds through the cleanups below
    signal.signal(signal.SIGTERM, terminate)

    print(environment())
    print(f"{args.trials} trials per row; burst of {BURST} relay-denied rejects in one "
          f"write(); rule: > 5 in 1m -> refuse for 1h")
    ips = addresses()
    failed = 0
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="sgbench-") as tmp:
            work = Path(tmp)
            os.chmod(work, 0o755)
            if "nftables" in parts:
                with network_namespace() as ns:
                    series = bench_nftables(args, work, ips, ns, watches)
                report("nftables: log write -> element in the set (nft monitor event)", series)
                failed += sum(s.failed for s in series)
            if "postfix" in parts:
                series = bench_postfix(args, work, ips, watches)
                report(f"postfix: log write -> {MAP}.db renamed into place, entry "
                       f"present (inotify IN_MOVED_TO)", series)
                failed += sum(s.failed for s in series)
    except BenchError as exc:
        print(f"bench_latency: ERROR: {exc}", file=sys.stderr)
        return 1
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if failed:
        print(f"bench_latency: ERROR: {failed} trials were never enforced", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
