"""replay writes its output once the engines and their stores are gone (issue 14,
memory): on a 15-day log, merging the summary back and writing the decisions came on
top of the full store, and that was the replay's peak (10M-line bench log: 162 MB
while parsing, 174 MB at the end)."""

from __future__ import annotations

import gc
import io
import json
from pathlib import Path

import pytest

from smtpguard_logwatch import cli
from smtpguard_logwatch.counting import _write_value

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "postfix-mx1.log.gz"
DEFAULT = str(Path(__file__).resolve().parent.parent / "rules" / "default.rules")


def _alive(made: list) -> list[str]:
    """Which of the objects made the collector still finds. They are known by id and
    type, not held: the compiled engine and store take no weak references, and no
    engine is made after them that could take an id over."""
    gc.collect()
    known = {(i, kind): name for i, kind, name in made}
    return sorted(known[id(o), type(o)] for o in gc.get_objects()
                  if (id(o), type(o)) in known)


@pytest.mark.parametrize("extra", [[], ["--compare", DEFAULT], ["--no-rules"]])
@pytest.mark.parametrize("writer", ["write_summary_json", "write_summary"])
def test_no_engine_or_store_is_alive_when_the_output_is_written(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, extra: list,
        writer: str) -> None:
    made: list = []
    make_engine = cli.replay_engine

    def replay_engine(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        engine = make_engine(*args, **kwargs)
        made.append((id(engine), type(engine), "engine"))
        made.append((id(engine.store), type(engine.store), "store"))
        return engine

    seen: list = []
    write = getattr(cli, writer)

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(_alive(made))
        return write(*args, **kwargs)

    monkeypatch.setattr(cli, "replay_engine", replay_engine)
    monkeypatch.setattr(cli, writer, spy)
    json = ["--json"] if writer == "write_summary_json" else []
    assert cli.main(["replay", *json, *extra, str(SAMPLE)]) == 0
    assert capsys.readouterr().out
    assert len(made) == {"--no-rules": 0, "--compare": 4}.get(extra[0] if extra else "", 2)
    assert seen == [[]]  # written once, with none of them alive


def test_replay_json_takes_the_decisions_from_the_ledger_one_at_a_time(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """As a list (Decision objects and their JSON dicts, about 2.6 KB each), a 45-day
    log's 22,000 decisions held some 57 MB at the end of the replay. Streamed, each is
    read from the ledger and turned into JSON while the output is being written."""
    events: list[str] = []
    write, to_json = cli.write_summary_json, cli.decision_json

    def writing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        events.append("write")
        return write(*args, **kwargs)

    def decision_json(d):  # noqa: ANN001, ANN202
        events.append("decision")
        return to_json(d)

    monkeypatch.setattr(cli, "write_summary_json", writing)
    monkeypatch.setattr(cli, "decision_json", decision_json)
    assert cli.main(["replay", "--json", str(SAMPLE)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["decisions"]) == events.count("decision") > 0
    assert events[0] == "write"  # none was converted before the output began


def test_a_streamed_list_is_written_as_json_dumps_writes_the_list() -> None:
    items = [{"a": 1, "b": [1.5, None, "x\u00e9"]}, {"c": {"d": True}}, []]
    out = io.StringIO()
    _write_value(out, {"decisions": iter(items), "n": 2})
    assert out.getvalue() == json.dumps({"decisions": items, "n": 2}, separators=(",", ":"))
