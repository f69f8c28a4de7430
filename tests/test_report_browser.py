"""The HTML report rendered by a real browser (Debian's headless ``chromium``): the
screenshot shows charts, the page logs nothing to the console (no script ran, no CSP
violation, nothing fetched), and the hostile strings of the log are text in the DOM.
Skips without chromium (tests/install-test-deps.sh installs it)."""

from __future__ import annotations

import re
import shutil
import statistics
import subprocess
from pathlib import Path

import pytest
from png_pixels import grey_levels
from test_report_html import SASL, SENDER, Page, hostile_log

from smtpguard_logwatch.cli import main

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (tests/install-test-deps.sh "
                             "installs Debian's chromium package)")


def chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a file, console messages logged on stderr as CONSOLE lines."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--no-first-run", "--disable-extensions", "--enable-logging=stderr",
           "--log-level=0", f"--user-data-dir={tmp_path / 'profile'}", *args,
           page.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False,
                           cwd=tmp_path)


def console(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


def _report(tmp_path: Path, capsys) -> Path:
    out = tmp_path / "report.html"
    assert main(["replay", "--no-progress", "--html", str(out),
                 str(hostile_log(tmp_path / "mail.log"))]) == 0
    capsys.readouterr()
    return out


def test_console_check_sees_a_script_that_runs_and_one_the_policy_blocks(tmp_path) -> None:
    """The console check below can fail: a script's error and a CSP refusal show."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><script>nosuchfunction()</script></body></html>")
    assert any("nosuchfunction" in line for line in console(chromium(tmp_path, bad,
                                                                     "--dump-dom")))
    blocked = tmp_path / "blocked.html"
    blocked.write_text("<!DOCTYPE html><html><head><meta http-equiv=\"Content-Security-"
                       "Policy\" content=\"default-src 'none'\"></head><body><script>1</script>"
                       "</body></html>")
    assert any("Content Security Policy" in line
               for line in console(chromium(tmp_path, blocked, "--dump-dom")))


def test_report_renders_with_no_console_message_and_inert_hostile_strings(
        tmp_path, capsys) -> None:
    report = _report(tmp_path, capsys)
    result = chromium(tmp_path, report, "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    assert console(result) == []
    dom = Page(result.stdout)
    assert dom.all("script") == []
    # the document's title, as the browser left it: not rewritten by the user name
    assert re.search(r"<title>(.*?)</title>", result.stdout).group(1) == \
        "smtpguard-logwatch replay report"
    text = "".join(dom.text)
    assert SASL in text and SENDER in text


def test_report_screenshot_is_not_blank(tmp_path, capsys) -> None:
    report = _report(tmp_path, capsys)
    shot = tmp_path / "shot.png"
    result = chromium(tmp_path, report, "--window-size=900,1000", f"--screenshot={shot}")
    assert result.returncode == 0 and shot.exists(), result.stderr[-2000:]
    assert console(result) == []
    width, height, grey = grey_levels(shot.read_bytes())
    assert (width, height) == (900, 1000)
    inked = sum(1 for g in grey if g < 200) / len(grey)
    assert statistics.pvariance(grey) > 200 and inked > 0.01
    # and the charts' colours are there: not only text (a page of text has no mid-greys
    # in large areas; bars and lines of the timeline and sparklines do)
    assert sum(1 for g in grey if 60 < g < 200) > 2000
