"""The README's commands, as a newcomer types them, from an empty folder that is not the clone: each one the
README shows runs (with the local data and random weights this machine has in place of downloads, the way
the README's Offline use section says to pass them)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMMANDS = ("tlsweep", "tlsweep-layers", "tlsweep-compare")


def readme_commands(root: Path) -> list[list[str]]:
    """Every command of the README's bash blocks that is one of tlsweep's (`.venv/bin/tlsweep` too, after `&&`),
    continuation lines joined, comments left out."""
    text = (root / "README.md").read_text()
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and Path(words[0]).name in COMMANDS:
                    found.append([Path(words[0]).name, *words[1:]])
    return found


def _script(name: str) -> str:
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).exists():
        pytest.skip(f"{name} is not installed as a command here (pip install -e . installs it)")
    return found


def test_the_readme_shows_each_command(project_root):
    shown = {words[0] for words in readme_commands(project_root)}
    assert set(COMMANDS) - {"tlsweep-compare"} <= shown


@pytest.mark.slow  # every command of the README in turn: several sweeps (CI also runs the demo from the wheel)
def test_every_readme_command_runs_from_any_folder(tmp_path, project_root, image_folder_writer, cifar_writer):
    """The README's own lines, run by their console scripts in a folder outside the clone."""
    work = tmp_path / "newcomer"
    work.mkdir()
    image_folder_writer(work / "birds", classes=("robin", "wren"), per_class=8)
    cifar = cifar_writer(tmp_path / "cifar")
    local = {"tlsweep": ["model.weights=null", "model.batch_size=16", "data.val_fraction=0.25"]}
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "TLSWEEP_CACHE_DIR": str(tmp_path / "cache")}
    ran = []
    for words in readme_commands(project_root):
        command, args = words[0], words[1:]
        if command == "tlsweep" and not any(arg.startswith(("data=", "preset=")) for arg in args):
            args = [*args, f"data.path={cifar}"]  # CIFAR-10 from a local copy, as Offline use says
        if command == "tlsweep" and any(arg.startswith(("data.path=/data", "model.weights=/data")) for arg in args):
            args = [arg for arg in args if not arg.startswith(("data.path=/data", "model.weights=/data"))]
            args.append(f"data.path={cifar}")
        if "preset=demo" in args:
            args.append("layer=block4_pool,block5_pool")  # two of the demo's three cuts: the same path, quicker
        result = subprocess.run([_script(command), *args, *local.get(command, [])], cwd=work, capture_output=True,
                                text=True, timeout=900, env={**os.environ, **env})
        assert result.returncode == 0, (words, result.stdout[-2000:], result.stderr[-2000:])
        assert "Traceback" not in result.stdout + result.stderr, words
        ran.append(command)
    assert ran.count("tlsweep") >= 3 and "tlsweep-layers" in ran
    assert not (work / "outputs").exists() and not (work / "multirun").exists()  # Hydra's folders go elsewhere
    compared = subprocess.run([_script("tlsweep-compare"), "--out", "comparison"], cwd=work, capture_output=True,
                              text=True, timeout=600, env={**os.environ, **env})
    assert compared.returncode == 0 and (work / "comparison" / "comparison.csv").stat().st_size > 0
