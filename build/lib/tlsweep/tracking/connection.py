"""Before a store is used: a server answers its health check, and a new SQLite file gets its schema once.

No mlflow here: `store.Store.open` calls these.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from contextlib import nullcontext
from pathlib import Path

from filelock import FileLock

from tlsweep.errors import ConfigError
from tlsweep.redact import redact


def probe_server(uri: str) -> None:
    """One line when the server at `uri` does not answer its health check."""
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(
            f"tracking.uri={redact(uri)!r} is unreachable ({reason}); start the server, or leave tracking.uri "
            "null and MLFLOW_TRACKING_URI unset to log to ./mlflow.db"
        ) from None


def sqlite_lock(uri: str):
    """A file lock beside a SQLite store while its schema is made: processes that open it at once wait."""
    if not uri.startswith("sqlite:///"):
        return nullcontext()
    path = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{path}.lock", timeout=600)
