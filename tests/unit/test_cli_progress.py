"""Progress a person can follow: steps done of all, an honest ETA, plain lines off a terminal."""
from __future__ import annotations

import io
import threading
import time

import pytest
from rich.console import Console

from orchestrator.progress import Eta, LiveProgress, PlainProgress, RunProgress, duration_text, progress_view
from synthaug.v1 import common_pb2, orchestrator_pb2

S = common_pb2
RUN = orchestrator_pb2.RunRef(id="0123456789abcdef", plan_name="demo")


def step(key: str, kind: str, state: int = S.JOB_STATE_QUEUED, *, cached: bool = False, progress: float = 0.0,
         metrics: dict[str, float] | None = None, message: str = "") -> orchestrator_pb2.StepStatus:
    return orchestrator_pb2.StepStatus(key=key, kind=kind, label=f"{kind} {key}", state=state, cached=cached, progress=progress,
                                       metrics=metrics or {}, message=message)


def event(at: float, s: orchestrator_pb2.StepStatus | None = None, run_state: int = S.JOB_STATE_RUNNING) -> orchestrator_pb2.RunEvent:
    out = orchestrator_pb2.RunEvent(run=RUN, run_state=run_state, time=at)
    if s is not None:
        out.step.CopyFrom(s)
    return out


def status(*steps: orchestrator_pb2.StepStatus) -> orchestrator_pb2.RunStatus:
    return orchestrator_pb2.RunStatus(run=RUN, state=S.JOB_STATE_QUEUED, steps=list(steps))


def plan_of_five() -> RunProgress:
    """split (cached), two trains, two evaluates."""
    return RunProgress(status(step("s", "split", cached=True), step("t1", "train"), step("t2", "train"), step("e1", "evaluate"), step("e2", "evaluate")),
                       clock=lambda: 0.0)


def test_eta_from_finished_durations_per_kind_and_measured_parallelism() -> None:
    m = plan_of_five()
    assert (m.done, m.total) == (0, 5)
    m.apply(event(0, step("s", "split", S.JOB_STATE_SUCCEEDED, cached=True)))
    assert m.eta(0) is None  # nothing timed yet: no estimate rather than a made-up one
    m.apply(event(100, step("t1", "train", S.JOB_STATE_RUNNING)))
    m.apply(event(100, step("t2", "train", S.JOB_STATE_RUNNING)))
    m.apply(event(160, step("t1", "train", S.JOB_STATE_SUCCEEDED)))
    # train takes 60 s (t1). At 170: t2 ran 70 s (> 60: counts 0), two evaluates untimed.
    # busy = 60 (t1) + 70 (t2 so far) over 70 s of wall → parallelism 130/70.
    eta = m.eta(170)
    assert eta == Eta(0.0, ("evaluate",))
    assert eta.text() == "ETA ? (not timed yet: evaluate)"
    assert Eta(125.0, ("a", "b", "c", "d")).text() == "ETA ≥ 2m05s (not timed yet: a, b, c, …)"
    m.apply(event(175, step("t2", "train", S.JOB_STATE_SUCCEEDED)))
    m.apply(event(175, step("e1", "evaluate", S.JOB_STATE_RUNNING)))
    m.apply(event(185, step("e1", "evaluate", S.JOB_STATE_SUCCEEDED)))
    # evaluate takes 10 s; e2 queued → 10 s of work. busy = 60 + 75 + 10 = 145 over 85 s.
    eta = m.eta(185)
    assert eta is not None and eta.untimed == ()
    assert eta.seconds == pytest.approx(10 / (145 / 85))
    assert (m.done, m.cached) == (4, 1)
    assert m.header(185).startswith("run 0123456789abcdef (demo): 4/5 steps done (1 cached) · ETA 6 s")


