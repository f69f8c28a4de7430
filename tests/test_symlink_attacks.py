"""A local user must not steer root's writes with symlinks (issue 11, item 1).

Why: the map actions run as root in directories like /etc/postfix/smtpguard. If another
user can create names there, they can plant a link at a name root is about to open
(``.smtpguard.lock``, postmap's ``X.tmp.db``) and make root create, truncate or chmod a
file of their choice. The attacker here is real: a forked child that drops to uid
65534 and plants links while root works. The victim file must be unchanged (bytes and
mode) and the tool must refuse with one line naming the directory and the fix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from smtpguard_logwatch.actions import files, safefs
from smtpguard_logwatch.actions.base import ActionError
from smtpguard_logwatch.actions.exim_files import EximFilesAction
from smtpguard_logwatch.actions.postfix_maps import PostfixMapsAction
from smtpguard_logwatch.actions.sendmail_access import SendmailAccessAction
from smtpguard_logwatch.engine.ledger import Decision

NOBODY = 65534
REAL_POSTMAP = shutil.which("postmap") or shutil.which("postmap", path="/usr/sbin")
FAKE_MAKEMAP = """#!{python}
import sys
src = sys.argv[-1]
data = sys.stdin.buffer.read()
with open(src + ".db", "wb") as fh:  # by name, as the real makemap does
    fh.write(b"DB" + data)
"""

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a second uid)")


def decision(key: str = "192.0.2.7", action: str = "refuse", ident: int = 1) -> Decision:
    now = time.time()
    return Decision(now, "client_ip", key, action, now + 3600, ("test",), id=ident)


@pytest.fixture
def arena() -> Iterator[Path]:
    """A root-owned 0755 directory that uid 65534 can reach (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="smtpguard-arena."))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victim(arena: Path) -> Path:
    path = arena / "victim"
    path.write_bytes(b"root's precious file\n")
    path.chmod(0o600)
    return path


def snapshot(path: Path) -> tuple[bytes, int, int]:
    st = path.stat()
    return path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_ino


