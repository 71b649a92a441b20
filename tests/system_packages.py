"""System software for the fixtures that need it (Slurm, PostgreSQL, headless Chromium):
Debian packages installed with apt-get, and a daemon stopped by its pid."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence


def apt_install(packages: Sequence[str], timeout: float = 600) -> str | None:
    """Install Debian ``packages`` (no recommends; an ``apt-get update`` and one more try when
    the install fails). None when done, else why not, for the caller's error or skip."""
    if os.geteuid() != 0:
        return "installing it needs root"
    apt = shutil.which("apt-get")
    if apt is None:
        return "there is no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "--no-install-recommends", *packages]

    def run(cmd: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)

    try:
        result = run(install)
        if result.returncode != 0:
            run([apt, "update"])
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
