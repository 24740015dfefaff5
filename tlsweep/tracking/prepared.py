"""A new SQLite store's schema, made by a second process while the command loads its libraries and Keras.

MLflow makes a new SQLite store by running its schema migrations: about 2 to 2.5 s of one core, in the
critical path of a first sweep in a folder. The `tlsweep` command starts a child process that makes the schema
in a hidden file beside the store (`.mlflow.db.<pid>.new`) while it loads, on the core that loading leaves
idle. `Store.open`, under the store's file lock and only once every job has been checked, links that file into
place if the store still does not exist (a link never overwrites), then deletes it. A command that fails
before then, or is interrupted, leaves no store and no hidden file, as before; a child that failed leaves
MLflow to make the schema itself.

No mlflow here: the child (`python -m tlsweep.tracking.prepared URI`) makes the schema through `store.Store`.
`store` loads no stage, scikit-learn or backend as it is imported, so the child loads little more than MLflow and
has the schema ready by the time the command has checked its jobs (docs/performance.md, section 7).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

SQLITE = "sqlite:///"
URI_KEY = "tracking.uri"
WAIT_SECONDS = 300  # a child still making the schema by then is stopped, and MLflow makes it instead
LEFTOVERS = ("-journal", "-wal", "-shm")  # SQLite's files beside a database it did not close cleanly


@dataclass
class Preparation:
    """A child process making the schema of the store at `target` in `scratch`."""

    target: Path
    scratch: Path
    process: subprocess.Popen

    def finished(self) -> bool:
        """Whether the child made the whole schema: exit status 0, and SQLite left no journal beside it."""
        try:
            status = self.process.wait(timeout=WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            return False
        return status == 0 and self.scratch.is_file() and not any(_beside(self.scratch, end).exists()
                                                                     for end in LEFTOVERS)

    def remove(self) -> None:
        """Stop the child if it still runs, and delete what it wrote."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for path in (self.scratch, *(_beside(self.scratch, end) for end in LEFTOVERS)):
            path.unlink(missing_ok=True)


_pending: Optional[Preparation] = None


def begin(overrides: Sequence[str], cwd: Path) -> None:
    """Start making the schema of the store the command will open, if it is a SQLite file that does not exist
    yet in a folder that does. The command's `tracking.uri` override, else $MLFLOW_TRACKING_URI, else
    ./mlflow.db; a swept or unparsable `tracking.uri` starts nothing (Hydra reports what is wrong with it)."""
    global _pending
    target = sqlite_path(store_uri(overrides, cwd))
    if _pending is not None or target is None or target.exists() or not target.parent.is_dir():
        return
    scratch = target.with_name(f".{target.name}.{os.getpid()}.new")
    try:
        process = subprocess.Popen([sys.executable, "-m", __name__, f"{SQLITE}{scratch.as_posix()}"], cwd=cwd,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:  # no process to spare: MLflow makes the schema when the store is opened, as without this
        return
    _pending = Preparation(target=target, scratch=scratch, process=process)


def adopt(uri: str) -> None:
    """Under the store's lock, before MLflow opens `uri`: move the prepared schema into place if it is this
    store's, the store still does not exist and the child made the whole schema; delete it otherwise."""
    global _pending
    pending, _pending = _pending, None
    if pending is None:
        return
    try:
        if pending.target == sqlite_path(uri) and pending.finished():
            with contextlib.suppress(OSError):  # the store appeared meanwhile, or links are not supported: the
                os.link(pending.scratch, pending.target)  # store there or MLflow's own schema; never overwritten
    finally:
        pending.remove()


def discard() -> None:
    """As the command ends: a schema that was never adopted is deleted, its child stopped."""
    global _pending
    pending, _pending = _pending, None
    if pending is not None:
        pending.remove()


def store_uri(overrides: Sequence[str], cwd: Path) -> Optional[str]:
    """The tracking URI the command's overrides give, as `config.default_tracking_uri` resolves it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from tlsweep.config import default_tracking_uri

    try:
        parsed = OverridesParser.create().parse_overrides([o for o in overrides if not o.startswith("-")])
    except HydraException:
        return None
    chosen = [o for o in parsed if o.key_or_group == URI_KEY and not o.is_delete()]
    if any(o.is_sweep_override() for o in chosen):
        return None
    value = chosen[-1].value() if chosen else None
    return default_tracking_uri(value if isinstance(value, str) else None, cwd)


def sqlite_path(uri: Optional[str]) -> Optional[Path]:
    """The file of a `sqlite:///` URI without query options, absolute; None for any other store."""
    if not uri or not uri.startswith(SQLITE) or "?" in uri:
        return None
    return Path(uri.removeprefix(SQLITE)).absolute()


def _beside(path: Path, ending: str) -> Path:
    return path.with_name(path.name + ending)


def main() -> None:
    """The child: make the schema of the SQLite store at argv[1] (MLflow creates it on first use)."""
    os.nice(10)  # where no core is idle, the command's own start goes first
    from tlsweep.tracking.store import Store  # the one module that talks to mlflow

    Store(sys.argv[1]).client.search_experiments(max_results=1)


if __name__ == "__main__":
    main()
