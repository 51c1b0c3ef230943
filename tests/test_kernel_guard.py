"""The CI guard's list of kernel-dependent tests (tests/conftest.py) names tests that exist: a renamed test would
otherwise drop out of the guard without a word."""

import ast
from pathlib import Path

from conftest import KERNEL_TESTS

TESTS = Path(__file__).parent


def test_every_kernel_test_exists():
    for entry in KERNEL_TESTS:
        file, _, name = entry.partition("::")
        path = TESTS / file
        assert path.is_file(), entry
        if name:
            names = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
            assert name in names, entry
