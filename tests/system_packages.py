"""System software for the fixtures that need it (Slurm, PostgreSQL, headless Chromium):
Debian packages installed with apt-get, a daemon stopped by its pid, and what a test does
when a component cannot be had (skip on a developer's machine, fail in CI)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """Whether this is a CI run: CI services (and .ci/run) set ``CI=true``."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(component: str, reason: object) -> NoReturn:
    """End a test whose system ``component`` could not be installed or started: a skip that
    says why, except in CI, where the component is part of what is tested and a broken
    install (a mirror hiccup, a renamed package) must not turn into a green run."""
    message = f"{component} unavailable: {reason}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: in CI a missing system component fails the test)",
                    pytrace=False)
    pytest.skip(message)


def apt_install(packages: Sequence[str], timeout: float = 600) -> str | None:
    """Install Debian ``packages`` (no recommends; an ``apt-get update`` and one more try when
    the install fails). None when done, else why not, for the caller's error or skip."""
    if os.geteuid() != 0:
        return "installing it needs root"
    apt = shutil.which("apt-get")
    if apt is None:
        return "there is no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # another install (a parallel test's, the system's) holds dpkg's lock: wait for it
    lock_wait = ["-o", "DPkg::Lock::Timeout=300"]
    install = [apt, *lock_wait, "install", "-y", "--no-install-recommends", *packages]

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)

    try:
        result = run(install)
        if result.returncode != 0:
            run([apt, *lock_wait, "update"])
            result = run(install)
    except subprocess.TimeoutExpired as error:
        return f"apt-get timed out installing {' '.join(packages)}: {error}"
    if result.returncode != 0:
        return (f"apt-get install {' '.join(packages)} failed (rc {result.returncode}): "
                f"{(result.stdout + result.stderr)[-1500:]}")
    return None


def stop_pid(pid: int, timeout: float = 15) -> None:
    """SIGTERM, up to ``timeout`` s for the process to go, then SIGKILL and as long again."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
