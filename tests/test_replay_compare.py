"""``replay --compare`` parses the logs once and feeds both rule sets from the same
events: its output must be exactly what two separate replays (one engine each, fed by
its own pipeline) give, so sharing the events changes nothing.

Why: an admin replays a month of logs with --compare after every rule change; the
single pass halves the parsing, but only if neither engine can see the other's
influence (events are shared objects, module caches are shared)."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
from bench_modules import load_bench

from smtpguard_logwatch import events as events_module
from smtpguard_logwatch.counting import Counts
from smtpguard_logwatch.decisions import compare, decision_json
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.engine.local import LocalNetworks
from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.pipeline import Pipeline, fan_out
from smtpguard_logwatch.rules.loader import load_rules

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
DEFAULT = ROOT / "rules" / "default.rules"
# A second rule set that decides differently from the default one: a ratio rule and a
# "<" rule, so the comparison has entries on both sides.
STRICT = """\
rule many_rejects for client_ip:
    when rejects in 10m > 3
    add 60 points
rule mostly_rejected for client_ip:
    when rejects in 1h > 2 and rejects in 1h / connections in 1h > 0.5
    add 60 points
rule quiet_sender for sender:
    when messages in 1h > 20 and recipients in 1h < 30
    add 30 points
ladder client_ip:
    at 50 points throttle 10/minute for 10m
    at 100 points refuse for 1h
ladder sender:
    at 50 points notify
"""


def _one_core() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _cli(*args: str, one_core: bool = False) -> dict[str, Any]:
    """``replay --json``; ``one_core``: on a single CPU, where --compare feeds the second
    engine in this process instead of a forked one."""
    proc = subprocess.run([sys.executable, "-m", "smtpguard_logwatch", "replay", "--json",
                           "--timezone", "UTC", "--year", "2026", "--warmup", "0", *args],
                          capture_output=True, text=True, cwd="/", check=False,
                          env={**os.environ, "TZ": "UTC"},
                          preexec_fn=_one_core if one_core else None)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _separate(rules: Path, files: list[Path]) -> list:
    """The reference: one engine with its own pipeline over the same files."""
    engine = Engine(load_rules([str(rules)]), local=LocalNetworks.this_host(), warmup=0.0)
    pipeline = Pipeline(engine.consume)
    for path in files:
        with _open(path) as fh:
            pipeline.feed(fh, Clock(dt.UTC, year=2026))
    pipeline.finish()
    return list(engine.decisions())


def _open(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        import gzip
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gen = load_bench("generate_log")
    path = tmp_path_factory.mktemp("compare") / "mail.log"
    with open(path, "w", encoding="utf-8") as fh:
        gen.generate(gen.Config(lines=40_000, seed=7, anomalies=True, hours=6.0), fh)
    return path


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "strict.rules"
    path.write_text(STRICT)
    return path


@pytest.mark.parametrize(("which", "one_core"), [("generated", False), ("samples", False),
                                              ("generated", True), ("samples", True)])
def test_compare_output_equals_two_separate_replays(which: str, one_core: bool,
                                                    generated: Path, strict: Path) -> None:
    if not one_core and len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: the forked compare engine is not used")
    files = [generated] if which == "generated" else sorted(
        p for p in SAMPLES.iterdir() if p.name.endswith((".log", ".log.gz")))
    names = [str(p) for p in files]
    both = _cli("--rules", str(DEFAULT), "--compare", str(strict), *names, one_core=one_core)
    alone = _cli("--rules", str(DEFAULT), *names)
    # Everything but the compare block is byte for byte the single replay's.
    block = both.pop("compare")
    assert json.dumps(both, sort_keys=True) == json.dumps(alone, sort_keys=True)
    # The compare block is what an engine fed on its own decides, compared with the
    # default rules' engine fed on its own.
    mine, theirs = _separate(DEFAULT, files), _separate(strict, files)
    assert [decision_json(d) for d in mine] == alone["decisions"]
    expected = {"rules": [str(strict)], "decisions": [decision_json(d) for d in theirs],
                **compare(mine, theirs)}
    assert json.loads(json.dumps(expected)) == block
    if which == "generated":  # the test means something only if both sides decide
        assert alone["decisions"] and block["decisions"]
        assert block["only_rules"] or block["only_compare"] or block["different_time"]


def test_every_event_is_immutable() -> None:
    """What makes one parse safe to share: every event class is a NamedTuple whose
    fields are immutable types, so no consumer can change what the next one sees."""
    classes = [c for c in vars(events_module).values()
               if isinstance(c, type) and issubclass(c, tuple) and hasattr(c, "_fields")]
    assert len(classes) >= 9
    allowed = {float, int, str, bool, type(None)}
    for cls in classes:
        for name, hint in get_type_hints(cls).items():
            assert _immutable(hint, allowed), f"{cls.__name__}.{name}: {hint}"


def _immutable(hint: Any, allowed: set[type]) -> bool:
    origin, args = get_origin(hint), get_args(hint)
    if origin is tuple:
        return all(a is Ellipsis or _immutable(a, allowed) for a in args)
    if origin in (Union, types.UnionType):
        return all(_immutable(a, allowed) for a in args)
    return hint in allowed


def test_fan_out_hands_the_same_event_to_every_sink_in_order() -> None:
    seen: list[tuple[str, object]] = []
    ev = events_module.SessionOpened(1.0, "mx", "192.0.2.1")
    for n in (1, 2, 3, 5):
        seen.clear()
        sink = fan_out(*(lambda e, i=i: seen.append((f"s{i}", e)) for i in range(n)))
        sink(ev)
        assert [name for name, _ in seen] == [f"s{i}" for i in range(n)]
        assert all(e is ev for _, e in seen)
    with pytest.raises(ValueError):
        fan_out()


def test_counts_and_engine_unchanged_by_sharing_the_events(generated: Path) -> None:
    """In process: counts fed alone equal counts fed beside an engine."""
    def counts_of(with_engine: bool) -> str:
        counts = Counts()
        sinks = [counts.consume]
        if with_engine:
            engine = Engine(load_rules([str(DEFAULT)]), local=LocalNetworks.this_host(),
                            warmup=0.0)
            sinks.append(engine.consume)
        pipeline = Pipeline(fan_out(*sinks))
        with open(generated, encoding="utf-8") as fh:
            pipeline.feed(fh, Clock(dt.UTC, year=2026))
        pipeline.finish()
        out = io.StringIO()
        counts.write_json(out)
        return out.getvalue()

    assert counts_of(False) == counts_of(True)
