"""The suite's own footprint: a passing test leaves nothing in the temporary folder (CI's disk filled up once)."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFTEST = f"""
import importlib.util

_spec = importlib.util.spec_from_file_location("clipkd_suite_conftest", {str(REPO / "tests" / "conftest.py")!r})
_suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_suite)
module_tmp = _suite.module_tmp
"""

TESTS = """
import pytest

@pytest.fixture(scope="module")
def shared(module_tmp):
    folder = module_tmp("shared")
    (folder / "{module}-module.bin").write_bytes(bytes(4096))
    return folder

def test_writes_its_own(tmp_path):
    (tmp_path / "{module}-test.bin").write_bytes(bytes(4096))

def test_reads_the_module_folder(shared):
    assert (shared / "{module}-module.bin").stat().st_size == 4096

def test_maybe_fails(tmp_path):
    (tmp_path / "{module}-evidence.bin").write_bytes(bytes(16))
    assert {fail} is False
"""


def _run(tmp_path: Path, fail: bool) -> list[str]:
    """Run two small test modules under the project's pytest settings, module ``b`` failing when ``fail``; the
    files left in the suite's base temporary folder."""
    suite = tmp_path / ("failing" if fail else "passing")
    suite.mkdir()
    (suite / "conftest.py").write_text(CONFTEST)
    for module, fails in (("a", False), ("b", fail)):
        (suite / f"test_{module}.py").write_text(TESTS.format(module=module, fail=fails))
    base = tmp_path / f"base-{fail}"
    env = {**os.environ, "CLIPKD_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(REPO / "pyproject.toml"),
           "--rootdir", str(suite), f"--basetemp={base}", str(suite)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == (1 if fail else 0), done.stdout + done.stderr
    return sorted(p.name for p in base.rglob("*") if p.is_file())


def test_passing_tests_leave_no_files_behind(tmp_path):
    assert _run(tmp_path, fail=False) == []


def test_a_failure_keeps_its_own_files_and_its_modules_for_debugging(tmp_path):
    assert _run(tmp_path, fail=True) == ["b-evidence.bin", "b-module.bin"]  # module a passed: nothing of it


def test_module_fixtures_take_their_folders_from_module_tmp():
    """``tmp_path_factory.mktemp`` folders outlive their module (only the session-wide data in conftest.py may)."""
    allowed = ("conftest.py", Path(__file__).name)
    users = [p.name for p in (REPO / "tests").glob("*.py")
             if p.name not in allowed and "tmp_path_factory" in p.read_text(encoding="utf-8")]
    assert users == []
