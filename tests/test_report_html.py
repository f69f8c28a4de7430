"""The HTML report (``replay --html``, ``report --html``): one self-contained page whose
log-borne strings cannot run, whose sparklines show what the rule read, and whose
size does not grow with the log. The browser test is tests/test_report_browser.py."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import pytest

from smtpguard_logwatch.cli import main
from smtpguard_logwatch.config import Config
from smtpguard_logwatch.engine import Engine
from smtpguard_logwatch.engine.ledger import Decision
from smtpguard_logwatch.report_html import MAX_TABLE_ROWS, ReportData, write_html
from smtpguard_logwatch.report_trace import Tracer
from smtpguard_logwatch.rules import default_rules_path, load_rules
from smtpguard_logwatch.scan import run_scan

from feed import feed

T0 = dt.datetime(2026, 3, 2, 10, 0, tzinfo=dt.UTC)
SASL = "<script>document.title='pwned'</script>"
SENDER = "\"o'neil\\\"><script>alert(2)</script>\"@evil.example"
HELO = "<img src=x onerror=alert(3)>"
UNPARSED = "<script>alert(4)</script> & \"quoted\" 'text'"
HOSTILE = (SASL, SENDER)


def _stamp(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat(timespec="microseconds")


def hostile_log(path: Path) -> Path:
    """Password guessing against a user name that is a script, and one forged sender
    full of quotes and markup used from 30 addresses with a markup HELO: decisions on
    both keys (account_guessed, sender_many_ips) and on the guessing IP."""
    out = []
    for i in range(40):
        out.append(f"{_stamp(i * 20)} mx1 postfix/submission/smtpd[77]: warning: "
                   f"unknown[203.0.113.9]: SASL LOGIN authentication failed: "
                   f"authentication failure, sasl_username={SASL}")
    for i in range(30):
        s, ip, q, pid = 900 + i * 30, f"198.51.100.{i + 10}", f"4A{i:08X}", 1000 + i
        out += [
            f"{_stamp(s)} mx1 postfix/smtpd[{pid}]: connect from unknown[{ip}]",
            f"{_stamp(s + 1)} mx1 postfix/smtpd[{pid}]: {q}: client=unknown[{ip}]",
            f"{_stamp(s + 2)} mx1 postfix/cleanup[9]: {q}: message-id=<{i}@evil.example>",
            f"{_stamp(s + 2)} mx1 postfix/qmgr[8]: {q}: from=<{SENDER}>, size=900, nrcpt=1 "
            "(queue active)",
            f"{_stamp(s + 3)} mx1 postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from "
            f"unknown[{ip}]: 554 5.7.1 <x@elsewhere.example>: Relay access denied; "
            f"from=<{SENDER}> to=<x@elsewhere.example> proto=ESMTP helo=<{HELO}>",
            f"{_stamp(s + 4)} mx1 postfix/smtpd[{pid}]: disconnect from unknown[{ip}] ehlo=1 "
            "mail=1 rcpt=1 data=1 quit=1 commands=5",
        ]
    out.append(f"{_stamp(1900)} mx1 postfix/smtpd[5]: {UNPARSED}")
    path.write_text("\n".join(out) + "\n")
    return path


class Page(HTMLParser):
    """Every element, attribute and text of a page."""

    def __init__(self, source: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.feed(source)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def assert_inert(page: Page) -> None:
    """No script, no event handler, no javascript: URL, nothing fetched from anywhere;
    a CSP that would block a script even if one got in."""
    assert page.all("script") == []
    assert page.all("iframe") == [] and page.all("object") == [] and page.all("img") == []
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name, value)
            assert name not in ("src", "href", "srcset", "action", "formaction"), (tag, name)
            assert "javascript:" not in (value or "").lower()
    [csp] = [a["content"] for a in page.all("meta")
             if (a.get("http-equiv") or "").lower() == "content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert [a.get("xmlns") for a in page.all("svg")] == \
        ["http://www.w3.org/2000/svg"] * len(page.all("svg"))


def _replay(tmp_path: Path, *extra: str, capsys) -> tuple[str, Page]:
    out = tmp_path / "report.html"
    rc = main(["replay", "--no-progress", "--html", str(out), *extra,
               str(hostile_log(tmp_path / "mail.log"))])
    assert rc == 0
    assert f"wrote {out}" in capsys.readouterr().err
    source = out.read_text(encoding="utf-8")
    return source, Page(source)


def test_replay_html_escapes_every_log_string_and_loads_nothing(tmp_path, capsys) -> None:
    source, page = _replay(tmp_path, capsys=capsys)
    assert_inert(page)
    text = "".join(page.text)
    for hostile in HOSTILE:
        assert hostile in text  # shown, as text
    assert UNPARSED in text
    titles = [a for t, a in page.tags for k, a in a.items() if k == "title"]
    assert SASL in titles  # the full key in the offender card's tooltip attribute
    assert "<script>" not in source.replace("&lt;script&gt;", "")
    for section in ("timeline", "offenders", "talkers", "lines", "decisions"):
        assert {"id": section} in page.all("section")


def test_replay_html_sparklines_show_the_rules_count_threshold_and_decisions(
        tmp_path, capsys) -> None:
    source, page = _replay(tmp_path, capsys=capsys)
    cards = re.findall(r'<div class="card"><h3 title="([^"]*)">.*?</svg>', source, re.S)
    assert len(cards) == 3  # the guessing IP, the hostile SASL user, the forged sender
    card = re.search(r'<div class="card"><h3 title="&lt;script&gt;document.title=&#x27;'
                     r'pwned&#x27;&lt;/script&gt;">(.*?)</svg>', source, re.S).group(1)
    assert "account_guessed" in card and "auth_failures in 1h &gt; 30" in card
    lines = re.findall(r'<polyline points="([^"]*)"[^>]*stroke="(#[0-9a-f]+)"', card)
    by_colour = {colour: [tuple(map(float, p.split(","))) for p in pts.split()]
                 for pts, colour in lines}
    count, threshold = by_colour["#4c78a8"], by_colour["#e45756"]
    assert len({y for _, y in threshold}) == 1  # the constant 30
    # failures come every 20 s: the count rises (y falls on screen) to the decision
    assert min(y for _, y in count) < threshold[0][1] < max(y for _, y in count)
    dots = re.findall(r'<circle cx="[^"]*" cy="([^"]*)"[^>]*><title>([^<]*)</title>', card)
    assert len(dots) == 1 and "notify at 60 points [account_guessed]" in dots[0][1]
    assert float(dots[0][0]) < threshold[0][1]  # decided above the threshold (31 > 30)


def test_replay_html_compare_draws_the_difference(tmp_path, capsys) -> None:
    strict = tmp_path / "strict.rules"
    strict.write_text("rule any_failure for client_ip:\n    when auth_failures in 1h > 0\n"
                      "    add 100 points\n"
                      "ladder client_ip:\n    at 50 points notify\n")
    _source, page = _replay(tmp_path, "--compare", str(strict), capsys=capsys)
    assert_inert(page)
    assert {"id": "compare"} in page.all("section")
    text = "".join(page.text)
    assert f"only with {strict}" in text


def test_html_report_size_does_not_grow_with_decisions() -> None:
    """Timelines are binned and tables cut: 40,000 decisions make about the same page
    as 4,000 (the 1M-line benchmark stays far below 2 MB)."""
    def page(n: int) -> int:
        ds = [Decision(time=1.7e9 + i * 7.0, dimension=("client_ip", "sender")[i % 2],
                       key=f"key{i}<&>", action=("notify", "delay", "refuse")[i % 3],
                       until=None, rules=("r",), points=60.0) for i in range(n)]
        data = ReportData(title="t", facts=[], start=ds[0].time, end=ds[-1].time,
                          decisions=ds, traces=[], talkers={})
        from io import StringIO
        buf = StringIO()
        write_html(buf, data)
        return len(buf.getvalue().encode())
    small, big = page(4_000), page(40_000)
    assert big < small * 1.1 and big < 300_000
    assert MAX_TABLE_ROWS < 4_000


def test_report_from_state_reads_without_writing(tmp_path, capsys) -> None:
    log = hostile_log(tmp_path / "mail.log")
    db = tmp_path / "state.sqlite"
    cfg = Config(path=None, logs=[str(log)], timezone="UTC",
                 rules=[str(default_rules_path())], state=str(db), warmup=3600.0)
    result = run_scan(cfg, clock=lambda: T0.timestamp() + 2000, actions=[])
    assert len(result.decisions) == 4
    conf = tmp_path / "config.toml"
    conf.write_text(f'[logs]\nfiles = ["{log}"]\ntimezone = "UTC"\n'
                    f'[state]\ndatabase = "{db}"\n')
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    out = tmp_path / "week.html"
    days = (dt.datetime.now(dt.UTC) - T0).days + 2
    assert main(["report", "--config", str(conf), "--html", str(out),
                 "--days", str(days)]) == 0
    assert "4 decisions" in capsys.readouterr().out
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    page = Page(out.read_text(encoding="utf-8"))
    assert_inert(page)
    text = "".join(page.text)
    assert SASL in text and SENDER in text
    assert "Line counts are not kept in the state database, and no daemon was running" \
        in text
    assert len(re.findall(r'class="spark"', out.read_text())) == 3
    # a shorter period that ends before the log's decisions shows none of them
    assert main(["report", "--config", str(conf), "--html", str(out), "--days", "1"]) == 0
    assert "0 decisions" in capsys.readouterr().out


def test_report_without_a_state_database_fails_and_creates_nothing(tmp_path, capsys) -> None:
    conf = tmp_path / "config.toml"
    conf.write_text(f'[state]\ndatabase = "{tmp_path}/none/state.sqlite"\n')
    rc = main(["report", "--config", str(conf), "--html", str(tmp_path / "r.html")])
    assert rc == 1
    assert "no state database" in capsys.readouterr().err
    assert not (tmp_path / "none").exists() and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("days", ["0", "-1", "nan", "4000"])
def test_report_days_is_range_checked(tmp_path, capsys, days) -> None:
    rc = main(["report", "--html", str(tmp_path / "r.html"), "--days", days])
    assert rc == 2 and "--days" in capsys.readouterr().err


def test_tracer_samples_only_the_harshest_keys_and_what_the_rule_read(tmp_path) -> None:
    """With room for one key, only the refused IP is traced; its samples are the rule's
    own count at each moment, against the rule's constant threshold."""
    events, _ = feed(hostile_log(tmp_path / "mail.log").read_text().splitlines())
    engine = Engine(load_rules([str(default_rules_path())]))
    tracer = Tracer(engine.store, lambda: engine.ruleset, keep=1,
                    since=lambda: engine.watch_start)
    engine.on_decision = tracer.on_decision
    for ev in events:
        engine.consume(ev)
    tracer.finish(events[-1].time)
    decided = {(d.dimension, d.key) for d in engine.decisions()}
    assert ("sasl_user", SASL) in decided and len(decided) == 3
    assert set(tracer.traces) == {("client_ip", "203.0.113.9")}
    [trace] = tracer.top(5)
    assert [d.action for d in trace.decisions] == ["delay", "refuse"]
    assert trace.rule == "auth_guessing" and trace.test == "auth_failures in burst > 20"
    series = trace.series()
    assert series[0][0] >= engine.watch_start - trace.step  # nothing before the log
    assert series[0][0] < trace.decisions[0].time < series[-1][0]
    for t, value, threshold, _usual in series:
        expected = engine.store.count("client_ip", "203.0.113.9", "auth_failures", 600.0, t)
        assert value == expected and threshold == 20
    assert max(v for _, v, _, _ in series) == 30  # one failure per 20 s, 10 minutes