@pytest.fixture
def makemap(arena: Path) -> str:
    path = arena / "makemap"
    path.write_text(FAKE_MAKEMAP.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def postfix(directory: Path) -> PostfixMapsAction:
    """The real postmap, with an empty private main.cf beside the maps."""
    if REAL_POSTMAP is None:
        pytest.skip("postmap not installed (apt-get install postfix)")
    config = directory.parent / "postfix-config"
    config.mkdir(exist_ok=True)
    (config / "main.cf").write_text("")
    return PostfixMapsAction(directory=str(directory), map_type="hash",
                             config_directory=str(config), postmap=REAL_POSTMAP)


def exim(directory: Path) -> EximFilesAction:
    return EximFilesAction(directory=str(directory))


def sendmail(directory: Path, makemap: str) -> SendmailAccessAction:
    return SendmailAccessAction(access_file=str(directory / "smtpguard.access"),
                                admin_access="", output=str(directory / "smtpguard-merged"),
                                makemap=makemap)


def attacker(directory: Path, victim: Path, seconds: float) -> int:
    """Fork a uid-65534 process that links every name root creates in ``directory``
    (and the lock names) to ``victim``, as fast as it can."""
    pid = os.fork()
    if pid:
        return pid
    try:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
        deadline = time.monotonic() + seconds
        planted: set[str] = set()
        while time.monotonic() < deadline:
            try:
                names = os.listdir(directory)
            except OSError:
                continue
            wanted = {".smtpguard.lock", "smtpguard.access.lock"}
            for name in names:
                if ".tmp" in name and not name.endswith((".db", ".lmdb", ".cdb")):
                    wanted.add(name + ".db")
            for name in wanted - planted:
                try:
                    os.symlink(victim, directory / name)
                    planted.add(name)
                except OSError:
                    pass
    finally:
        os._exit(0)


def stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@needs_root
@pytest.mark.parametrize("kind", ["postfix", "exim", "sendmail"])
def test_world_writable_directory_is_refused_while_an_attacker_plants_links(
        kind: str, arena: Path, victim: Path, makemap: str) -> None:
    maps = arena / "maps"
    maps.mkdir()
    maps.chmod(0o777)
    action = {"postfix": lambda: postfix(maps), "exim": lambda: exim(maps),
              "sendmail": lambda: sendmail(maps, makemap)}[kind]()
    before = snapshot(victim)
    pid = attacker(maps, victim, 3.0)
    try:
        time.sleep(0.2)
        errors = []
        for n in range(5):
            try:
                action.apply(decision(f"192.0.2.{n + 1}", ident=n + 1))
            except ActionError as exc:
                errors.append(str(exc))
    finally:
        stop(pid)
    assert snapshot(victim) == before
    assert len(errors) == 5
    assert "\n" not in errors[0]
    assert str(maps) in errors[0] and f"chmod go-w {maps}" in errors[0]
    # nothing of ours was written there
    assert not [p for p in maps.iterdir() if not p.is_symlink()]


@needs_root
@pytest.mark.parametrize("kind", ["postfix", "exim", "sendmail"])
def test_directory_owned_by_another_user_is_refused(kind: str, arena: Path, makemap: str
                                                    ) -> None:
    maps = arena / "maps"
    maps.mkdir(mode=0o755)
    os.chown(maps, NOBODY, NOBODY)
    action = {"postfix": lambda: postfix(maps), "exim": lambda: exim(maps),
              "sendmail": lambda: sendmail(maps, makemap)}[kind]()
    with pytest.raises(ActionError, match=rf"owned by uid {NOBODY}.*Fix: chown root {maps}"):
        action.apply(decision())
    assert list(maps.iterdir()) == []


@needs_root
def test_a_writable_parent_directory_is_refused(arena: Path) -> None:
    """As OpenSSH does: a parent another user can write lets them swap the directory."""
    parent = arena / "etc"
    parent.mkdir()
    parent.chmod(0o775)
    with pytest.raises(ActionError, match=rf"{parent} \(above .*maps\) is writable by group"):
        exim(parent / "maps").apply(decision())
    assert not (parent / "maps").exists()


@pytest.mark.parametrize("kind", ["postfix", "exim", "sendmail"])
def test_planted_lock_link_is_never_followed(kind: str, arena: Path, makemap: str) -> None:
    """A link left at the lock name (say from a time the directory was writable) to a
    file that does not exist yet: root must not create that file (think /etc/nologin)."""
    maps = arena / "maps"
    maps.mkdir(mode=0o755)
    target = arena / "nologin"
    lock = "smtpguard.access.lock" if kind == "sendmail" else ".smtpguard.lock"
    (maps / lock).symlink_to(target)
    action = {"postfix": lambda: postfix(maps), "exim": lambda: exim(maps),
              "sendmail": lambda: sendmail(maps, makemap)}[kind]()
    with pytest.raises(ActionError, match="symbolic link"):
        action.apply(decision())
    assert not target.exists()


def test_built_maps_are_made_in_a_private_directory(arena: Path) -> None:
    """postmap/makemap write X.db next to their input by name: the input is in a fresh
    0700 directory nobody else can enter, never at a name in the map directory."""
    maps = arena / "maps"
    maps.mkdir(mode=0o755)
    seen = {}

    def build(source: str) -> str:
        stage = os.path.dirname(source)
        st = os.lstat(stage)
        seen.update(stage=stage, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid)
        Path(source + ".db").write_bytes(b"db")
        return source + ".db"

    files.write_built(str(maps / "m"), b"k v\n", str(maps / "m.db"), build)
    assert os.path.dirname(seen["stage"]) == str(maps) and seen["mode"] == 0o700
    assert seen["uid"] == os.geteuid()
    assert not os.path.exists(seen["stage"])  # removed afterwards
    assert (maps / "m.db").read_bytes() == b"db" and (maps / "m").read_bytes() == b"k v\n"
    assert stat.S_IMODE((maps / "m.db").stat().st_mode) == 0o644


def test_install_never_chmods_through_a_link(arena: Path, victim: Path) -> None:
    """The old code did os.chmod(tmp_db, 0o644): through a planted link, on the victim."""
    link = arena / "built.db"
    link.symlink_to(victim)
    before = snapshot(victim)
    with pytest.raises(OSError):
        files.install(str(link), str(arena / "live.db"))
    assert snapshot(victim) == before


def test_check_directory_accepts_a_root_sticky_parent_but_not_as_the_directory() -> None:
    """/tmp (1777, root) may be above our directory, since nobody else can rename what
    lies in it; it can never be the directory we write in."""
    with pytest.raises(safefs.UnsafePath, match="chmod go-w /tmp"):
        safefs.check_directory("/tmp")
    private = tempfile.mkdtemp()
    try:
        safefs.check_directory(private)
    finally:
        os.rmdir(private)


@needs_root
def test_control_socket_directory_writable_by_others_is_refused(arena: Path) -> None:
    """The daemon chmods its socket after bind: in a directory others can write, the
    socket could be swapped for a link to a file of their choice."""
    from smtpguard_logwatch.daemon.control import ControlServer

    run = arena / "run"
    run.mkdir()
    run.chmod(0o777)
    with pytest.raises(safefs.UnsafePath, match=rf"chmod go-w {run}"):
        ControlServer(str(run / "control.sock"), lambda command, args: {})
    assert list(run.iterdir()) == []


def test_xtables_lock_link_is_never_followed(arena: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """The iptables action creates the xtables lock if missing: never through a link."""
    from smtpguard_logwatch.actions.iptables import IptablesAction

    target = arena / "created-by-root"
    (arena / "xtables.lock").symlink_to(target)
    monkeypatch.setenv("XTABLES_LOCKFILE", str(arena / "xtables.lock"))
    action = IptablesAction(use_ipset=False)
    with pytest.raises(ActionError, match="symbolic link"), action._xtables_lock():
        pass
    assert not target.exists()
