"""The suite stays out of the checkout: tests run in temporary directories, and the checkout guard
(``checkout_guard.py``) fails a session that wrote there anyway. The guard is shown failing on a scratch
repository, in a pytest of its own: a write into the real checkout would fail this very session."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from .helpers import REPO

TESTS = Path(__file__).parent


def test_tests_and_their_home_are_outside_the_checkout(tmp_path):
    for path in (Path.cwd(), Path(os.environ["HOME"])):
        assert path != REPO and REPO not in path.parents, f"{path} is inside the checkout {REPO}"
    assert Path.cwd() != tmp_path  # a directory of its own: relative writes never land among a test's files


def scratch_repository(root: Path, test_body: str) -> Path:
    """A git repository with the guard's hooks in its conftest, a demo's output (ignored) and one test."""
    root.mkdir(exist_ok=True)
    for command in (["init", "-q"], ["config", "user.email", "t@t"], ["config", "user.name", "t"]):
        subprocess.run(["git", "-C", str(root), *command], check=True)
    (root / ".gitignore").write_text("/demo_output/\n")
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "demo_output" / "run").mkdir(parents=True)
    (root / "demo_output" / "run" / "summary.json").write_text('{"status": "finished"}')
    tests = root / "tests"
    tests.mkdir()
    (tests / "conftest.py").write_text(
        f"import sys\nsys.path.insert(0, {str(TESTS)!r})\n"
        "from checkout_guard import pytest_sessionfinish, pytest_sessionstart, pytest_terminal_summary\n"
    )
    (tests / "test_it.py").write_text(
        "from pathlib import Path\nROOT = Path(__file__).resolve().parents[1]\n\n\ndef test_it():\n"
        + textwrap.indent(textwrap.dedent(test_body), "    ")
    )
    subprocess.run(["git", "-C", str(root), "add", "."], check=True)
    subprocess.run(["git", "-C", str(root), "commit", "-q", "-m", "scratch"], check=True)
    return root


def run_pytest(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_guard_names_what_a_test_wrote_into_the_checkout(tmp_path):
    root = scratch_repository(
        tmp_path,
        """
        (ROOT / "demo_output" / "x").write_text("a test's file")
        (ROOT / "demo_output" / "run" / "summary.json").write_text('{"status": "failed"}')
        (ROOT / "tests" / "__pycache__").mkdir(exist_ok=True)  # bytecode: exempt
        (ROOT / "tests" / "__pycache__" / "y.pyc").write_bytes(b"")
        """,
    )
    result = run_pytest(root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 passed" in result.stdout  # the test itself passed: the guard failed the session
    assert "checkout guard" in result.stdout and "changed the checkout" in result.stdout
    assert "+ demo_output/x" in result.stdout
    assert "~ demo_output/run/summary.json" in result.stdout
    assert "__pycache__" not in result.stdout


def test_the_guard_passes_a_session_that_writes_only_into_temporary_directories(tmp_path):
    root = scratch_repository(
        tmp_path / "repo",
        """
        import tempfile
        with tempfile.TemporaryDirectory() as scratch:
            (Path(scratch) / "x").write_text("fine")
        assert (ROOT / "demo_output" / "run" / "summary.json").read_text()  # reading is fine too
        """,
    )
    result = run_pytest(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "checkout guard" not in result.stdout
