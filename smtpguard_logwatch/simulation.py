"""Simulation mode: decide, record and notify exactly as in enforcement, apply nothing.

Which decisions are *simulated*:

* every automatic decision while the config says ``[enforcement] mode = "simulate"``;
* every automatic decision of a ladder written with ``mode simulate``;
* every automatic decision while a new installation is in its first
  ``simulate_days`` (counted from when the state database was created, recorded in
  the ``enforcement_state`` table; a database that existed before this table did is
  not new and does not start simulating).

Only enforcing actions (delay, throttle, defer, hold, refuse) are marked: a
notification is the same thing in both modes. Manual bans are never simulated: an
operator who types ``ban`` means it. A simulated decision goes into the ledger with
``simulated = 1``, takes its place on the ladder (points, repeat offences, the
circuit breaker count exactly as in enforcement, so the simulation shows what
enforcement would do), and reaches only the actions that just tell people (the
warning mail); the firewall and MTA actions never see it.

When simulation ends (the initial days are over, the config switches to enforce, a
ladder loses ``mode simulate``), simulated decisions that are still active are NOT
applied: they were decided under rules the admin had not yet trusted, and a burst of
refusals at the moment of the switch would hit sources that may have long stopped.
Instead their penalties are released on the ladder (points are kept), so a key that
goes on misbehaving reaches the step again at its next rule firing and that decision
is enforced. An admin who wants one of them enforced at once bans the key by hand.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .engine.engine import ENFORCING
from .engine.ledger import Decision
from .report import iso
from .rules.model import RuleSet

if TYPE_CHECKING:
    from .config import Config
    from .engine import Engine

log = logging.getLogger("smtpguard_logwatch.simulation")

DAY = 86400.0
# Tables only a scan or daemon checkpoint writes: their presence means it has run.
_WORKED = ("follow_positions", "freqstore_meta", "engine_scores")
_TABLE = ("CREATE TABLE IF NOT EXISTS enforcement_state (id INTEGER PRIMARY KEY CHECK (id = 1),"
          " created REAL NOT NULL, new_install INTEGER NOT NULL, mode TEXT)")


@dataclass(frozen=True)
class Mode:
    """The installation-wide mode at one moment, and why."""

    simulating: bool
    reason: str  # "config", "initial" (a new installation's first days) or "enforce"
    enforcing_from: float | None  # when the initial simulation ends (reason "initial")


class Simulation:
    """Marks decisions as simulated and notices when simulation ends."""

    def __init__(self, conn: sqlite3.Connection, cfg: Config, *,
                 clock: Callable[[], float]) -> None:
        """Open (or create) the ``enforcement_state`` row. Call it before the state
        creates its tables: a database where ``scan`` or the daemon already saved counts
        or log positions is an existing installation (from before simulation mode), not
        a new one. (``list``, ``ban`` or a boot-time ``reconcile`` before the first run
        only create the ledger; that does not make an installation old.)"""
        self.conn = conn
        self.clock = clock
        self.cfg = cfg
        conn.execute(_TABLE)
        row = conn.execute("SELECT created, new_install, mode FROM enforcement_state"
                           " WHERE id = 1").fetchone()
        if row is None:
            worked = conn.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'"
                                  f" AND name IN ({', '.join('?' * len(_WORKED))})",
                                  _WORKED).fetchone()[0]
            row = (clock(), int(worked == 0), None)
            conn.execute("INSERT INTO enforcement_state VALUES (1, ?, ?, ?)", row)
            conn.commit()
        self.created = float(row[0])
        self.new_install = bool(row[1])
        self._announced: str | None = row[2]

    def configure(self, cfg: Config) -> None:
        """A reloaded config (mode and simulate_days may have changed)."""
        self.cfg = cfg

    def mode_at(self, now: float) -> Mode:
        if self.cfg.mode == "simulate":
            return Mode(True, "config", None)
        if self.new_install and self.cfg.simulate_days > 0:
            end = self.created + self.cfg.simulate_days * DAY
            if now < end:
                return Mode(True, "initial", end)
        return Mode(False, "enforce", None)

    def simulated(self, d: Decision, ruleset: RuleSet, now: float) -> bool:
        """Whether this new decision is to be simulated rather than enforced."""
        if d.origin == "manual" or d.action not in ENFORCING:
            return False
        ladder = ruleset.ladders.get(d.dimension)
        return (ladder is not None and ladder.simulate) or self.mode_at(now).simulating

    def refresh(self, engine: Engine, ruleset: RuleSet, *, force: bool = False) -> None:
        """Say once when the installation-wide mode changes (persisted, so a restart or
        the next cron ``scan`` does not say it again), and release the ladder
        penalties of simulated decisions that would now be enforced (see the module
        docstring). ``force``: release even without a change (start, rule reload)."""
        now = self.clock()
        mode = self.mode_at(now)
        word = "simulate" if mode.simulating else "enforce"
        changed = word != self._announced
        if changed:
            if self._announced is not None or mode.simulating:
                log.warning("%s", _announcement(mode, self.cfg.simulate_days, now))
            self._announced = word
            self.conn.execute("UPDATE enforcement_state SET mode = ? WHERE id = 1", (word,))
        if changed or force:
            released = engine.release_penalties(
                lambda d: d.simulated and not self._still_simulated(d, ruleset, mode))
            if released:
                log.warning("simulation: %d simulated penalt%s still in force, not applied; "
                            "enforced when the key next reaches a ladder step",
                            released, "y" if released == 1 else "ies")

    def _still_simulated(self, d: Decision, ruleset: RuleSet, mode: Mode) -> bool:
        ladder = ruleset.ladders.get(d.dimension)
        return mode.simulating or (ladder is not None and ladder.simulate)

    def status(self, ruleset: RuleSet, now: float | None = None) -> dict[str, Any]:
        """For ``status``: the mode, why, and when enforcement starts."""
        mode = self.mode_at(self.clock() if now is None else now)
        return {"mode": "simulate" if mode.simulating else "enforce", "reason": mode.reason,
                "enforcing_from": iso(mode.enforcing_from), "state_created": iso(self.created),
                "simulated_ladders": sorted(d for d, lad in ruleset.ladders.items()
                                            if lad.simulate)}


def _announcement(mode: Mode, days: float, now: float) -> str:
    if mode.reason == "initial":
        return (f"simulation: a new installation simulates its first {days:g} days: "
                f"decisions are recorded and mailed, nothing is enforced until "
                f"{iso(mode.enforcing_from)}")
    if mode.reason == "config":
        return ("simulation: [enforcement] mode = \"simulate\": decisions are recorded and "
                "mailed, nothing is enforced")
    return (f"simulation ended at {iso(now)}: enforcing from now on (simulated decisions "
            f"still active are not applied)")


def describe_mode(status: dict[str, Any]) -> str:
    """One line for ``status``."""
    if status["mode"] == "simulate":
        line = "SIMULATION: deciding and mailing, enforcing nothing"
        if status["reason"] == "initial":
            line += f"; enforcement starts {status['enforcing_from']}"
        else:
            line += ' (mode = "simulate" in the config)'
    else:
        line = "enforcing"
    if status["simulated_ladders"]:
        line += f"; ladders in simulation: {', '.join(status['simulated_ladders'])}"
    return line