def test_html_into_a_missing_directory_fails_before_reading(tmp_path, capsys) -> None:
    target = tmp_path / "no" / "r.html"
    log = hostile_log(tmp_path / "mail.log")
    assert main(["replay", "--no-progress", "--html", str(target), str(log)]) == 2
    err = capsys.readouterr()
    assert f"no directory {tmp_path / 'no'}" in err.err and "Decisions" not in err.out
    conf = tmp_path / "config.toml"
    conf.write_text(f'[state]\ndatabase = "{tmp_path}/state.sqlite"\n')
    run_scan(Config(path=None, logs=[str(log)], timezone="UTC",
                    state=str(tmp_path / "state.sqlite")), actions=[])
    assert main(["report", "--config", str(conf), "--html", str(target)]) == 1
    assert "cannot write the report" in capsys.readouterr().err
    assert not target.parent.exists()


def _saved_decisions(path: str) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
    except sqlite3.Error:  # not written yet
        return 0


def test_report_takes_line_counts_from_the_running_daemon(tmp_path, capsys) -> None:
    from test_daemon import Recorder, Running, _conf_file, config, reject, wait_for

    from smtpguard_logwatch.daemon.control import request

    cfg = config(tmp_path, duration="1h")
    daemon = Running(cfg, [Recorder()])
    try:
        with open(cfg.logs[0], "a") as fh:
            fh.writelines(reject("192.0.2.7") for _ in range(7))
            fh.write("Dec  5 08:00:00 mx postfix/smtpd[1]: <b>not understood</b>\n")
        wait_for(lambda: request(cfg.control_socket, "status")["lines"]["read"] == 8, 10,
                 "the daemon to read the lines")
        wait_for(lambda: _saved_decisions(cfg.state) == 1, 10, "the decision's checkpoint")
        out = tmp_path / "r.html"
        assert main(["report", "--config", str(_conf_file(tmp_path, cfg)), "--html",
                     str(out), "--days", "1"]) == 0
    finally:
        daemon.stop()
    assert ": 1 decision in the last 1 day(s)" in capsys.readouterr().out
    page = Page(out.read_text(encoding="utf-8"))
    assert_inert(page)
    text = "".join(page.text)
    assert "Line counts are the running daemon's" in text
    assert "parsed: 7" in text and "MTA lines not understood: 1" in text
    assert "8 lines read" in text


