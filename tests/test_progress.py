"""The live view of a run never goes silent, in a terminal or in plain lines (issue 17)."""

from __future__ import annotations

import io
import re
import time

import pytest

from cluster.runtime import experiment
from cluster.runtime.progress import Progress, Status
from cluster.runtime.training import phase


def _catching_up() -> Status:
    # The learner catches up after the last env step: nothing in the status moves, the view must still speak.
    status = Status(total_env_steps=12_000, env_steps=12_000, updates=4_000, replay_size=12_000)
    status.phase = "stopping the workers, catching up the replay ratio, writing the final snapshot"
    return status


def test_plain_mode_prints_a_line_every_period_while_the_caller_is_blocked(capsys: pytest.CaptureFixture) -> None:
    progress = Progress(every_s=0.2, live=False)
    progress.start(_catching_up())
    time.sleep(1.1)  # the caller blocked (e.g. ray.get of the learner's catch-up)
    progress.stop()
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    assert len(lines) >= 5, lines  # one at start, then one per 0.2 s, one at stop
    assert all(line.startswith("[stopping the workers, catching up the replay ratio") for line in lines)
    assert "env 12,000/12,000 (100%)" in lines[-1]


def test_terminal_mode_redraws_the_panel_every_refresh_while_the_caller_is_blocked() -> None:
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)
    progress = Progress(every_s=5.0, live=True, console=console, refresh_per_s=10)
    progress.start(_catching_up())
    time.sleep(1.0)
    progress.stop()
    frames = out.getvalue().count("catching up the replay ratio")
    assert frames >= 5, frames  # about 10 redraws in the second
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "12,000/12,000 env steps (100%)" in text and "fleet train" in text


def test_quiet_shows_nothing(capsys: pytest.CaptureFixture) -> None:
    progress = Progress(every_s=0.05, quiet=True, live=False)
    progress.start(_catching_up())
    time.sleep(0.2)
    progress.stop()
    assert capsys.readouterr().out == ""


def test_the_phase_says_why_workers_wait() -> None:
    cfg = experiment.load(None, {"learner.learning_starts": 2000, "learner.replay_ratio": 0.5,
                                 "run.max_ahead_steps": 1000})
    assert phase(Status(total_env_steps=1, env_steps=500), cfg).startswith("warm-up: exploring until 2,000")
    assert phase(Status(total_env_steps=1, env_steps=5000, steps_ahead=10), cfg) == "learning"
    waiting = phase(Status(total_env_steps=1, env_steps=5000, steps_ahead=1500), cfg)
    assert waiting == "waiting for the learner: workers 1,500 env steps ahead of replay ratio 0.5"
