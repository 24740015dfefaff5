"""Where and from what a run came: machine, library versions, git commit, process."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Optional

import tlsweep
from tlsweep.config import PROJECT_ROOT
from tlsweep.tracking.names import Tag

PACKAGES = ("tensorflow", "keras", "scikit-learn", "mlflow", "numpy", "hydra-core", "jax", "torch")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu_names() -> str:
    if not shutil.which("nvidia-smi"):
        return "none"
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return ", ".join(names) if names else "none"


def git_commit() -> Optional[str]:
    if not (PROJECT_ROOT / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def process_id() -> str:
    """host:pid:start-time, so a later run can tell a dead process from a live one (pids get reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


def process_age() -> float:
    """Seconds since this process started: from the kernel's clock ticks where /proc has them, else since
    tlsweep was first imported (which misses the interpreter's own start, a few hundredths of a second)."""
    try:
        ticks = float(_start_time(os.getpid()))
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return max(uptime - ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError):
        return time.monotonic() - tlsweep.IMPORTED


def process_on_this_host(process: str) -> bool:
    """Whether a process recorded by `process_id` ran on this host, where `process_alive` can check it."""
    return process.split(":", 1)[0] == socket.gethostname()


def process_alive(process: str) -> bool:
    """Whether a process recorded by `process_id` on this host still runs; other hosts count as alive."""
    try:
        host, pid, started = process.split(":")
    except ValueError:
        return True
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return started in ("?", _start_time(int(pid)))


def machine_tags(name: Optional[str]) -> dict[str, str]:
    """Tags that say where a run ran and with which library versions."""
    import keras

    host = socket.gethostname()
    tags = {
        Tag.MACHINE: name or host,
        Tag.MACHINE_HOST: host,
        Tag.MACHINE_CPU: _cpu_name(),
        Tag.MACHINE_CORES: str(os.cpu_count()),
        Tag.MACHINE_GPU: _gpu_names(),
        Tag.MACHINE_PLATFORM: platform.platform(),
        Tag.MACHINE_PYTHON: platform.python_version(),
        Tag.KERAS_BACKEND: keras.backend.backend(),
    }
    for package in PACKAGES:
        try:
            tags[Tag.version(package)] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    commit = git_commit()
    if commit:
        tags[Tag.GIT_COMMIT] = commit
    return tags
