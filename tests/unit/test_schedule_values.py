"""Schedules as values: when they fire, what they keep, the lines they own in a crontab (mltf_flow.schedule)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from mltf_flow.cli import _parser
from mltf_flow.errors import ConfigError
from mltf_flow.schedule import crontab
from mltf_flow.schedule.slurm_chain import first_slot, render
from mltf_flow.schedule.spec import (
    Schedule,
    SlurmOptions,
    Target,
    check_luigi_args,
    check_params,
    kept_environment,
)
from mltf_flow.schedule.when import When, stamp

NOON = datetime(2026, 12, 6, 12, 0, 0).timestamp()


def schedule(when: When, **kw: object) -> Schedule:
    values: dict[str, object] = {"name": "nightly", "id": "0123456789abcdef", "via": "slurm", "cwd": "/home/u",
                                 "python": "/venv/bin/python", **kw}
    return Schedule(when=when, target=Target(project_dir="/p", step="train", params=(("epochs", "3"),)),
                    **values)  # type: ignore[arg-type]


def test_a_period_fires_on_a_grid_from_its_start_however_late_a_fire_ran() -> None:
    when = When.parse(every="1h", cron=None, start="2026-12-06T02:30", now=NOON)
    start = datetime(2026, 12, 6, 2, 30).timestamp()
    assert when.start == start
    assert when.next_slot(start - 100) == start
    assert when.next_slot(start) == start + 3600  # strictly after
    assert when.next_slot(start + 3 * 3600 + 1700) == start + 4 * 3600  # a late fire keeps the grid
    assert when.slot_at(start + 3 * 3600 + 1700) == start + 3 * 3600


def test_a_cron_expression_names_its_own_times() -> None:
    when = When.parse(every=None, cron="0 2  * * *", start=None, now=NOON)
    assert when.cron == "0 2 * * *"
    assert stamp(when.next_slot(NOON)) == "2026-12-07T02:00:00"
    assert stamp(when.slot_at(NOON)) == "2026-12-06T02:00:00"
    assert stamp(when.slot_at(datetime(2026, 12, 7, 2, 0).timestamp())) == "2026-12-07T02:00:00"


@pytest.mark.parametrize(("every", "cron", "start", "words"), [
    (None, None, None, "exactly one of --every"),
    ("1h", "0 2 * * *", None, "exactly one of --every"),
    ("5s", None, None, "shorter than 10s"),
    ("soon", None, None, "a period with a unit"),
    (None, "0 25 * * *", None, "not a cron expression"),
    (None, "0 2 * *", None, "not a cron expression"),
    (None, "0 2 * * *", "2026-12-07T02:00", "--start is for --every"),
    ("1d", None, "tomorrow", "expected a local time"),
])
def test_a_bad_time_says_what_to_write(every: str | None, cron: str | None, start: str | None, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        When.parse(every=every, cron=cron, start=start, now=NOON)


@pytest.mark.parametrize(("every", "start", "expression"), [
    ("1m", "2026-12-06T12:00:30", "* * * * *"),
    ("15m", "2026-12-06T12:07", "7-59/15 * * * *"),
    ("6h", "2026-12-06T03:20", "20 3-23/6 * * *"),
    ("1d", "2026-12-06T02:00", "0 2 * * *"),
    ("7d", "2026-12-06T02:00", "0 2 * * 0"),  # 2026-12-06 is a Sunday
])
def test_periods_on_crons_grid_become_cron_expressions(every: str, start: str, expression: str) -> None:
    when = When.parse(every=every, cron=None, start=start, now=NOON)
    assert when.cron_expression("cron") == expression


def test_a_period_off_crons_grid_is_refused_for_cron_and_allowed_on_slurm() -> None:
    when = When.parse(every="7m", cron=None, start=None, now=NOON)
    with pytest.raises(ConfigError, match="use --via slurm"):
        when.cron_expression("cron")
    assert when.next_slot(NOON) == NOON + 7 * 60


def test_a_schedule_reads_back_what_was_written() -> None:
    original = schedule(When.parse(every="1d", cron=None, start=None, now=NOON), environment={"PATH": "/bin"},
                        slurm=SlurmOptions(partition="gpu", time_limit="01:00:00"))
    again = Schedule.from_json(json.loads(json.dumps(original.to_json())), "x")
    assert again == original
    assert again.job_name == "mltf-schedule-nightly-01234567"
    assert again.target.command() == "mltf-flow run /p --step train -P epochs=3"


def test_an_unknown_format_is_refused_with_the_fix() -> None:
    with pytest.raises(ConfigError, match="Remove and add the schedule again"):
        Schedule.from_json({"version": 99}, "s.json")


def test_no_secret_is_kept_in_a_schedule() -> None:
    with pytest.raises(ConfigError, match=r"-P train\.api_token"):
        check_params({"train.api_token": "t0ps3cret"})
    with pytest.raises(ConfigError, match="-P db"):
        check_params({"db": "postgresql://user:pw@host/db"})
    check_params({"epochs": "3", "lr": "0.1"})
    with pytest.raises(ConfigError, match="--api-token"):
        check_luigi_args(("--module", "m", "Train", "--api-token", "x"))
    kept = kept_environment({"MLTF_FLOW_WORK_DIR": "/w", "MLFLOW_TRACKING_URI": "http://u:pw@h:5000",
                             "MLTF_FLOW_SMTP_PASSWORD": "pw", "PATH": "/bin", "HOME": "/root",
                             "MLTF_FLOW_NOTIFY_WEBHOOK": "https://hooks.example.org/T0/B1/s3cr3t"})
    assert kept == {"MLTF_FLOW_WORK_DIR": "/w", "PATH": "/bin"}


def test_a_fire_starts_now_when_its_start_is_now_else_at_the_next_slot() -> None:
    now_start = schedule(When.parse(every="1m", cron=None, start=None, now=NOON))
    assert first_slot(now_start, NOON + 0.4) == NOON
    nightly = schedule(When.parse(every=None, cron="0 2 * * *", start=None, now=NOON))
    assert stamp(first_slot(nightly, NOON)) == "2026-12-07T02:00:00"


def test_the_job_script_names_the_schedule_and_runs_one_fire(tmp_path: Path) -> None:
    definition = tmp_path / "nightly" / "schedule.json"
    script = render(schedule(When.parse(every="1d", cron=None, start=None, now=NOON),
                             slurm=SlurmOptions(partition="batch", account="mltf")), definition)
    assert "#SBATCH --job-name=mltf-schedule-nightly-01234567\n" in script
    assert "#SBATCH --comment='mltf_flow schedule nightly 0123456789abcdef'\n" in script
    assert "#SBATCH --partition=batch\n#SBATCH --account=mltf\n" in script
    assert "#SBATCH --time" not in script  # the partition's default
    assert script.endswith(f"cd /home/u\nexec /venv/bin/python -m mltf_flow.cli schedule fire {definition}\n")


def test_a_crontab_block_is_replaced_and_removed_leaving_other_lines(tmp_path: Path) -> None:
    definition = tmp_path / "50%" / "schedule.json"
    nightly = schedule(When.parse(every=None, cron="0 2 * * *", start=None, now=NOON))
    lines = crontab.block(nightly, definition, "cron")
    assert lines[0].startswith("# mltf_flow schedule nightly 0123456789abcdef")
    assert lines[1].startswith("0 2 * * * cd /home/u && MLTF_SCHEDULE_STARTED_BY=cron /venv/bin/python -m")
    assert "50\\%" in lines[1] and "50%" not in lines[1].replace("50\\%", "")  # cron reads % as a newline
    mine = ["MAILTO=me", "0 3 * * * backup", *lines, "@reboot other"]
    assert crontab.without(mine, nightly) == ["MAILTO=me", "0 3 * * * backup", "@reboot other"]
    other = schedule(nightly.when, id="ffffffffffffffff")
    assert crontab.without(mine, other) == mine  # a schedule of the same name elsewhere is not ours


def test_scrontab_lines_carry_the_jobs_options(tmp_path: Path) -> None:
    nightly = schedule(When.parse(every="1d", cron=None, start="2026-12-06T02:00", now=NOON),
                       slurm=SlurmOptions(partition="batch", time_limit="00:30:00"))
    lines = crontab.block(nightly, tmp_path / "schedule.json", "scrontab")
    assert "#SCRON --job-name=mltf-schedule-nightly-01234567" in lines
    assert "#SCRON --partition=batch" in lines and "#SCRON --time=00:30:00" in lines
    assert lines[-2].startswith("0 2 * * * cd /home/u && /venv/bin/python -m mltf_flow.cli schedule fire")


def test_the_project_may_follow_the_schedules_options_on_the_command_line() -> None:
    from mltf_flow import cli

    args, extra = _parser().parse_known_args(["schedule", "add", "n", "--every", "1d", "proj", "--step", "t"])
    assert (args.name, args.every, args.step, extra) == ("n", "1d", "t", ["proj"])
    with pytest.raises(SystemExit):
        cli.main(["schedule", "add", "n", "--every", "1d", "proj", "other", "--step", "t"])
    args = _parser().parse_args(["schedule", "add", "d", "--every", "1d", "--pipeline", "p", "--luigi", "--module",
                                 "m", "RangeDaily", "--of", "Day"])
    assert args.luigi == ["--module", "m", "RangeDaily", "--of", "Day"]
