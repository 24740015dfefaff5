"""A heartbeat on the runs that stay RUNNING while their process works, so any host can tell when it died.

A sweep's parent run is open for as long as its jobs run. Its process stamps the run's `tlsweep.heartbeat`
tag (UTC) at once and then every `interval` seconds, from a daemon thread. A later command on any host
marks KILLED a RUNNING run whose stamp is older than `tracking.stale_after` and than `MISSED_BEATS` of the
interval the owner declared on the run (`runs.close_stale_runs`): the process check there only works on the
host the process ran on, the heartbeat works from everywhere.
Hosts' clocks must agree to well within `tracking.stale_after` (NTP does).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timezone
from typing import Optional

from tlsweep.tracking.names import Tag
from tlsweep.tracking.store import Store

log = logging.getLogger(__name__)

MAX_INTERVAL_S = 30.0
BEATS_PER_STALE_AFTER = 10  # a run is called dead only after this many beats in a row went missing
MISSED_BEATS = 5  # and never before this many of its owner's declared intervals, whatever the observer's setting


def interval_for(stale_after: float) -> float:
    """Seconds between beats: a tenth of `stale_after`, and at most 30 s."""
    return min(MAX_INTERVAL_S, stale_after / BEATS_PER_STALE_AFTER)


def dead_after(stale_after: float, declared_interval: Optional[str]) -> float:
    """Seconds of silence after which an observer may call a run dead: its own `stale_after`, but never less
    than `MISSED_BEATS` of the beat interval the run's owner declared (30 s, the most, when it declared none)."""
    try:
        interval = float(declared_interval) if declared_interval else MAX_INTERVAL_S
    except ValueError:
        interval = MAX_INTERVAL_S
    if not 0 < interval <= MAX_INTERVAL_S:  # an owner never beats less often (`interval_for`)
        interval = MAX_INTERVAL_S
    return max(stale_after, MISSED_BEATS * interval)


def stamp(now: Optional[datetime] = None) -> str:
    """The tag's value: an ISO 8601 UTC time, readable in the MLflow UI."""
    return (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")


def beat_time(value: str) -> Optional[datetime]:
    """When a stamp was made; None for a value that is not one."""
    try:
        found = datetime.fromisoformat(value)
    except ValueError:
        return None
    return found if found.tzinfo else found.replace(tzinfo=timezone.utc)


def age_seconds(value: str, now: Optional[datetime] = None) -> Optional[float]:
    """Seconds since a stamp was made; None for a value that is not one."""
    found = beat_time(value)
    return None if found is None else ((now or datetime.now(timezone.utc)) - found).total_seconds()


class Heartbeat:
    """Stamps one run every `interval` seconds from a daemon thread, until `stop`.

    Hydra pickles the sweep's callback, which holds this, into every job: a copy has no thread and never beats.
    """

    def __init__(self, tracking_uri: str, run_id: str, *, interval: float):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.interval = interval
        self._stop: Optional[threading.Event] = None
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "Heartbeat":
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(Store(self.tracking_uri), self._stop),
                                        name=f"tlsweep-heartbeat-{self.run_id[:8]}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop beating; returns once the last beat has been written, so none lands after the run is closed."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None

    def _beat(self, store: Store, stop: threading.Event) -> None:
        failing = False
        while True:
            try:
                store.set_tag(self.run_id, Tag.HEARTBEAT, stamp())
                failing = False
            except Exception as err:  # a server restarting must not end the sweep; say so once, keep trying
                if not failing:
                    log.warning("heartbeat of run %s not written (%s); retrying every %gs",
                                self.run_id, str(err).splitlines()[0][:200] if str(err) else type(err).__name__,
                                self.interval)
                failing = True
            if stop.wait(self.interval):
                return

    def __getstate__(self) -> dict:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id, "interval": self.interval,
                "_stop": None, "_thread": None}
