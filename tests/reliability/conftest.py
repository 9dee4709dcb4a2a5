"""Run a snippet in a fresh interpreter, for cases where a bug could crash the process.

A reliability case whose failure mode is a segfault, an abort or a hang runs here: the
parent test then asserts the child exited normally and printed the documented error.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str

    @property
    def crashed(self) -> bool:
        """Killed by a signal (negative code) or by an abort/sanitizer exit."""
        return self.returncode < 0 or self.returncode in (134, 139)


def run_isolated(
    source: str, *, timeout: float = 120.0, env: dict[str, str] | None = None
) -> Outcome:
    """Run ``source`` (dedented) with ``python -c`` and return its exit and output.

    The snippet reports by printing; by convention it prints ``OK`` last when every
    expectation inside it held, and ``RAISED <ExceptionType>: <message>`` for the error
    it was meant to provoke.
    """
    child_env = dict(os.environ)
    if env:
        child_env.update(env)
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env,
        check=False,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)


def assert_clean_exit(outcome: Outcome) -> None:
    """The child ended normally (exit 0) — no signal, no abort, no traceback."""
    assert not outcome.crashed, (
        f"child crashed with code {outcome.returncode}:\n{outcome.stderr[-3000:]}"
    )
    assert outcome.returncode == 0, (
        f"child exited {outcome.returncode}:\n{outcome.stdout}\n"
        f"{outcome.stderr[-3000:]}"
    )


@pytest.fixture
def isolated() -> Callable[..., Outcome]:
    """``isolated(source, timeout=120, env=None)``: run a snippet in a fresh
    interpreter and return its :class:`Outcome` (see :func:`run_isolated`)."""
    return run_isolated


@pytest.fixture
def clean_exit() -> Callable[[Outcome], None]:
    """``clean_exit(outcome)``: assert the child exited 0 without a crash."""
    return assert_clean_exit
