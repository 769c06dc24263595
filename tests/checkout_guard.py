"""Fails the test session when it changed the checkout: a test that writes ``demo_output/`` (or anything else)
there would overwrite a user's own results and make the next run depend on the last.

Before and after the session it records every file git reports as untracked, ignored or modified (sizes and
mtimes, walking into untracked and ignored folders), less what Python and pytest write by design:
``__pycache__`` (bytecode), ``.pytest_cache`` and the virtual environments ``.venv*``. Any path that appeared,
changed or vanished fails the run, named. The hooks at the bottom are imported by ``tests/conftest.py``;
``tests/test_hermetic.py`` loads them in a scratch repository to show that they catch a write.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

EXEMPT_PARTS = ("__pycache__", ".pytest_cache")
EXEMPT_PREFIXES = (".venv",)

Snapshot = dict[str, tuple[int, int]]


def checkout_root(start: Path) -> Path | None:
    """The git work tree holding ``start``, or None outside one (then there is nothing to guard)."""
    result = subprocess.run(
        ["git", "-C", str(start), "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=False
    )
    return Path(result.stdout.strip()) if result.returncode == 0 else None


def _exempt(relative: str) -> bool:
    parts = Path(relative).parts
    return not parts or parts[0].startswith(EXEMPT_PREFIXES) or any(part in EXEMPT_PARTS for part in parts)


def _reported_paths(root: Path) -> list[str]:
    """git's untracked, ignored and modified entries (folders as one entry each)."""
    output = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain=v1", "-z", "--ignored"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    entries = [entry for entry in output.split("\0") if entry]
    paths, skip_next = [], False
    for entry in entries:
        if skip_next:  # a rename's second field: its old name
            skip_next = False
            continue
        status, path = entry[:2], entry[3:]
        skip_next = status[0] in "RC"
        paths.append(path.rstrip("/"))
    return paths


def snapshot(root: Path) -> Snapshot:
    """(size, mtime in ns) of every non-exempt untracked, ignored or modified file under ``root``."""
    files: Snapshot = {}
    for reported in _reported_paths(root):
        if _exempt(reported):
            continue
        path = root / reported
        if path.is_dir() and not path.is_symlink():
            for folder, dirnames, filenames in os.walk(path):
                relative_folder = Path(folder).relative_to(root)
                dirnames[:] = [name for name in dirnames if not _exempt(str(relative_folder / name))]
                for name in filenames:
                    _record(files, root, relative_folder / name)
        else:
            _record(files, root, Path(reported))
    return files


def _record(files: Snapshot, root: Path, relative: Path) -> None:
    try:
        stat = (root / relative).lstat()
    except FileNotFoundError:  # a deleted tracked file: git reports it, there is nothing to stat
        files[str(relative)] = (-1, -1)
        return
    files[str(relative)] = (stat.st_size, stat.st_mtime_ns)


def changes(before: Snapshot, after: Snapshot) -> list[str]:
    """One line per path that appeared (+), changed (~) or vanished (-), sorted."""
    lines = [f"+ {path}" for path in after.keys() - before.keys()]
    lines += [f"- {path}" for path in before.keys() - after.keys()]
    lines += [f"~ {path}" for path in before.keys() & after.keys() if before[path] != after[path]]
    return sorted(lines, key=lambda line: line[2:])


def report(root: Path, lines: list[str], limit: int = 30) -> str:
    shown = "\n".join(f"  {line}" for line in lines[:limit])
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return (
        f"The test session changed the checkout {root} ({len(lines)} path(s); tests must work in temporary "
        f"directories, see tests/conftest.py):\n{shown}{more}"
    )


# -- the pytest hooks ------------------------------------------------------------------------------------------
_BEFORE = pytest.StashKey[tuple[Path, Snapshot]]()
_FOUND = pytest.StashKey[str]()


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")  # the controller guards the whole session, after every worker ended


def pytest_sessionstart(session: pytest.Session) -> None:
    root = checkout_root(session.config.rootpath)
    if root is not None and not _is_xdist_worker(session.config):
        session.config.stash[_BEFORE] = (root, snapshot(root))


def pytest_sessionfinish(session: pytest.Session) -> None:
    if _BEFORE not in session.config.stash:
        return
    root, before = session.config.stash[_BEFORE]
    lines = changes(before, snapshot(root))
    if lines:
        session.config.stash[_FOUND] = report(root, lines)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if _FOUND in config.stash:
        terminalreporter.section("checkout guard", sep="=", red=True, bold=True)
        terminalreporter.line(config.stash[_FOUND], red=True)
