"""Every number the tool accepts from outside, with its range and the reason for it.

Numbers reach the tool from the command line (``ban --for``, ``--argument``), the
control socket (the same requests as JSON), the config file and rule files. Each
entry checks its numbers here, against ONE table, so ``ban --for 1e308`` from the
CLI and ``"duration": 1e308`` on the socket get the same one-line refusal, and the
README's table of ranges is this table. Nothing here imports from the rest of the
package: every layer may use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DAY = 86400.0


class OutOfRange(ValueError):
    """A number outside its documented range, or not a number; the message is one line
    that names the value, the range and why."""


@dataclass(frozen=True)
class Range:
    """An inclusive range for one kind of number, and why it is what it is."""

    what: str
    low: float
    high: float
    unit: str
    why: str
    integer: bool = False

    def check(self, value: Any, name: str | None = None) -> float:
        """``value`` as a float (an int for integer ranges) if it is a finite number
        inside the range; OutOfRange otherwise. Strings are not numbers here: the
        caller parses its own syntax (durations, ``"5"`` on a command line) first."""
        label = name or self.what
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise OutOfRange(f"{label}: expected a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise OutOfRange(f"{label}: {value!r} is not a finite number")
        if self.integer and int(value) != value:
            raise OutOfRange(f"{label}: expected a whole number, got {value!r}")
        if not self.low <= value <= self.high:
            raise OutOfRange(f"{label}: {_show(value)} is out of range: {self.describe()}"
                             f" ({self.why})")
        return int(value) if self.integer else float(value)

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        return f"{_show(self.low)} to {_show(self.high)}{unit}"


def _show(x: float) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    if isinstance(x, int) and abs(x) >= 1e15:
        return f"{float(x):g}"
    return f"{x:g}" if isinstance(x, float) else str(x)


# -- what an operator asks for (ban, on the command line and the control socket) -----

BAN_DURATION = Range(
    "--for", 1, 3650 * DAY, "seconds",
    "a penalty beyond ten years is a permanent one: write 0 for no end; longer values "
    "overflow timestamps and firewall timeouts")
DELAY_SECONDS = Range(
    "delay", 1, 300, "seconds",
    "an SMTP client waits 5 minutes for a reply (RFC 5321 4.5.3.2); a longer sleep is a "
    "disconnect, not a delay")
THROTTLE_PER_MINUTE = Range(
    "throttle", 1 / 60, 10_000, "messages per minute",
    "from one an hour (the slowest rate nftables and iptables express) to far above "
    "any single legitimate client")
REASON_LENGTH = 500
"""Characters of a ban's ``--reason`` (it goes into the ledger and warning mail)."""

# -- options of replay and explain (checked once after parsing, by their argparse dest) --

CLI_RANGES: dict[str, Range] = {
    "top": Range("--top", 1, 1_000_000, "rows",
                 "rows per top-talker table or chart; replay --json has every key",
                 integer=True),
    "max_decisions": Range("--max-decisions", 0, 10_000_000, "decisions",
                           "0 shows only the count by action; --json has every decision",
                           integer=True),
    "year": Range("--year", 1970, 2999, "",
                  "year-less stamps are dated in it: before 1970 is before Unix time, "
                  "later than 2999 a typing error", integer=True),
    "session_ttl": Range("--session-ttl", 1, DAY, "seconds",
                         "0 would forget a session before its next line; an SMTP session "
                         "idle for a day is long closed"),
    "queue_ttl": Range("--queue-ttl", 1, 30 * DAY, "seconds",
                       "MTAs bounce a message queued for days (Postfix: 5 days); a month "
                       "keeps every message of a slow queue"),
}

# -- networks a decision may cover -----------------------------------------------------

WIDEST_PREFIX_IPV4 = Range(
    "widest_prefix_ipv4", 8, 32, "bits",
    "a /8 is 16 million addresses; nothing wider belongs to one source", integer=True)
WIDEST_PREFIX_IPV6 = Range(
    "widest_prefix_ipv6", 16, 128, "bits",
    "a /32 is one ISP's whole allocation; a /16 spans registries", integer=True)
DEFAULT_WIDEST_PREFIX = {4: 16, 6: 32}

# -- rule files -------------------------------------------------------------------------

RULE_NUMBER = Range(
    "a number", 0, 1e12, "",
    "counts, points and factors beyond a trillion are typing errors, and larger "
    "ones overflow to infinity in arithmetic")
RULE_DURATION = Range(
    "a duration", 0, 3650 * DAY, "seconds",
    "ten years is longer than any history or penalty kept")
RULE_NESTING = 20
"""Parentheses nested deeper than this in a rule file are refused (the parser is
recursive; Python's stack is not a resource a rule file may spend)."""
RULE_FILE_BYTES = 1024 * 1024
"""A rule file (or an included one) larger than this is refused: rule sets are a few
kilobytes, and an include of /dev/zero must not fill the memory."""

# -- the config file --------------------------------------------------------------------

CONFIG_RANGES: dict[tuple[str, str], Range] = {
    ("rules", "warmup"): Range("warmup", 0, 30 * DAY, "seconds",
                               "history before deciding; a month is already very long"),
    ("breaker", "max_refusals"): Range(
        "max_refusals", 1, 1_000_000, "", "enforcing decisions per window before it trips",
        integer=True),
    ("breaker", "window"): Range("window", 60, 8 * DAY, "seconds",
                                 "the breaker counts recent decisions, not history"),
    ("breaker", "cooldown"): Range("cooldown", 60, 7 * DAY, "seconds",
                                   "a tripped breaker must come back within a week"),
    ("daemon", "checkpoint"): Range("checkpoint", 0.1, DAY, "seconds",
                                    "a crash loses at most this much work"),
    ("daemon", "expire_every"): Range("expire_every", 0.05, 3600, "seconds",
                                      "how late an ended penalty may be lifted"),
    ("daemon", "reconcile"): Range("reconcile", 0.1, DAY, "seconds",
                                   "how long a flushed firewall may stay unrepaired"),
    ("daemon", "poll_interval"): Range("poll_interval", 0.01, 60, "seconds",
                                       "how late a line may be read with watch = poll"),
    ("daemon", "keep_decisions"): Range("keep_decisions", 60, 3650 * DAY, "seconds",
                                        "ended decisions kept for repeat offenders and "
                                        "reports"),
    ("fleet", "timeout"): Range("timeout", 0.05, 5, "seconds",
                                "a Redis slower than this counts as down; the log loop "
                                "never waits for it"),
    ("fleet", "stream_length"): Range("stream_length", 100, 10_000_000, "decisions",
                                      "decisions a returning host can catch up on",
                                      integer=True),
    ("enforcement", "widest_prefix_ipv4"): WIDEST_PREFIX_IPV4,
    ("enforcement", "widest_prefix_ipv6"): WIDEST_PREFIX_IPV6,
}


def ranges_table() -> list[tuple[str, str, str]]:
    """(what, range, why) rows for the README and ``--help``-style listings."""
    rows = [(r.what, r.describe(), r.why) for r in (
        BAN_DURATION, DELAY_SECONDS, THROTTLE_PER_MINUTE, RULE_NUMBER, RULE_DURATION)]
    rows += [(r.what, r.describe(), r.why) for r in CLI_RANGES.values()]
    rows += [(f"[{t}] {k}", r.describe(), r.why) for (t, k), r in CONFIG_RANGES.items()]
    return rows
