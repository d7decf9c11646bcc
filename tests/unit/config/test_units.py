"""Durations and sizes mean what Dask makes of them (the values go to dask-worker and dask-jobqueue): our
parser is checked against dask.utils.parse_timedelta / parse_bytes on the forms profiles use."""

from __future__ import annotations

import pytest
from dask.utils import parse_bytes, parse_timedelta

from mltf_flow.config.units import duration_seconds, size_bytes

DURATIONS = ["55m", "30s", "1.5h", "2d", "1w", "4 minutes", "300ms", "90 seconds", "1H", "0.75h", "3e2s", "10us"]
SIZES = ["4GB", "16GiB", "1.5GB", "2gb", "4G", "512MiB", "100 MB", "5kB", "1kiB", "1e6 kB", "7TB", "3B"]


@pytest.mark.parametrize("text", DURATIONS)
def test_durations_agree_with_dask(text: str) -> None:
    assert duration_seconds(text) == pytest.approx(parse_timedelta(text, default=False))


@pytest.mark.parametrize("text", SIZES)
def test_sizes_agree_with_dask(text: str) -> None:
    assert size_bytes(text) == parse_bytes(text)


@pytest.mark.parametrize("text", ["3h50m", "4 parsecs", "1h 5m", "soon"])
def test_durations_dask_rejects_are_rejected(text: str) -> None:
    with pytest.raises((ValueError, KeyError)):
        parse_timedelta(text, default=False)
    with pytest.raises(ValueError):
        duration_seconds(text)


@pytest.mark.parametrize("text", ["lots", "4 parsecs", "GBGB"])
def test_sizes_dask_rejects_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)
    with pytest.raises(ValueError):
        size_bytes(text)


@pytest.mark.parametrize(("text", "dask_reads"), [("4", 4), ("55", 55), ("MB", 10**6)])
def test_a_unit_and_a_number_are_required_where_dask_would_guess(text: str, dask_reads: int) -> None:
    """Dask reads a bare number as bytes or seconds and a bare unit as one of it: never what a profile means."""
    assert (parse_bytes(text) if text != "55" else parse_timedelta(text)) == dask_reads
    with pytest.raises(ValueError):
        size_bytes(text) if text != "55" else duration_seconds(text)


# -- step timeouts: a duration, a clock time (as walltime is written) or seconds -----------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    ("90s", 90.0), ("2h", 7200.0), ("1.5m", 90.0), ("01:30:00", 5400.0), ("1-00:00:00", 86400.0), ("30:00", 1800.0),
    (5400, 5400.0), (2.5, 2.5),
])
def test_timeouts_accept_durations_clock_times_and_seconds(value: object, seconds: float) -> None:
    from mltf_flow.config.units import timeout_seconds

    assert timeout_seconds(value) == seconds


def test_an_unquoted_clock_time_is_the_same_timeout() -> None:
    import yaml

    from mltf_flow.config.units import timeout_seconds

    # YAML reads it as the sexagesimal number 5400: seconds, as the quoted form means.
    assert timeout_seconds(yaml.safe_load("t: 01:30:00")["t"]) == timeout_seconds("01:30:00") == 5400.0


@pytest.mark.parametrize("value", ["soon", "90", "", "0s", 0, -5, "1:99:99:99", True, float("inf"), [1]])
def test_bad_timeouts_say_what_is_expected(value: object) -> None:
    from mltf_flow.config.units import timeout_seconds

    with pytest.raises(ValueError, match="a duration like 90s, 30m or 2h, a clock time like"):
        timeout_seconds(value)
