"""atomic_folder / atomic_write_text under kill -9 and concurrent readers (edgellm.artifact).

Writers are real child processes that SIGKILL themselves at a chosen instant; the next writer of the same output
must find the old folder (or restore it) and clear what the dead one left.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from edgellm import artifact
from edgellm.artifact import atomic_folder, atomic_write_text

ROOT = Path(__file__).resolve().parents[2]


def _owned(_: Path) -> bool:
    return True


def _write(folder: Path, version: str, files: int = 3) -> None:
    for i in range(files):
        (folder / f"part-{i}.txt").write_text(f"{version}-{i}")


def _version(folder: Path) -> str:
    """The version every file of a folder written by `_write` holds; AssertionError for a mixed (half) folder."""
    seen = {p.read_text().rsplit("-", 1)[0] for p in folder.iterdir()}
    assert len(seen) == 1, f"{folder} mixes versions {seen}"
    return seen.pop()


def _run_writer(out: Path, body: str, env: dict[str, str] | None = None) -> int:
    """Run a child python that writes `out` with atomic_folder; returns its exit code (-9: killed)."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from edgellm import artifact
        from edgellm.artifact import atomic_folder
        out = Path({str(out)!r})
        def write(folder, version):
            for i in range(3):
                (folder / f"part-{{i}}.txt").write_text(f"{{version}}-{{i}}")
    """) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode in (0, -signal.SIGKILL), proc.stderr
    return proc.returncode


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_kill_9_before_the_swap_keeps_the_old_folder_and_the_next_writer_clears_it(tmp_path: Path) -> None:
    out = tmp_path / "model"
    with atomic_folder(out, owned=_owned) as stage:
        _write(stage, "old")
    code = _run_writer(out, """
        from edgellm._faults import fault_scope
        with fault_scope("test"), atomic_folder(out, overwrite=True, owned=lambda p: True) as stage:
            write(stage, "new")
    """, env={"EDGELLM_FAULT": "test:staged"})
    assert code == -signal.SIGKILL
    assert _version(out) == "old"
    stale = [p.name for p in tmp_path.iterdir() if p.name != "model"]
    assert len(stale) == 1 and stale[0].startswith(".edgellm-staging-model-")
    with atomic_folder(out, overwrite=True, owned=_owned) as stage:
        _write(stage, "newer")
    assert _version(out) == "newer"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_writer_killed_between_the_two_renames_has_the_old_folder_restored(tmp_path: Path) -> None:
    """Without renameat2 (other OS, some file systems) the old folder is moved aside, then the new one in; a kill
    between the two leaves no output at all, until the next writer of that output renames the old one back."""
    out = tmp_path / "model"
    with atomic_folder(out, owned=_owned) as stage:
        _write(stage, "old")
    code = _run_writer(out, """
        artifact._exchange = lambda a, b: False          # no atomic swap here
        real_replace = os.replace
        def replace(src, dst):
            real_replace(src, dst)
            if Path(dst).name.startswith(".edgellm-replaced-"):
                os.kill(os.getpid(), signal.SIGKILL)     # old folder moved aside; new one not yet in place
        artifact.os.replace = replace
        with atomic_folder(out, overwrite=True, owned=lambda p: True) as stage:
            write(stage, "new")
    """)
    assert code == -signal.SIGKILL
    assert not out.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(".edgellm-replaced-model-")]
    assert len(aside) == 1 and _version(aside[0]) == "old"

    # a writer that fails still restores the old folder first, and leaves it there
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_folder(out, overwrite=True, owned=_owned) as stage:
            raise RuntimeError("disk full")
    assert _version(out) == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_without_rename_exchange_the_fallback_publishes_and_removes_the_old(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(artifact, "_exchange", lambda a, b: False)
    out = tmp_path / "model"
    for version in ("v1", "v2", "v3"):
        with atomic_folder(out, overwrite=True, owned=_owned) as stage:
            _write(stage, version)
        assert _version(out) == version
        assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_stale_folders_of_live_writers_and_of_other_outputs_are_left_alone(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".edgellm-staging-model-{sleeper.pid}-0123abcd"  # a live process is writing it
        dead = tmp_path / f".edgellm-staging-model-{_dead_pid()}-0123abcd"
        other = tmp_path / f".edgellm-staging-model-2-{_dead_pid()}-0123abcd"  # output "model-2", not "model"
        odd = tmp_path / ".edgellm-staging-model-notapid"  # not written by atomic_folder: never touched
        for folder in (live, dead, other, odd):
            folder.mkdir()
        with atomic_folder(tmp_path / "model", owned=_owned) as stage:
            _write(stage, "v1")
        assert live.exists() and other.exists() and odd.exists()
        assert not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_output_path_never_goes_missing_during_200_replacements(tmp_path: Path) -> None:
    """With renameat2 the swap is one step: a reader resolving the output path always finds a folder. (A reader
    that already holds the old folder open can see its files removed as it is cleared: not promised.)"""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    if not artifact._exchange(tmp_path / "a", tmp_path / "b"):  # pragma: no cover - other kernels / file systems
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here; the fallback has a gap by design")
    out = tmp_path / "model"
    with atomic_folder(out, owned=_owned, durable=False) as stage:
        _write(stage, "v0", files=8)
    missing: list[int] = []
    stats = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal stats
        while not done.is_set():
            try:
                if not stat.S_ISDIR(os.stat(out).st_mode):
                    missing.append(stats)
            except FileNotFoundError:
                missing.append(stats)
            stats += 1

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for version in range(1, 201):
            with atomic_folder(out, overwrite=True, owned=_owned, durable=False) as stage:
                _write(stage, f"v{version}", files=8)
            assert _version(out) == f"v{version}"
    finally:
        done.set()
        watcher.join()
    assert stats > 200 and missing == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "model"]


def test_atomic_write_text_killed_mid_write_keeps_the_old_text(tmp_path: Path) -> None:
    target = tmp_path / "stage.json"
    atomic_write_text(target, '{"v": 1}')
    code = _run_writer(tmp_path / "unused", f"""
        from edgellm.artifact import atomic_write_text
        real_replace = os.replace
        def replace(src, dst):
            os.kill(os.getpid(), signal.SIGKILL)          # temporary file written, not yet renamed
        artifact.os.replace = replace
        atomic_write_text({str(target)!r}, '{{"v": 2}}')
    """)
    assert code == -signal.SIGKILL
    assert target.read_text() == '{"v": 1}'
    leftover = [p.name for p in tmp_path.iterdir() if p.name != "stage.json"]
    assert len(leftover) == 1 and leftover[0].startswith(".stage.json.") and leftover[0].endswith(".tmp")
    other = tmp_path / f".other.json.{_dead_pid()}-0123abcd.tmp"  # another file's leftover: not ours to remove
    other.write_text("x")
    atomic_write_text(target, '{"v": 3}')  # the next writer of the same file clears the dead one's temporary
    assert target.read_text() == '{"v": 3}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "stage.json"]


def test_a_stage_whose_stage_json_write_was_killed_finishes_once_and_is_then_reused(tmp_path: Path) -> None:
    from edgellm.pipeline import StageCache, stage_key

    lines: list[str] = []
    cache = StageCache(tmp_path, lines.append)
    folder = tmp_path / f"s-{stage_key({'stage': 's', 'x': 1})}"
    folder.mkdir()
    (folder / "out.txt").write_text("half")  # what the killed run left: its output and stage.json's temporary
    (folder / f".stage.json.{_dead_pid()}-0123abcd.tmp").write_text("{")
    calls: list[int] = []

    def stage(f: Path) -> dict:
        calls.append(1)
        (f / "out.txt").write_text("done")
        return {"value": 3}

    first = cache.run("s", {"x": 1}, stage)
    assert first.folder == folder and not first.cached and first.metrics == {"value": 3}
    assert sorted(p.name for p in folder.iterdir()) == ["out.txt", "stage.json"]
    second = cache.run("s", {"x": 1}, stage)
    assert second.cached and second.metrics == {"value": 3} and len(calls) == 1
    assert lines[0].startswith("[s] resuming in") and lines[-1].startswith("[s] unchanged since")
