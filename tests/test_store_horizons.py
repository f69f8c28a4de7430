"""A store that forgets series older than every window the rules read them with
(``FrequencyStore.set_horizons``, what ``replay`` uses) answers every query of those
windows, keeps every key as long and decides every rule exactly as the store that keeps
everything for its full retention, in less memory.

Why: in a long replay most of the store's series are short-window counts (rejects in 1h,
distinct client IPs in 1h …) of keys long quiet, kept for 8 days because a baseline
reads another metric of the same key (bench/bench_memory.py: 236 MB at 3M lines before,
the same output)."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from bench_modules import load_bench
from hypothesis import given, settings
from hypothesis import strategies as st
from test_core_twins import run
from test_incremental_eval import HARD, _as_its_header_says

from smtpguard_logwatch.decisions import decision_json
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.engine.engine import read_horizons
from smtpguard_logwatch.engine.local import LocalNetworks
from smtpguard_logwatch.rules.loader import load_rules
from smtpguard_logwatch.store import FrequencyStore

# Every test runs against the pure store and its compiled twin.
pytestmark = pytest.mark.usefixtures("store_twin")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = str(ROOT / "rules" / "default.rules")
EXAMPLES = sorted((ROOT / "rules" / "examples").glob("*.rules"))
DAY = 86400.0
HORIZONS = {"ip": {"rejects": 600.0, "#users": 3600.0}, "net": {"rejects": 120.0}}
WINDOWS = {"rejects": (60.0, 120.0, 600.0), "#users": (60.0, 600.0, 3600.0),
           "messages": (60.0, 3600.0, DAY, 7 * DAY)}


def _ops(rng: random.Random, n: int) -> list[tuple]:
    """Adds and sightings over 12 days: bursts, long silences, keys that come back."""
    t = 1_700_000_000.0
    ops = []
    for _ in range(n):
        t += rng.choice((1.0, 30.0, 300.0, 3600.0, 6 * 3600.0, 2 * DAY))
        dim = rng.choice(("ip", "net"))
        key = f"k{rng.randrange(12)}"
        kind = rng.randrange(4)
        if kind == 0:
            ops.append(("add", dim, key, "rejects", t))
        elif kind == 1:
            ops.append(("add", dim, key, "messages", t))
        elif kind == 2:
            ops.append(("member", dim, key, "#users", f"u{rng.randrange(5)}", t))
        else:
            ops.append(("expire", t))
    return ops


def _answers(store: FrequencyStore, now: float) -> dict:
    got = {}
    for dim in ("ip", "net"):
        for key in sorted(store.keys(dim)):
            got[dim, key, "first"] = store.first_seen(dim, key)
            for metric, windows in WINDOWS.items():
                limit = HORIZONS.get(dim, {}).get(metric)
                for w in windows:
                    if limit is not None and w > limit:
                        continue  # no rule reads it that far back
                    if metric.startswith("#"):
                        got[dim, key, metric, w] = store.distinct(dim, key, metric, w, now)
                    else:
                        got[dim, key, metric, w] = store.count(dim, key, metric, w, now)
            got[dim, key, "usual"] = store.baseline(dim, key, "messages", 3600.0, now,
                                                    min_history=3 * DAY, floor=2.0)
    return got


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), cap=st.sampled_from([5, 1000]))
def test_a_trimmed_store_answers_what_a_whole_one_answers(seed: int, cap: int) -> None:
    rng = random.Random(seed)
    whole = FrequencyStore(max_keys_per_dimension=cap)
    trimmed = FrequencyStore(max_keys_per_dimension=cap)
    trimmed.set_horizons(HORIZONS)
    for op in _ops(rng, 300):
        for store in (whole, trimmed):
            if op[0] == "add":
                store.add(*op[1:4], op[4])
            elif op[0] == "member":
                store.add_member(*op[1:])
            else:
                store.expire(op[1])
        now = whole.clock
        assert _answers(trimmed, now) == _answers(whole, now)
        assert trimmed.nkeys() == whole.nkeys()
    assert trimmed.entries() <= whole.entries()


def test_trimming_forgets_old_series_and_keeps_their_key_until_retention() -> None:
    store = FrequencyStore()
    store.set_horizons({"ip": {"rejects": 600.0}})
    t = 1_700_000_000.0
    store.add("ip", "192.0.2.1", "rejects", t)
    store.add("ip", "192.0.2.2", "rejects", t)
    store.add("ip", "192.0.2.2", "messages", t)
    store.expire(t + 3 * 3600)  # past 10 minutes + the hour of slack
    assert store.metrics("ip", "192.0.2.1") == [] and store.entries() == 1
    assert store.first_seen("ip", "192.0.2.1") == t - t % 60  # kept, empty
    store.expire(t + 9 * DAY)  # past the full retention: the key goes too
    assert store.first_seen("ip", "192.0.2.1") is None and store.nkeys() == 0


def test_a_key_with_nothing_retained_is_forgotten() -> None:
    """A new key whose only add is older than the retention held no data but stayed
    for ever, with that old first sighting (so a 'min history' looked satisfied when
    it came back). Expiry now forgets it like any key whose data is gone."""
    store = FrequencyStore()
    t = 1_700_000_000.0
    store.add("ip", "192.0.2.9", "messages", t)
    store.add("ip", "192.0.2.10", "messages", t - 10 * DAY)  # older than anything kept
    store.expire(t + 60)
    assert store.first_seen("ip", "192.0.2.10") is None
    assert store.first_seen("ip", "192.0.2.9") is not None


def test_horizons_follow_the_rules() -> None:
    """Sums and distinct counts keep their longest window; what a baseline reads, a
    distinct count's history and a laddered dimension's messages keep everything."""
    rules = load_rules([DEFAULT])
    engine = Engine(rules, local=LocalNetworks.loopback_only(), trim_store=True)
    horizons = read_horizons(rules, engine._needed)
    assert horizons["client_ip"]["connections"] == 3600.0
    assert horizons["client_ip"]["auth_failures"] == DAY
    assert horizons["sender"]["bounces"] == 3600.0
    assert horizons["sender"]["#client_ips"] == 3600.0
    for dim in ("client_ip", "client_net", "sender", "sasl_user"):
        assert "messages" not in horizons.get(dim, {})
    with pytest.raises(ValueError, match="seconds > 0"):
        FrequencyStore().set_horizons({"ip": {"rejects": 0.0}})


def _events(seed: int, lines: int, hours: float) -> list:
    gen = load_bench("generate_log")
    buf = io.StringIO()
    gen.generate(gen.Config(lines=lines, seed=seed, anomalies=True, anomaly_scale=0.3,
                            hours=hours), buf)
    return run(buf.getvalue().splitlines(keepends=True), compiled=False)[0]


@pytest.fixture(scope="module", params=[(7, 30_000, 8.0), (23, 60_000, 12 * 24.0)],
                ids=["8h", "12days"])
def events(request: pytest.FixtureRequest) -> list:
    return _events(*request.param)


RULESETS = ["default", "hard", *[e.name for e in EXAMPLES]]


def rule_files(ruleset: str, tmp_path: Path) -> list[str]:
    """The files of one of RULESETS, as ``load_rules`` takes them."""
    if ruleset == "default":
        return [DEFAULT]
    if ruleset == "hard":
        (tmp_path / "hard.rules").write_text(HARD)
        return [str(tmp_path / "hard.rules")]
    return _as_its_header_says(ROOT / "rules" / "examples" / ruleset)


@pytest.mark.parametrize("ruleset", RULESETS)
def test_a_trimmed_replay_decides_exactly_as_a_whole_one(events: list, ruleset: str,
                                                         tmp_path: Path) -> None:
    """The default rules, rules made hard for shortcuts (ratios, ``<``, ``not``,
    ``usual`` with a short history) and every example file as its header loads it."""
    rules = rule_files(ruleset, tmp_path)
    results = []
    horizons: dict = {}
    for trim in (False, True):
        engine = Engine(load_rules(rules), local=LocalNetworks.loopback_only(),
                        warmup=3600.0, trim_store=trim)
        for ev in events:
            engine.consume(ev)
        horizons = engine.store._horizon_stay
        results.append(([decision_json(d) for d in engine.decisions()],
                        engine.stats.fired, engine.store.nkeys(), engine.store.entries()))
    (whole, fired, nkeys, entries), (trimmed, t_fired, t_nkeys, t_entries) = results
    assert trimmed == whole and t_fired == fired and t_nkeys == nkeys
    # (the old SMTPGuard's limits and the spike examples are above this traffic)
    assert whole or ruleset in ("smtpguard.rules", "spikes.rules"), \
        "no decision: the comparison proves nothing"
    if horizons:  # (spikes.rules reads every metric through a baseline: none)
        assert t_entries < entries, "nothing was trimmed: the comparison proves nothing"
    else:
        assert t_entries == entries
