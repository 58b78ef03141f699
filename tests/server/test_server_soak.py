"""The soak script (benchmarks/soak.py) for two minutes with a SIGKILL and restart of the server after one:
no acknowledged example lost, none unacknowledged, every export as acknowledged, no 5xx but the
documented 503s. Slow (two minutes of traffic and two server starts): ``pytest -m slow``; CI runs it.
And how the soak compares resident memory early and late."""

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


def test_rss_drift_compares_whole_lives_and_sets_the_bounded_cache_apart() -> None:
    def sample(minute: float, rss: float, cache: float | None, processes: int = 5) -> dict:
        return {"minute": minute, "rss_mib": rss, "cache_mib": cache, "processes": processes}

    # Two 10-minute lives (and the warm-up one): RSS climbs with the cache in each; one sample was
    # taken mid-restart (fewer processes) and one without the cache's figure.
    samples = [sample(m, 3000 + 50 * (m % 10), 40 * (m % 10)) for m in range(0, 30)]
    samples[10] = sample(10, 400, None, processes=2)
    samples += [sample(m, 3100 + 50 * (m % 10), 40 * (m % 10)) for m in range(30, 40)]
    samples[35] = sample(35, 3350, None)
    drift = soak.rss_drift(samples, minutes=40, window=10)
    assert drift["minutes"] == [[10, 20], [30, 40]]
    early = [3000 + 50 * (m % 10) for m in range(11, 20)]
    late = [3100 + 50 * (m % 10) for m in range(30, 40)]
    assert drift["mean_rss_mib"] == [round(sum(early) / 9, 1), round(sum(late) / 10, 1)]
    assert drift["mean_rss_less_cache_mib"] == [
        round(sum(10 * (m % 10) + 3000 for m in range(11, 20)) / 9, 1),
        round(sum(10 * (m % 10) + 3100 for m in range(30, 40) if m != 35) / 9, 1),
    ]
    assert soak.rss_drift(samples[:25], minutes=25, window=10) is None  # no whole last life to compare
