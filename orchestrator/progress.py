"""What a person follows while a run goes: which run, steps done of all, an ETA, each running step.

One model (`RunProgress`, fed with the run's events, local or over gRPC) and two renderings:
live bars on a terminal (`LiveProgress`, rich), plain lines everywhere else (`PlainProgress`:
logs, CI, a pipe), written as things happen: one line when a step starts, one when it ends,
and one every `every` seconds (30 by default) per running step — never all at the end.

The ETA is a simple estimate, stated here so it can be judged:

* a kind's duration is the mean, over this run's steps of that kind that were computed (not
  answered from the cache) and finished, of start → end as the events report it;
* remaining work = the sum, over every step not finished yet, of its kind's duration, less
  the time a running step has already run (never below 0);
* ETA = remaining work / parallelism, where parallelism is the step-seconds run so far per
  wall-clock second since the first step started (at least 1).

Kinds with no finished step yet count as 0, so the ETA is then a lower bound ("≥"), and says
which kinds it could not time. It knows nothing of queues at the services, nor of the first
epochs of training being slower than later ones.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from rich.console import Console
from rich.progress import BarColumn, Progress, Task, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from services.common.jobs import TERMINAL
from synthaug.v1 import common_pb2, orchestrator_pb2

S = common_pb2
#: Seconds between two plain lines about the same running step.
PLAIN_EVERY_SECONDS = 30.0
#: Step metrics shown beside a running step, the first one present.
SHOWN_METRICS = ("images_per_s", "pairs_per_s", "loss", "G_L1")


def state_name(value: int) -> str:
    return S.JobState.Name(value).removeprefix("JOB_STATE_").lower()


def duration_text(seconds: float) -> str:
    """3 s, 4m05s, 2h03m: short enough for a progress line."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class StepView:
    """One step as the events describe it, with the times they were seen."""

    key: str
    label: str
    kind: str
    state: int = S.JOB_STATE_QUEUED
    cached: bool = False
    progress: float = 0.0
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    #: Unix time it was first seen running (None: not seen running).
    started: float | None = None
    #: Unix time it was seen finished.
    finished: float | None = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL

    @property
    def timed(self) -> bool:
        """Computed here, succeeded, and seen both start and end: its duration says something."""
        return not self.cached and self.state == S.JOB_STATE_SUCCEEDED and self.started is not None and self.finished is not None

    @property
    def duration(self) -> float:
        """Seconds from start to end (0 unless both were seen)."""
        return self.finished - self.started if self.started is not None and self.finished is not None else 0.0

    def metric_text(self) -> str:
        for name in SHOWN_METRICS:
            if name in self.metrics:
                return f"{name}={self.metrics[name]:.3g}"
        return ""


@dataclass(frozen=True)
class Eta:
    seconds: float
    #: Kinds of unfinished steps that no finished step has timed yet (not counted).
    untimed: tuple[str, ...] = ()

    def text(self) -> str:
        if not self.untimed:
            return f"ETA {duration_text(self.seconds)}"
        kinds = ", ".join(self.untimed[:3]) + (", …" if len(self.untimed) > 3 else "")
        if self.seconds < 1:
            return f"ETA ? (not timed yet: {kinds})"
        return f"ETA ≥ {duration_text(self.seconds)} (not timed yet: {kinds})"


