"""``run``: the daemon. Follows the logs, decides within a second, enforces, and
keeps its state safe across crashes, reloads and reboots.

* :mod:`.service` – :class:`Daemon`: the main loop (follow, count, decide, enforce),
  signals (SIGHUP reload, SIGTERM stop), start-up and shut-down;
* :mod:`.jobs` – the periodic work, on APScheduler: checkpoints, lifting expired
  decisions, reconciling the actions, housekeeping, store maintenance, the digest;
* :mod:`.control` – the root-only control socket (transport: JSON lines);
* :mod:`.commands` – what the socket answers: status, list, ban, unban, explain, reload;
* :mod:`.journal` – the systemd journal as an optional input;
* :mod:`.logsetup` – log lines an admin can grep, with journald priorities.

The state itself (checkpointed in one SQLite transaction) is :mod:`..state`, shared
with ``scan``.
"""

from .service import Daemon, run_daemon

__all__ = ["Daemon", "run_daemon"]
