"""The soak script (benchmarks/soak.py) for two minutes with a SIGKILL and restart of the server after one:
no acknowledged example lost, none unacknowledged, every export as acknowledged, no 5xx but the
documented 503s. Slow (two minutes of traffic and two server starts): ``pytest -m slow``."""

from __future__ import annotations

import pytest

from benchmarks import soak


@pytest.mark.slow
def test_two_minute_soak_with_a_sigkill_loses_nothing(tmp_path) -> None:
    report = soak.run(minutes=2, kill_every=1, clients=3, sample_every=30, data_dir=tmp_path / "data")
    print(soak.summary(report))
    acknowledged = report["acknowledged"]
    assert len(report["restarts_s"]) == 1
    assert acknowledged["examples"] > 0 and sum(r["calls"] for r in report["latency"].values()) > 50
    assert (acknowledged["lost"], acknowledged["extra"], acknowledged["problems"]) == (0, 0, [])
    assert report["unexpected"] == [] and report["export_mismatches"] == []
    assert report["ok"]