class RunProgress:
    """The state of one run's steps, kept from its status and events."""

    def __init__(self, status: orchestrator_pb2.RunStatus, clock: Callable[[], float] = time.time):
        self.run_id = status.run.id
        self.plan_name = status.run.plan_name
        self.clock = clock
        self.state = status.state
        self.steps: dict[str, StepView] = {}
        for step in status.steps:
            view = self._view(step)
            view.state, view.cached, view.progress = step.state, step.cached, step.progress
        #: When the first step was seen running (the start of the parallelism measure).
        self.first_start: float | None = None

    def _view(self, step: orchestrator_pb2.StepStatus) -> StepView:
        view = self.steps.get(step.key)
        if view is None:
            view = self.steps[step.key] = StepView(step.key, step.label or step.kind, step.kind)
        return view

    @property
    def total(self) -> int:
        return len(self.steps)

    @property
    def done(self) -> int:
        return sum(1 for s in self.steps.values() if s.done)

    @property
    def cached(self) -> int:
        return sum(1 for s in self.steps.values() if s.cached and s.done)

    def running(self) -> list[StepView]:
        return [s for s in self.steps.values() if s.state == S.JOB_STATE_RUNNING]

    def apply(self, event: orchestrator_pb2.RunEvent) -> tuple[StepView, str] | None:
        """Take in one event; for a step's event, the step and what happened to it:
        "started", "finished" or "" (progress)."""
        self.state = event.run_state or self.state
        if not event.HasField("step") or not event.step.key:
            return None
        step = event.step
        at = event.time or self.clock()
        view = self._view(step)
        was_running, was_done = view.state == S.JOB_STATE_RUNNING, view.done
        view.state, view.cached, view.progress, view.message = step.state, step.cached, step.progress, step.message
        if step.metrics:
            view.metrics = dict(step.metrics)
        change = ""
        if step.state == S.JOB_STATE_RUNNING and not was_running:
            view.started = at
            self.first_start = at if self.first_start is None else min(self.first_start, at)
            change = "started"
        elif view.done and not was_done:
            view.finished = at
            change = "finished"
        return view, change

    def eta(self, now: float | None = None) -> Eta | None:
        """The estimate described in the module's docstring; None when nothing remains or
        no step has been timed yet."""
        now = self.clock() if now is None else now
        remaining = [s for s in self.steps.values() if not s.done]
        if not remaining:
            return None
        durations: dict[str, list[float]] = {}
        for s in self.steps.values():
            if s.timed:
                durations.setdefault(s.kind, []).append(s.duration)
        if not durations:
            return None
        mean = {kind: sum(v) / len(v) for kind, v in durations.items()}
        work, untimed = 0.0, []
        for s in remaining:
            if s.kind not in mean:
                if s.kind not in untimed:
                    untimed.append(s.kind)
                continue
            spent = now - s.started if s.state == S.JOB_STATE_RUNNING and s.started is not None else 0.0
            work += max(0.0, mean[s.kind] - spent)
        busy = sum(s.duration for s in self.steps.values() if s.timed)
        busy += sum(now - s.started for s in self.running() if s.started is not None)
        wall = now - self.first_start if self.first_start is not None else 0.0
        parallelism = max(1.0, busy / wall) if wall > 0 else 1.0
        return Eta(work / parallelism, tuple(untimed))

    def header(self, now: float | None = None) -> str:
        """run ID (plan): 5/14 steps done (3 cached), 2 running · ETA …"""
        text = f"run {self.run_id} ({self.plan_name}): {self.done}/{self.total} steps done"
        if self.cached:
            text += f" ({self.cached} cached)"
        running = len(self.running())
        if running:
            text += f", {running} running"
        eta = self.eta(now)
        return text + (f" · {eta.text()}" if eta is not None else "")


