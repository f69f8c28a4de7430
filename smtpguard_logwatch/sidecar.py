"""An event consumer in a forked process: ``replay --compare`` runs the second rule
set's engine beside the first on another core, fed with the events parsed once.

Why: with the lines parsed once, a comparison still costs a second engine, which is
most of a replay's time; in its own process that work overlaps the parent's instead
of following it. Events cross in pickled batches (a few microseconds per event, paid
by the parent), so this is used only when a second core is there to take the work.
The child is forked before any line is read, so it starts small; it sends back one
pickled result (what ``finish`` returns) or the text of its error.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any

from .events import Event

BATCH = 2048  # events per pickle: amortises the per-message cost of the pipe


class SidecarError(RuntimeError):
    """The forked consumer failed (its traceback is the message) or died."""


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


Start = Callable[[], tuple[Callable[[Event], None], Callable[[], Any]]]


class Sidecar:
    """``start()`` runs in the child and gives (consume, finish): the consumer is made
    there, after the fork, so nothing it opens (an SQLite ledger) is shared with this
    process. ``consume`` here batches events to the child; ``result()`` ends the stream
    and returns what ``finish()`` gave in the child (it must be picklable)."""

    def __init__(self, start: Start) -> None:
        ctx = get_context("fork")
        for stream in (sys.stdout, sys.stderr):  # nothing buffered may be written twice
            stream.flush()
        events_in, events_out = ctx.Pipe(duplex=False)  # (receiving end, sending end)
        result_in, result_out = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_serve, args=(events_in, result_out, (events_out, result_in), start),
            daemon=True)
        self._proc.start()
        events_in.close()  # the child's ends: a dead child then reads as EOF here
        result_out.close()
        self._send, self._result = events_out, result_in
        self._batch: list[Event] = []
        self.consume = self._batch_consume

    def _batch_consume(self, ev: Event) -> None:
        batch = self._batch
        batch.append(ev)
        if len(batch) >= BATCH:
            self._flush()

    def _flush(self) -> None:
        try:
            self._send.send_bytes(pickle.dumps(self._batch, pickle.HIGHEST_PROTOCOL))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise self._failure() from None
        self._batch.clear()

    def result(self) -> Any:
        if self._batch:
            self._flush()
        try:
            self._send.send_bytes(b"")
            self._send.close()
            ok, payload = pickle.loads(self._result.recv_bytes())  # noqa: S301 - our child
        except (BrokenPipeError, ConnectionResetError, EOFError):
            raise self._failure() from None
        finally:
            self._result.close()
            self._proc.join(10)
        if not ok:
            raise SidecarError(payload)
        return payload

    def _failure(self) -> SidecarError:
        """Why the child stopped reading: its own error text when it sent one."""
        try:
            if self._result.poll(10):
                ok, payload = pickle.loads(self._result.recv_bytes())
                if not ok:
                    return SidecarError(payload)
        except (EOFError, OSError, pickle.UnpicklingError):
            pass
        self._proc.join(10)
        return SidecarError(f"the compare process ended (exit status {self._proc.exitcode}) "
                            "before the logs were read")

    def close(self) -> None:
        """Stop the child if it still runs (an error in the parent)."""
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


def _serve(events: Connection, result: Connection, parent_ends: tuple[Connection, ...],
           start: Start) -> None:
    for end in parent_ends:  # so a dead parent reads as EOF here, not as a hang
        end.close()
    try:
        consume, finish = start()
        while True:
            blob = events.recv_bytes()
            if not blob:
                break
            for ev in pickle.loads(blob):  # noqa: S301 - our own parent's events
                consume(ev)
        answer = pickle.dumps((True, finish()), pickle.HIGHEST_PROTOCOL)
    except BaseException:  # every failure goes back to the parent as text
        answer = pickle.dumps((False, traceback.format_exc(limit=8)), pickle.HIGHEST_PROTOCOL)
    with contextlib.suppress(OSError):
        result.send_bytes(answer)
