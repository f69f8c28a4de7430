"""The compiled twin of the engine against the pure engine (issue 14 item 2).

The pure engine is the reference. The twin is the same source compiled by Cython with
engine.pxd (``smtpguard_logwatch.engine._c_engine``, with observe.py's twin, see
setup.py), and the rules' conditions and gates (their closures) are compiled likewise
(``smtpguard_logwatch.rules._c_conditions``, ``_c_gate``); the engine and rule test
modules run against both (``engine_twin`` in conftest.py). Here: the whole per-event
path of each core (engine, store and rule twins together, as a replay runs them) must
give the same decisions, the same rule firings and evaluations, and the same store, on
generated traffic with every rule set, trimmed and whole, incremental and fully
evaluated, and on the bundled samples; and the CLI and the daemon take the twins
exactly when the compiled core is active.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import importlib.machinery
from pathlib import Path

import pytest
from conftest import built_twins, is_extension
from test_incremental_eval import HARD
from test_store_horizons import RULESETS, _events, rule_files
from test_store_twin import _rows

from smtpguard_logwatch import cli, core
from smtpguard_logwatch.decisions import decision_json
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.engine.active import engine_class
from smtpguard_logwatch.engine.local import LocalNetworks
from smtpguard_logwatch.envelope import Clock
from smtpguard_logwatch.pipeline import Pipeline
from smtpguard_logwatch.rules.loader import DEFAULT_RULES_TOKEN, load_rules
from smtpguard_logwatch.rules.model import RuleSet
from smtpguard_logwatch.store.store import FrequencyStore as PureStore

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


@pytest.fixture(scope="module")
def twin():  # noqa: ANN201 - the compiled engine module
    return built_twins((core.twin_engine_module, core.twin_store_module,
                        core.twin_conditions_module), "engine, store or rule twins were")


def test_the_twins_are_compiled_modules(twin) -> None:
    assert is_extension(twin)
    observe = importlib.import_module(twin.observe.__module__)
    assert observe.__name__ == "smtpguard_logwatch.engine._c_observe"
    assert is_extension(observe)
    assert twin.Engine is not Engine  # the pure one is still there, as the reference
    conditions = core.twin_conditions_module()
    assert is_extension(conditions)
    assert conditions.gate.__name__ == "smtpguard_logwatch.rules._c_gate"  # its twin
    assert is_extension(conditions.gate)


def test_the_cli_and_the_daemon_take_the_engine_of_the_active_core(
        twin, monkeypatch: pytest.MonkeyPatch) -> None:
    for active, expected in ((None, Engine), (core.load_compiled(), twin.Engine)):
        monkeypatch.setattr(core, "compiled", active)
        assert engine_class() is expected
        engine = cli.replay_engine([DEFAULT_RULES_TOKEN], 0.0)
        assert type(engine) is expected
        assert _compiled_closures(engine.ruleset) == (active is not None)


def test_the_version_line_says_when_a_twin_is_missing(twin, monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    monkeypatch.setattr(core, "compiled", core.load_compiled())
    assert "pure" not in core.description()
    monkeypatch.setattr(core, "twin_engine_module", lambda: None)
    assert core.description().endswith(", engine pure")
    monkeypatch.setattr(core, "twin_conditions_module", lambda: None)
    assert core.description().endswith(", engine pure, rules pure")
    monkeypatch.setattr(core, "twin_envelope_module", lambda: None)
    assert core.description().endswith(", engine pure, rules pure, clock pure")


@pytest.mark.usefixtures("engine_twin")
def test_the_fixture_swaps_the_engine(engine_twin: str) -> None:
    """The engine test modules run against both engines (the check can fail)."""
    assert Engine.__module__.endswith("._c_engine") == (engine_twin == "compiled")


def _outcome(engine) -> tuple:  # noqa: ANN001
    stats = dataclasses.asdict(engine.stats)
    return ([decision_json(d) for d in engine.decisions()], stats,
            sorted(engine._last_fired.items()),
            sorted((dk, p.decision.id, p.rank, p.until) for dk, p in engine._penalties.items()),
            sorted(engine._enforced), engine.store.stats(), _rows(engine.store))


def _rules_of(active, files: list[str]) -> RuleSet:  # noqa: ANN001
    """The rules compiled by the core ``active`` (None: the pure one)."""
    before = core.compiled
    core.compiled = active
    try:
        return load_rules(files)
    finally:
        core.compiled = before


def _both(twin, events: list, rules: list[str], **options) -> list[tuple]:  # noqa: ANN001
    """The outcome of the pure path and of the compiled one (engine, store, and the
    rules' conditions and gates) on the same events."""
    results = []
    for active, engine_cls, store_cls in (
            (None, Engine, PureStore),
            (core.load_compiled(), twin.Engine, core.twin_store_module().FrequencyStore)):
        ruleset = _rules_of(active, rules)
        assert _compiled_closures(ruleset) == (active is not None)
        engine = engine_cls(ruleset, store=store_cls(), local=LocalNetworks.loopback_only(),
                            **options)
        for ev in events:
            engine.consume(ev)
        results.append(_outcome(engine))
    return results


def _compiled_closures(ruleset: RuleSet) -> bool:
    """Whether the rules' conditions and gates come from the compiled twins (all or
    none: a mixture fails)."""
    modules = {f.__module__ for rule in ruleset.rules for f in (rule.condition, rule.gate)
               if f is not None}
    assert modules, "no closure to look at"
    twins = {m for m in modules if m.startswith("smtpguard_logwatch.rules._c_")}
    assert twins in (set(), modules), modules
    return bool(twins)


@pytest.fixture(scope="module")
def events() -> list:
    """Twelve days of generated traffic with its anomalies (as test_store_horizons)."""
    return _events(23, 60_000, 12 * 24.0)


@pytest.mark.parametrize("ruleset", RULESETS)
def test_both_paths_decide_alike(twin, events: list, ruleset: str, tmp_path: Path) -> None:
    """As replay runs it (trimmed store), as the daemon does (whole store), and with
    every candidate rule evaluated in full (the incremental path's reference)."""
    rules = rule_files(ruleset, tmp_path)
    for options in ({"trim_store": True}, {"trim_store": False},
                    {"trim_store": False, "full_eval": True}):
        pure, compiled = _both(twin, events, rules, warmup=3600.0, **options)
        assert compiled == pure, options
    assert pure[0] or ruleset in ("smtpguard.rules", "spikes.rules"), \
        "no decision: the comparison proves nothing"


def _sample_events() -> list:
    events: list = []
    pipeline = Pipeline(events.append)
    for path in sorted(SAMPLES.glob("*.log*")):  # Postfix, Exim and Sendmail
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="surrogateescape") as fh:
            pipeline.feed(fh, Clock(dt.UTC, year=2026))
    pipeline.finish()
    return sorted(events, key=lambda ev: ev.time)


def test_both_paths_decide_alike_on_the_samples(twin, tmp_path: Path) -> None:
    events = _sample_events()
    assert len(events) > 1000
    hard = tmp_path / "hard.rules"
    hard.write_text(HARD)
    for rules in ([DEFAULT_RULES_TOKEN], [str(hard)]):
        pure, compiled = _both(twin, events, rules, warmup=0.0)
        assert compiled == pure
        assert pure[0], "no decision: the comparison proves nothing"
