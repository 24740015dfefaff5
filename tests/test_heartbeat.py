"""Stale runs from other hosts: a RUNNING run's heartbeat, `tracking.stale_after`, and the sweep that closes them.

A run left RUNNING by a process on this host is closed by checking the process (test_reliability_cli.py);
one from another host can only be judged by its heartbeat, which these tests fake with a host name that is
not this one.
"""

from __future__ import annotations

import pickle
import socket
import time
from datetime import datetime, timedelta, timezone

import pytest
from mlflow.tracking import MlflowClient

from tlsweep import provenance
from tlsweep.errors import ConfigError
from tlsweep.tracking import heartbeat
from tlsweep.tracking.heartbeat import Heartbeat
from tlsweep.tracking.names import Kind, Status, Tag
from tlsweep.validate import stale_after_seconds

HEARTBEAT = "tlsweep.heartbeat"


@pytest.mark.parametrize("value, seconds", [("300", 300), (600, 600), ("90s", 90), ("5m", 300), ("1.5h", 5400),
                                            ("10 s", 10)])
def test_stale_after_takes_seconds_or_a_duration(value, seconds):
    assert stale_after_seconds(value) == seconds


@pytest.mark.parametrize("value", ["soon", "", "-5m", "5d", "9", "0"])
def test_stale_after_out_of_range_is_one_line_naming_key_value_and_what_is_allowed(value):
    with pytest.raises(ConfigError) as raised:
        stale_after_seconds(value)
    message = str(raised.value)
    assert "\n" not in message and f"received tracking.stale_after={value!r}" in message
    assert "at least 10s" in message and "5m" in message


def test_composed_default_is_a_few_minutes_well_above_the_beat(compose):
    seconds = stale_after_seconds(compose().tracking.stale_after)
    assert 120 <= seconds <= 900
    assert heartbeat.interval_for(seconds) * 5 <= seconds


def test_bad_stale_after_stops_a_sweep_before_any_run(isolated, cifar_dir, cli, tiny, experiment_runs):
    result = cli("-m", "layer=block4_pool,block5_pool", "tracking.stale_after=soon", f"data.path={cifar_dir}", *tiny,
                 cwd=isolated)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    (line,) = [line for line in (result.stdout + result.stderr).splitlines() if "tracking.stale_after" in line]
    assert "received tracking.stale_after='soon'" in line
    assert not (isolated / "mlflow.db").exists() or experiment_runs(MlflowClient()) == []


def _running_run(client: MlflowClient, experiment_id: str, *, host: str, beat: datetime | None, process=None) -> str:
    tags = {Tag.KIND: "sweep", Tag.MACHINE: host, Tag.PROCESS: process or f"{host}:4242:1234"}
    if beat is not None:
        tags[Tag.HEARTBEAT] = heartbeat.stamp(beat)
    return client.create_run(experiment_id, tags=tags, run_name=f"sweep on {host}").info.run_id


def test_heartbeat_refreshes_the_tag_until_stopped_and_a_pickled_copy_never_beats(isolated):
    client = MlflowClient()
    run_id = _running_run(client, client.create_experiment("beats"), host=socket.gethostname(), beat=None)
    old = heartbeat.stamp(datetime.now(timezone.utc) - timedelta(hours=1))
    client.set_tag(run_id, HEARTBEAT, old)

    beating = Heartbeat(client.tracking_uri, run_id, interval=0.2).start()
    copy = pickle.loads(pickle.dumps(beating))  # what a launcher sends its jobs inside the sweep's callback
    deadline = time.monotonic() + 30
    while client.get_run(run_id).data.tags[HEARTBEAT] == old and time.monotonic() < deadline:
        time.sleep(0.1)
    assert heartbeat.age_seconds(client.get_run(run_id).data.tags[HEARTBEAT]) < 30
    copy.stop()  # a copy owns no thread: stopping it must not stop the sweep's own heartbeat
    client.set_tag(run_id, HEARTBEAT, old)
    deadline = time.monotonic() + 30
    while client.get_run(run_id).data.tags[HEARTBEAT] == old and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.get_run(run_id).data.tags[HEARTBEAT] != old

    beating.stop()
    client.set_tag(run_id, HEARTBEAT, old)
    time.sleep(1.0)  # five intervals
    assert client.get_run(run_id).data.tags[HEARTBEAT] == old


def test_a_sweep_closes_runs_whose_heartbeat_is_stale_on_any_host_and_leaves_live_ones(isolated, cifar_dir, cli,
                                                                                        tiny, experiment_runs):
    client = MlflowClient()
    experiment_id = client.create_experiment("tlsweep")
    now = datetime.now(timezone.utc)
    last_beat = (now - timedelta(hours=1)).replace(microsecond=0)
    assert socket.gethostname() not in ("dead-host", "live-host")
    dead = _running_run(client, experiment_id, host="dead-host", beat=last_beat)  # its machine died an hour ago
    live = _running_run(client, experiment_id, host="live-host", beat=now)  # a sweep still at work elsewhere
    # this host, old heartbeat, but its process (this test) is alive: the process check wins here
    paused = _running_run(client, experiment_id, host=socket.gethostname(), beat=last_beat,
                          process=provenance.process_id())
    unmarked = client.create_run(experiment_id, tags={Tag.MACHINE: "other"}).info.run_id  # no heartbeat: not judged
    live_beats = Heartbeat(client.tracking_uri, live, interval=1.0).start()  # the other host's sweep keeps beating
    try:
        started = time.time()
        result = cli("-m", "layer=block4_pool,block5_pool", "tracking.machine=survivor", "tracking.stale_after=20s",
                     f"data.path={cifar_dir}", *tiny, cwd=isolated)
        finished = time.time()
        assert result.returncode == 0, result.stderr[-3000:]
        runs = {r.info.run_id: r for r in experiment_runs(client)}
    finally:
        live_beats.stop()

    assert runs[dead].info.status == Status.KILLED
    assert runs[dead].info.end_time == int(last_beat.timestamp() * 1000)  # it ended when it last beat
    error = runs[dead].data.tags[Tag.ERROR]
    assert "no heartbeat for" in error and "tracking.stale_after=20s" in error and "dead-host:4242:1234" in error
    for run_id in (live, paused, unmarked):
        assert runs[run_id].info.status == Status.RUNNING and "error" not in runs[run_id].data.tags
    assert "marked 1 stale RUNNING run(s) KILLED" in result.stdout + result.stderr

    (parent,) = [r for r in runs.values() if r.data.tags.get(Tag.KIND) == Kind.SWEEP and r.data.tags[Tag.MACHINE] == "survivor"]
    assert parent.info.status == Status.FINISHED
    # the sweep's parent carried a heartbeat (every 2 s for stale_after=20s) until just before it closed; the
    # periodic refresh itself is checked with a short interval above
    last = heartbeat.beat_time(parent.data.tags[HEARTBEAT]).timestamp()
    start, end = parent.info.start_time / 1000, parent.info.end_time / 1000
    assert started <= start <= end <= finished, (start, end)
    assert start - 1 <= last <= end + 1 and end - last < 5, (start, last, end)