def test_a_slow_start_never_makes_parallelism_below_one() -> None:
    m = RunProgress(status(step("a", "train"), step("b", "train")), clock=lambda: 0.0)
    m.apply(event(0, step("a", "train", S.JOB_STATE_RUNNING)))
    m.apply(event(50, step("a", "train", S.JOB_STATE_SUCCEEDED)))
    # b has not started: 50 s of work; busy 50 s over 80 s of wall is 0.625 → counted as 1.
    assert m.eta(80) == Eta(50.0)


def test_plain_lines_on_start_finish_and_every_30_seconds_of_a_running_step() -> None:
    lines: list[str] = []
    m = plan_of_five()
    view = PlainProgress(m, lines.append, every=30.0)
    view.event(event(0, step("s", "split", S.JOB_STATE_SUCCEEDED, cached=True)))
    view.event(event(10, step("t1", "train", S.JOB_STATE_RUNNING)))
    view.event(event(12, step("t1", "train", S.JOB_STATE_RUNNING, progress=0.1, metrics={"loss": 0.51234})))  # progress: no line
    view.tick(39)   # 29 s since its last line: none
    view.tick(41)   # 31 s: one
    view.tick(50)   # 9 s since: none
    view.tick(72)   # 31 s since: one
    view.event(event(80, step("t1", "train", S.JOB_STATE_SUCCEEDED)))
    view.event(event(81, step("t2", "train", S.JOB_STATE_FAILED, message="training diverged")))
    words = [line.split("] ", 1)[1].split()[0] for line in lines]
    assert words == ["cached", "started", "running", "running", "done", "failed"]
    assert "[1/5]" in lines[0] and "[2/5] done" in lines[4] and "[3/5] failed" in lines[5]
    assert "10% 31 s loss=0.512" in lines[2]
    assert "in 1m10s" in lines[4] and lines[4].endswith("ETA ≥ 1m10s (not timed yet: evaluate)")  # t2 queued: one train
    assert lines[5].endswith(": training diverged · ETA ? (not timed yet: evaluate)")


def test_started_views_tick_every_second_on_their_own_thread_until_stopped() -> None:
    """start() runs tick() once a second without events (a running step's line in the plain
    view, the header in the live one); stop() ends that thread."""
    lines: list[str] = []
    m = plan_of_five()
    plain = PlainProgress(m, lines.append, every=0.0)
    plain.event(event(0, step("t1", "train", S.JOB_STATE_RUNNING)))  # the model's clock stays at 0
    plain.start()
    deadline = time.monotonic() + 10
    while not any("] running" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    plain.stop()
    assert any("] running" in line for line in lines)
    live = LiveProgress(plan_of_five(), Console(file=io.StringIO(), force_terminal=True, width=120))
    live.start()
    live.stop()
    names = {t.name for t in threading.enumerate()}
    assert "progress-lines" not in names and "progress-header" not in names


def test_off_a_terminal_the_view_is_plain_lines_written_and_flushed_as_they_happen() -> None:
    class Recording(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1
            super().flush()

    out = Recording()
    console = Console(file=out, width=160)
    assert not console.is_terminal
    view = progress_view(plan_of_five(), console)
    assert isinstance(view, PlainProgress)
    view.event(event(10, step("t1", "train", S.JOB_STATE_RUNNING)))
    assert "started  train t1" in out.getvalue() and out.flushes >= 1
    assert isinstance(progress_view(plan_of_five(), Console(file=io.StringIO(), force_terminal=True)), LiveProgress)


def test_live_header_counts_steps() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    m = plan_of_five()
    view = LiveProgress(m, console)
    view.event(event(0, step("s", "split", S.JOB_STATE_SUCCEEDED, cached=True)))
    view.event(event(1, step("t1", "train", S.JOB_STATE_RUNNING, progress=0.5)))
    header = view.progress.tasks[0]
    assert header.description.startswith("run 0123456789abcdef (demo): 1/5 steps done (1 cached), 1 running")
    assert header.completed == 1 and header.total == 5
    assert view.progress.tasks[1].completed == 0.5


@pytest.mark.parametrize(("seconds", "text"), [(4.4, "4 s"), (65, "1m05s"), (3600 + 180, "1h03m")])
def test_durations_read_short(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text