def test_a_key_back_among_the_harshest_has_every_run_up_sampled(tmp_path) -> None:
    """keep=1: A leads, B overtakes it, A decides again while behind (not sampled then)
    and comes back ahead: the run-up of the decision made while behind is sampled too."""
    from smtpguard_logwatch.store import FrequencyStore

    rules = tmp_path / "r.rules"
    rules.write_text("rule r for client_ip:\n    when rejects in 10m > 2\n    add 100 points\n"
                     "ladder client_ip:\n    at 100 points notify\n")
    ruleset = load_rules([str(rules)])
    store = FrequencyStore()
    tracer = Tracer(store, lambda: ruleset, keep=1)
    t0 = T0.timestamp()
    order = [("A", 610), ("B", 1210), ("B", 1810), ("A", 5010), ("A", 12010)]
    for key, at in order:
        for k in range(3):  # three rejects just before each decision
            store.add("client_ip", key, "rejects", t0 + at - 30 + k)
        tracer.add(Decision(time=t0 + at, dimension="client_ip", key=key, action="notify",
                            until=None, rules=("r",), points=100.0))
    [trace] = tracer.top(5)
    assert trace.key == "A" and len(trace.decisions) == 3
    for at in (610, 5010, 12010):
        assert trace.samples[t0 + at][:2] == (3.0, 2.0)  # rejects in 10m, threshold
    # the hour before the decision made while behind: its rise from nothing
    before = [v for t, (v, _th, _u) in trace.samples.items() if t0 + 1810 < t < t0 + 5010]
    assert len(before) >= 50 and before.count(0.0) >= 40
