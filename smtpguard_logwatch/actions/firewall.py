"""What the nftables and iptables actions share: the options, which decisions a firewall
can enforce, how a decision becomes a target (key, family, network or not, throttle
tier), and which targets reconcile wants. The subclasses only say how targets become
set elements or rules.

A firewall sees client addresses only: refuse and throttle of ``client_ip`` (and of
``client_net`` /24 and /64 networks when ``networks`` is on). Throttle rates are
rounded *down* to a configured tier, so a firewall never lets through more than was
decided.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..engine.ledger import Decision
from .base import ActionError, ReconcileReport
from .files import build_or_log
from .keys import KeyRefused, normalise_key

log = logging.getLogger("smtpguard_logwatch.actions")

DEFAULT_TIERS: tuple[float, ...] = (0.25, 1, 2, 5, 10, 20, 30, 60, 120, 300)
NET_PREFIX = {4: 24, 6: 64}


@dataclass(frozen=True)
class Tier:
    """One throttle rate: ``rate`` per ``unit`` (nft ``limit`` needs integers)."""

    per_minute: float
    rate: int
    unit: str  # "minute" or "hour"
    burst: int

    @property
    def tag(self) -> str:
        return f"{self.rate}{self.unit[0]}"

    def __str__(self) -> str:
        return f"{self.rate}/{self.unit}"


@dataclass(frozen=True)
class Target:
    """A decision resolved to what it means in the firewall."""

    action: str  # refuse | throttle
    key: str  # normalised, e.g. "192.0.2.7" or "192.0.2.0/24"
    version: int
    net: bool
    tier: Tier | None

    def label(self) -> str:
        return f"{self.action} {self.key}" + (f" at {self.tier}" if self.tier else "")


class FirewallAction:
    """Base of the firewall actions: validated common options, :meth:`handles`, decision
    to :class:`Target`, and :meth:`_wanted_targets` for reconcile."""

    name: ClassVar[str] = "firewall"

    def _init_common(self, *, ports: int | Sequence[int], networks: bool,
                     throttle_burst: int | None, throttle_tiers: Sequence[float],
                     dry_run: bool, command_timeout: float,
                     clock: Callable[[], float]) -> None:
        self.ports = check_ports(self.name, ports)
        self.networks = check_bool(self.name, "networks", networks)
        self.dry_run = check_bool(self.name, "dry_run", dry_run)
        if throttle_burst is not None and (
                isinstance(throttle_burst, bool) or not isinstance(throttle_burst, int)
                or throttle_burst < 1):
            raise ActionError(f"{self.name}: throttle_burst must be a whole number >= 1, "
                              f"not {throttle_burst!r}")
        self.tiers = check_tiers(self.name, throttle_tiers, throttle_burst)
        if isinstance(command_timeout, bool) or not isinstance(command_timeout, int | float) \
                or not command_timeout > 0:
            raise ActionError(f"{self.name}: command_timeout must be seconds > 0, "
                              f"not {command_timeout!r}")
        self.command_timeout = float(command_timeout)
        self.clock = clock
        self._lock = threading.RLock()

    def handles(self, decision: Decision) -> bool:
        """Refuse and throttle on client IPs (and networks when enabled): the only
        things a firewall can see."""
        dims = ("client_ip", "client_net") if self.networks else ("client_ip",)
        return decision.dimension in dims and decision.action in ("refuse", "throttle")

    def _resolve(self, decision: Decision) -> Target:
        """The decision as a target, or KeyRefused (never touches the firewall)."""
        return resolve_target(self.name, decision, self.tiers)

    def _target(self, decision: Decision) -> Target | None:
        return build_or_log(self.name, self.handles, self._resolve, decision)

    def _tier_for(self, decision: Decision) -> Tier:
        return tier_for(self.name, self.tiers, decision)

    def _wanted_targets(self, active: Iterable[Decision], now: float,
                        report: ReconcileReport) -> list[tuple[Target, float | None]]:
        """(target, until) for every key reconcile should hold: per key the longest
        refusal (None = no end, longest of all) and the latest throttle (as ``apply``
        would leave it). Refused keys are reported."""
        refusals: dict[str, tuple[Target, float | None]] = {}
        throttles: dict[str, tuple[float, Target, float | None]] = {}
        for decision in active:
            if not self.handles(decision):
                continue
            try:
                target = self._resolve(decision)
            except KeyRefused as exc:
                log.warning("%s: key refused, not written: %s", self.name, exc)
                report.refused.append(f"{decision.dimension} {decision.key!r}: {exc}")
                continue
            if decision.until is not None and decision.until <= now:
                continue
            if target.action == "refuse":
                old = refusals.get(target.key)
                if old is None or (old[1] is not None and (
                        decision.until is None or decision.until > old[1])):
                    refusals[target.key] = (target, decision.until)
            elif target.key not in throttles or decision.time >= throttles[target.key][0]:
                throttles[target.key] = (decision.time, target, decision.until)
        return [*refusals.values(), *((t, until) for _time, t, until in throttles.values())]

    def recorded(self, now: float) -> list[Decision]:
        """What the firewall enforces, as decisions (to rebuild a lost ledger); a
        subclass that can read it back says so by overriding this."""
        return []


# -- shared checks and helpers -----------------------------------------------------------


def check_bool(action: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ActionError(f"{action}: {name} must be true or false, not {value!r}")
    return value


def check_ports(action: str, value: int | Sequence[int]) -> tuple[int, ...]:
    items = [value] if isinstance(value, int) else list(value) \
        if isinstance(value, list | tuple) else None
    if not items or not all(isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536
                            for p in items):
        raise ActionError(f"{action}: ports must be TCP port numbers, not {value!r}")
    return tuple(sorted(set(items)))


def check_tiers(action: str, values: Sequence[float], burst: int | None
                ) -> tuple[Tier, ...]:
    """Validated tiers, smallest first: each a whole number per minute or per hour."""
    if not isinstance(values, list | tuple) or not values:
        raise ActionError(f"{action}: throttle_tiers must be a list of rates, "
                          f"not {values!r}")
    tiers: dict[float, Tier] = {}
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1e6:
            raise ActionError(f"{action}: throttle tier {v!r} is not a positive rate")
        per_hour = v * 60
        if v >= 1 and float(v).is_integer():
            rate, unit = int(v), "minute"
        elif abs(per_hour - round(per_hour)) < 1e-9:
            rate, unit = round(per_hour), "hour"
        else:
            raise ActionError(f"{action}: throttle tier {v!r}/minute is not a whole number "
                              "per minute or per hour")
        tiers[float(v)] = Tier(float(v), rate, unit,
                               burst if burst is not None else max(1, math.ceil(v)))
    return tuple(tiers[k] for k in sorted(tiers))


def timeout_of(until: float | None, now: float) -> int | None:
    """Whole seconds to ``until``, rounded up (None: no end)."""
    return None if until is None else max(1, math.ceil(until - now))


def for_text(timeout: int | None) -> str:
    return "no end" if timeout is None else f"for {timeout}s"


def tier_for(name: str, tiers: Sequence[Tier], decision: Decision) -> Tier:
    """The largest tier not above the decided rate: a firewall never lets through more
    than was decided (the smallest tier, with a warning, when none fits)."""
    rate = decision.argument
    if rate is None or rate <= 0:
        log.warning("%s: throttle of %r without a rate; using %s", name, decision.key,
                    tiers[0])
        return tiers[0]
    fitting = [t for t in tiers if t.per_minute <= rate + 1e-9]
    if not fitting:
        log.warning("%s: throttle rate %g/minute is below the smallest tier; using %s",
                    name, rate, tiers[0])
        return tiers[0]
    return fitting[-1]


def resolve_target(name: str, decision: Decision, tiers: Sequence[Tier]) -> Target:
    """What a firewall decision means: its normalised key, address family, whether it
    is a /24 or /64 network (the only ones enforced), and the throttle tier. Raises
    KeyRefused for anything else."""
    key = normalise_key(decision.dimension, decision.key)
    net = decision.dimension == "client_net"
    if net:
        network = ipaddress.ip_network(key)
        if network.prefixlen != NET_PREFIX[network.version]:
            raise KeyRefused(f"{name} enforces networks only as /24 or /64: {key}")
        version = network.version
    else:
        version = ipaddress.ip_address(key).version
    tier = tier_for(name, tiers, decision) if decision.action == "throttle" else None
    return Target(decision.action, key, version, net, tier)
