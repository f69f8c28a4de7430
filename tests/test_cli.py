"""The installed command, run as an admin would: replay, explain, check, and the
one-line errors for bad input."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples"
RULES = ROOT / "rules" / "default.rules"
LINE = ("Jul 12 07:47:48 saturn postfix/smtpd[8738]: NOQUEUE: reject: RCPT from "
        "a.example[192.0.2.4]: 554 5.7.1 <x@far.example>: Relay access denied; "
        "from=<j@example.com> to=<x@far.example> proto=SMTP helo=<a.example>")


def cli(*args: str, cwd: Path | None = None, stdin: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run ``python -m smtpguard_logwatch`` from a directory outside the checkout, so
    the installed package is what runs."""
    return subprocess.run([sys.executable, "-m", "smtpguard_logwatch", *args],
                          capture_output=True, text=True, input=stdin,
                          cwd=cwd or Path("/"), check=False,
                          env={**os.environ, "TZ": "UTC"})


def test_help_lists_the_commands() -> None:
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("replay", "explain", "check"):
        assert command in proc.stdout


def test_replay_of_the_samples_prints_counts_and_decisions() -> None:
    files = sorted(str(p) for p in SAMPLES.iterdir())
    proc = cli("replay", "--timezone", "UTC", *files)
    assert proc.returncode == 0, proc.stderr
    assert "Top client ips" in proc.stdout
    assert "Decisions (" in proc.stdout and "(none" not in proc.stdout
    assert "unparsed                        0" in proc.stdout


def test_replay_reads_gzip_and_stdin_alike(tmp_path: Path) -> None:
    plain = SAMPLES / "exim-mainlog.log"
    gz = tmp_path / "exim.log.1.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    from_gz = json.loads(cli("replay", "--json", "--no-rules", str(gz)).stdout)
    from_stdin = json.loads(cli("replay", "--json", "--no-rules", "-",
                                stdin=plain.read_text()).stdout)
    assert from_gz["counts"] == from_stdin["counts"]
    assert from_gz["lines"]["read"] == len(plain.read_text().splitlines())


def test_files_are_read_in_chronological_order(tmp_path: Path) -> None:
    older = tmp_path / "mail.log.1"
    newer = tmp_path / "mail.log"
    older.write_text("2026-03-01 10:00:00 1uA2bC-000000002Xy-1a2B <= a@b.example "
                     "H=x.example [192.0.2.1] P=esmtp S=100\n")
    newer.write_text("2026-03-02 10:00:00 1uA2bC-000000002Xy-1a2B => c@d.example "
                     "R=r T=t\n")
    doc = json.loads(cli("replay", "--json", "--no-rules", str(newer), str(older)).stdout)
    assert doc["files"] == [str(older), str(newer)]
    # The delivery in the newer file joins the arrival in the older one.
    assert doc["counts"]["recipient_domain"]["d.example"]["recipients"] == 1


def test_compare_shows_what_another_rule_set_decides_differently(tmp_path: Path) -> None:
    stricter = tmp_path / "strict.rules"
    stricter.write_text(
        "rule any_reject for client_ip:\n"
        "    when rejects in 1h > 0\n"
        "    add 100 points\n"
        "ladder client_ip:\n"
        "    at 50 points refuse for 1h\n")
    sample = str(SAMPLES / "sendmail-maillog.log")
    proc = cli("replay", "--json", "--warmup", "0", "--compare", str(stricter), sample)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    only_strict = {(d["key"], d["action"]) for d in doc["compare"]["only_compare"]}
    assert ("203.0.113.12", "refuse") in only_strict
    assert all(d["rules"] == ["any_reject"] for d in doc["compare"]["decisions"])
    text = cli("replay", "--warmup", "0", "--compare", str(stricter), sample).stdout
    assert f"only with {stricter}" in text


def test_explain_a_single_line() -> None:
    proc = cli("explain", "--line", LINE)
    assert proc.returncode == 0
    assert "Rejection" in proc.stdout and "ip=192.0.2.4" in proc.stdout
    assert "reason=relay_denied" in proc.stdout


def test_explain_says_why_a_line_gives_nothing() -> None:
    proc = cli("explain", "--line", "Jul 12 07:47:49 saturn CRON[1]: (root) CMD (x)",
               "--line", "Jul 12 07:47:49 saturn postfix/smtpd[1]: frobnicated the queue")
    assert "program 'CRON' is not read by any MTA parser" in proc.stdout
    assert "UNPARSED" in proc.stdout
    assert proc.returncode == 1  # an MTA line was not understood


def test_check_describes_good_rules_and_points_at_errors(tmp_path: Path) -> None:
    good = cli("check", str(RULES))
    assert good.returncode == 0, good.stderr
    assert "ip_new_burst" in good.stdout
    bad = tmp_path / "bad.rules"
    bad.write_text("rule x for client_ip:\n    when mesages in 10m > 5\n    add 1 points\n")
    proc = cli("check", str(bad))
    assert proc.returncode == 1
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"{bad}:2:10:"), proc.stderr
    assert "^" in proc.stderr


@pytest.mark.parametrize(
    ("args", "status", "text"),
    [
        (["replay", "/nonexistent/mail.log"], 1, "cannot read /nonexistent/mail.log"),
        (["replay", "--timezone", "Mars/Base", "/etc/hostname"], 2, "Mars/Base"),
        (["replay", "--warmup", "soon", "/etc/hostname"], 2, "not a duration"),
        (["replay", "--parsers", "qmail", "/etc/hostname"], 2, "unknown parser"),
    ],
)
def test_bad_input_is_one_clear_line(args: list[str], status: int, text: str) -> None:
    proc = cli(*args)
    assert proc.returncode == status
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert text in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_rules_file_in_replay_is_refused_with_its_position(tmp_path: Path) -> None:
    bad = tmp_path / "bad.rules"
    bad.write_text("ladder client_ip:\n    at 10 points explode\n")
    proc = cli("replay", "--rules", str(bad), str(SAMPLES / "exim-mainlog.log"))
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"{bad}:2:")