class _Ticker:
    """Calls ``tick()`` every second on a daemon thread, between start() and stop()."""

    def __init__(self, tick: Callable[[], None], name: str):
        self._tick, self._name = tick, name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self._tick()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class PlainProgress:
    """Progress as lines of text, flushed as they are written (logs, CI, pipes)."""

    def __init__(self, model: RunProgress, write: Callable[[str], None], every: float = PLAIN_EVERY_SECONDS):
        self.model = model
        self.write = write
        self.every = every
        self._last_line: dict[str, float] = {}  # step key → when its last line was written
        self._lock = threading.Lock()
        self._ticker = _Ticker(self.tick, "progress-lines")

    def _line(self, word: str, view: StepView, detail: str = "", now: float | None = None) -> None:
        m = self.model
        width = len(str(m.total))
        at = m.clock() if now is None else now
        text = f"{time.strftime('%H:%M:%S', time.localtime(at))} [{m.done:>{width}}/{m.total}] {word:<9}{view.label}"
        if detail:
            text += f" {detail}"
        eta = m.eta(now)
        if eta is not None:
            text += f" · {eta.text()}"
        self.write(text)

    def event(self, event: orchestrator_pb2.RunEvent) -> None:
        with self._lock:
            applied = self.model.apply(event)
            if applied is None:
                return
            view, change = applied
            now = event.time or self.model.clock()
            if change == "started":
                self._last_line[view.key] = now
                self._line("started", view, now=now)
            elif change == "finished":
                self._last_line.pop(view.key, None)
                if view.cached:
                    self._line("cached", view, now=now)
                elif view.state == S.JOB_STATE_SUCCEEDED:
                    self._line("done", view, f"in {duration_text(view.duration)}" if view.started is not None else "", now=now)
                else:
                    self._line(state_name(view.state), view, f": {view.message}" if view.message else "", now=now)

    def tick(self, now: float | None = None) -> None:
        """A line for each running step not mentioned for `every` seconds."""
        with self._lock:
            now = self.model.clock() if now is None else now
            for view in self.model.running():
                last = self._last_line.get(view.key)
                if last is not None and now - last < self.every:
                    continue
                self._last_line[view.key] = now
                ran = f" {duration_text(now - view.started)}" if view.started is not None else ""
                metric = view.metric_text()
                self._line("running", view, f"{100 * view.progress:.0f}%{ran}" + (f" {metric}" if metric else ""), now=now)

    def start(self) -> None:
        """Begin the periodic lines (a timer thread)."""
        self._ticker.start()

    def stop(self) -> None:
        self._ticker.stop()


class _RemainingColumn(TimeRemainingColumn):
    """Rich's estimate for a step's bar; the run's header shows ours instead."""

    def render(self, task: Task) -> Text:
        if task.fields.get("header"):
            return Text("")
        return super().render(task)


class LiveProgress:
    """A terminal's live display: the run's header line and a bar per running step."""

    def __init__(self, model: RunProgress, console: Console):
        self.model = model
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            _RemainingColumn(),
            console=console,
            transient=False,
        )
        self.header: TaskID = self.progress.add_task(model.header(), total=max(1, model.total), completed=model.done, info="", header=True)
        self.tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()
        self._ticker = _Ticker(self._refresh_header, "progress-header")

    def event(self, event: orchestrator_pb2.RunEvent) -> None:
        with self._lock:
            applied = self.model.apply(event)
            if applied is not None:
                view, _change = applied
                if view.state == S.JOB_STATE_RUNNING:
                    if view.key not in self.tasks:
                        self.tasks[view.key] = self.progress.add_task(view.label, total=1.0, info="")
                    self.progress.update(self.tasks[view.key], completed=view.progress, info=view.metric_text())
                elif view.key in self.tasks:
                    completed = 1.0 if view.state == S.JOB_STATE_SUCCEEDED else view.progress
                    self.progress.update(self.tasks[view.key], completed=completed, info=state_name(view.state))
            self.progress.update(self.header, description=self.model.header(), total=max(1, self.model.total), completed=self.model.done)

    def start(self) -> None:
        """Show the display; the header's ETA is refreshed every second, events or not."""
        self.progress.start()
        self._ticker.start()

    def _refresh_header(self) -> None:
        with self._lock:
            self.progress.update(self.header, description=self.model.header())

    def stop(self) -> None:
        self._ticker.stop()
        self.progress.stop()


def follow(view: LiveProgress | PlainProgress, events: Iterable[orchestrator_pb2.RunEvent]) -> None:
    """Render `events` as they come, until they end."""
    for event in events:
        view.event(event)


def progress_view(model: RunProgress, console: Console) -> LiveProgress | PlainProgress:
    """Live bars on a terminal; plain, flushed lines anywhere else (rich's live display off)."""
    if console.is_terminal:
        return LiveProgress(model, console)

    def write(line: str) -> None:
        console.file.write(line + "\n")
        console.file.flush()

    return PlainProgress(model, write)
