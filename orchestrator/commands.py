"""`synthaug run | status | report | demo`: experiment plans from the command line."""
from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from orchestrator.plan import Plan, load_plan
from orchestrator.runner import RunSummary, RunTracker
from orchestrator.runs import PreparedRun, RunManager, list_runs, load_report_status, load_status, load_succeeded, validate_run_id
from orchestrator.steps import code_digests
from orchestrator.settings import parse_addresses
from services.common.client import open_channel
from services.common.errors import InvalidArgument, NotFound
from services.common.store import FileStore, ObjectStore, open_store
from synthaug.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_PLAN = REPO_ROOT / "examples" / "demo.yaml"
STATE = common_pb2.JobState


def _console() -> Console:
    """Wide enough for the step tables when output goes to a file or a pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _state(value: int) -> str:
    return STATE.Name(value).removeprefix("JOB_STATE_").lower()


def print_graph(console: Console, prepared: PreparedRun, code_files: bool = False) -> None:
    """The steps, each with its key, the digest of its kind's code and why it will or will
    not run (cached / new key / forced); then which files each kind's digest covers."""
    graph = prepared.graph
    title = f"plan {graph.plan.name}: {len(graph.steps)} steps ({len(prepared.cached)} cached"
    title += f", {len(prepared.forced)} forced)" if prepared.forced else ")"
    table = Table(title=title)
    for col in ("step", "kind", "service", "key", "code", "depends on", "status"):
        table.add_column(col)
    labels = {s.key: s.label for s in graph.steps}
    for s in graph.steps:
        deps = ", ".join(labels[d.key] for d in s.deps.values()) if s.kind != "report" else f"{len(s.deps) - 1} evaluations"
        table.add_row(s.label, s.kind, s.service, s.key[:12], s.code_digest[:12], deps, prepared.why(s.key))
    console.print(table)
    digests = code_digests()
    files = Table(title="code digests: what each step kind's key hashes (besides its settings and inputs)")
    for col in ("kind", "code", "files", "of which"):
        files.add_column(col)
    for kind in graph.kinds:
        d = digests[kind]
        own = sorted({f.split("/")[1] for f in d.files if f.startswith("services/") and f.count("/") >= 2})
        functions = [f.split(":", 1)[1] for f in d.files if ":" in f]
        summary = f"services/{{{','.join(own)}}}, synthaug/; orchestrator/steps.py: {', '.join(functions)}"
        files.add_row(kind, d.short, str(len(d.files)), summary if not code_files else "\n".join(d.files))
    console.print(files)
    budget = graph.plan.budget.describe()
    console.print(f"training budget: {', '.join(f'{k}={v}' for k, v in budget.items())}; synthesis from the first {graph.plan.synthesis_real} real images" if graph.plan.synthesis_real else f"training budget: {', '.join(f'{k}={v}' for k, v in budget.items())}")


class LiveProgress:
    """A bar per running step, with its throughput and ETA."""

    def __init__(self, console: Console):
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.tasks: dict[str, TaskID] = {}

    def attach(self, tracker: RunTracker) -> threading.Thread:
        def follow() -> None:
            for event in tracker.watch():
                if event.HasField("step") and event.step.key:
                    self.update(event.step)

        thread = threading.Thread(target=follow, daemon=True)
        thread.start()
        return thread

    def update(self, step: orchestrator_pb2.StepStatus) -> None:
        label = f"{step.kind}" + (f" {step.arm}" if step.arm else "") + (f" s{step.seed}" if step.arm else "")
        info = ""
        for name in ("images_per_s", "pairs_per_s", "loss", "G_L1"):
            if name in step.metrics:
                info = f"{name}={step.metrics[name]:.3g}"
                break
        if step.state == STATE.Value("JOB_STATE_RUNNING"):
            if step.key not in self.tasks:
                self.tasks[step.key] = self.progress.add_task(label, total=1.0, info="")
            self.progress.update(self.tasks[step.key], completed=step.progress, info=info)
        elif step.key in self.tasks:
            done = step.state == STATE.Value("JOB_STATE_SUCCEEDED")
            self.progress.update(self.tasks[step.key], completed=1.0 if done else step.progress, info=_state(step.state))


def print_summary(console: Console, summary: RunSummary, store: ObjectStore) -> None:
    forced = f" ({summary.forced} forced)" if summary.forced else ""
    console.print(
        f"run {summary.run_id} attempt {summary.attempt}: {_state(summary.state)} in {summary.wall_seconds:.1f} s — "
        f"{summary.executed} steps executed{forced}, {summary.cached} cached; "
        f"orchestration overhead {summary.overhead_seconds:.2f} s ({100 * summary.overhead_fraction:.1f}% of step time)"
    )
    for failure in summary.failed:
        console.print(f"[red]failed:[/red] {failure}")
    if summary.report is not None:
        print_results_table(console, store, summary.report.key)


def report_files(store: ObjectStore, index_key: str) -> list[str]:
    prefix = index_key.rsplit("/", 1)[0] + "/"
    return store.list(prefix)


def print_results_table(console: Console, store: ObjectStore, index_key: str) -> None:
    for key in report_files(store, index_key):
        if key.endswith(".md"):
            console.print(store.get_bytes(key).decode())
            break
    location = Path(store.root, index_key) if isinstance(store, FileStore) else f"{store.url} key {index_key}"
    console.print(f"report: {location}")


def recompute_kinds(value: str | None) -> list[str]:
    """`--recompute KIND[,KIND…]` as a list (checked against the plan's kinds later)."""
    return [k.strip() for k in (value or "").split(",") if k.strip()]


def exit_code(summary: RunSummary) -> int:
    """0 succeeded; 2 failed because of the plan or its data (a step's input error); 1 otherwise."""
    if summary.state == STATE.Value("JOB_STATE_SUCCEEDED"):
        return 0
    return 2 if summary.input_error else 1


def cmd_run(args: argparse.Namespace) -> int:
    console = _console()
    plan = load_plan(args.plan)
    recompute = recompute_kinds(args.recompute)
    if args.orchestrator:
        if recompute:
            raise InvalidArgument("--recompute works with runs on this machine (not with --orchestrator)")
        return _run_remote(args, console, Path(args.plan).read_text(), plan)
    store = open_store(args.store)
    manager = RunManager(store, parse_addresses(args.services), max_parallel=args.max_parallel)
    try:
        if args.dry_run:
            prepared = manager.prepare(plan, recompute)
            print_graph(console, prepared, code_files=args.code_files)
            console.print(f"run id {prepared.run_id}; store {store.url}")
            return 0
        live = LiveProgress(console)
        cancel = threading.Event()
        with live.progress:
            try:
                summary = manager.run(plan, on_start=None if args.no_progress else live.attach, cancel=cancel, recompute=recompute)
            except KeyboardInterrupt:
                cancel.set()
                raise
        print_summary(console, summary, store)
        return exit_code(summary)
    finally:
        manager.close()


def _run_remote(args: argparse.Namespace, console: Console, text: str, plan: Plan) -> int:
    channel = open_channel(args.orchestrator)
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    try:
        ref = stub.SubmitPlan(orchestrator_pb2.SubmitPlanRequest(plan_yaml=text, dry_run=args.dry_run), timeout=60)
        console.print(f"run {ref.id} ({ref.plan_name}) on {args.orchestrator}")
        if args.dry_run:
            _print_status(console, stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=ref.id), timeout=30))
            return 0
        live = LiveProgress(console)
        with live.progress:
            for event in stub.WatchRun(orchestrator_pb2.WatchRunRequest(run_id=ref.id)):
                if event.HasField("step") and event.step.key:
                    live.update(event.step)
                if event.run_state in (STATE.Value("JOB_STATE_SUCCEEDED"), STATE.Value("JOB_STATE_FAILED"), STATE.Value("JOB_STATE_CANCELLED")) and not event.HasField("step"):
                    break
        status = stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=ref.id), timeout=30)
        _print_status(console, status)
        return 0 if status.state == STATE.Value("JOB_STATE_SUCCEEDED") else 1
    finally:
        channel.close()


def _print_status(console: Console, status: orchestrator_pb2.RunStatus) -> None:
    table = Table(title=f"run {status.run.id} ({status.run.plan_name}): {_state(status.state)}")
    for col in ("kind", "arm", "seed", "state", "progress", "cached", "message"):
        table.add_column(col)
    for s in status.steps:
        table.add_row(s.kind, s.arm, str(s.seed) if s.arm else "", _state(s.state), f"{100 * s.progress:.0f}%", "yes" if s.cached else "", s.message[:80])
    console.print(table)
    if status.error.message:
        console.print(f"[red]error:[/red] {status.error.message}")
    if status.report.key:
        console.print(f"report: {status.report.key}")


def cmd_status(args: argparse.Namespace) -> int:
    console = _console()
    if args.orchestrator and not args.run:
        raise InvalidArgument("status --orchestrator needs a RUN id (synthaug run prints it)")
    if args.orchestrator and args.run:
        channel = open_channel(args.orchestrator)
        try:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            _print_status(console, stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=validate_run_id(args.run)), timeout=30))
        finally:
            channel.close()
        return 0
    store = open_store(args.store)
    if args.run:
        status = load_status(store, args.run)
        _print_status(console, status)
        success = load_succeeded(store, args.run)
        if status.state != STATE.Value("JOB_STATE_SUCCEEDED") and success is not None:
            console.print(f"latest successful attempt: {success['attempt']}; its report: {success['report'] or '(none)'} (synthaug report {args.run})")
        return 0
    runs = list_runs(store)
    if not runs:
        console.print(f"no runs in {store.url}")
        return 0
    table = Table(title=f"runs in {store.url} (each run's latest attempt)")
    for col in ("run", "plan", "attempt", "state", "wall s", "executed", "cached", "overhead", "last success"):
        table.add_column(col)
    for r in runs:
        last = r.get("last_succeeded_attempt") or 0
        table.add_row(
            r["run_id"], r["plan"], str(r.get("attempt", 1)), r["state"].removeprefix("JOB_STATE_").lower(), f"{r['wall_seconds']:.1f}",
            str(r["executed_steps"]), str(r["cached_steps"]), f"{r.get('overhead_seconds', 0.0):.2f} s ({100 * r['overhead_fraction']:.1f}%)",
            f"attempt {last}" if last else "none",
        )
    console.print(table)
    return 0


def export_report(store: ObjectStore, run_id: str, out: Path) -> Path:
    status = load_report_status(store, validate_run_id(run_id))
    if not status.report.key:
        raise NotFound(f"run {run_id} has no report yet (state {_state(status.state)})")
    out.mkdir(parents=True, exist_ok=True)
    prefix = status.report.key.rsplit("/", 1)[0] + "/"
    for key in store.list(prefix):
        target = out / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        store.get_to_file(key, target)
    return out / status.report.key[len(prefix):]


def cmd_report(args: argparse.Namespace) -> int:
    store = open_store(args.store)
    out = Path(args.out or f"synthaug-report-{args.run}")
    index = export_report(store, args.run, out)
    console = _console()
    for md in sorted(out.glob("*.md")):
        console.print(md.read_text())
        break
    console.print(f"report: {index}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo plan end to end on this machine: embedded services, a local store."""
    console = _console()
    store = open_store(args.store or "file://.synthaug/store")
    plan = load_plan(DEMO_PLAN)
    manager = RunManager(store, parse_addresses(None, env={}), max_parallel=args.max_parallel)
    start = time.monotonic()
    try:
        live = LiveProgress(console)
        with live.progress:
            summary = manager.run(plan, on_start=live.attach)
    finally:
        manager.close()
    print_summary(console, summary, store)
    if summary.report is not None and isinstance(store, FileStore):
        index = export_report(store, summary.run_id, Path(args.out))
        console.print(f"report exported to {index}")
    console.print(f"demo finished in {time.monotonic() - start:.1f} s")
    return exit_code(summary)


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=None, help="object store URL (default $SYNTHAUG_STORE or file://.synthaug/store)")

    p = subparsers.add_parser("run", parents=[common], help="run an experiment plan", description="Run an experiment plan: every step cached, resumable.")
    p.add_argument("plan", help="plan YAML file")
    p.add_argument("--services", default=None, help="compositor=H:P[,H:P];gan=...;segmenter=...;evaluator=... (default: $SYNTHAUG_<NAME>_ADDR; none: embedded)")
    p.add_argument("--orchestrator", default=None, help="submit to a remote orchestrator at HOST:PORT instead of running here")
    p.add_argument("--dry-run", action="store_true", help="show the step graph, each step's code digest and why it is or is not cached; run nothing")
    p.add_argument("--recompute", default=None, metavar="KIND[,KIND…]",
                   help="compute these step kinds (e.g. evaluate,report) and every step that depends on them again, ignoring stored results")
    p.add_argument("--code-files", action="store_true", help="with --dry-run: list every file each step kind's code digest covers")
    p.add_argument("--max-parallel", type=int, default=8, help="steps running at once (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no live progress bars")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("status", parents=[common], help="list runs, or show one run's steps")
    p.add_argument("run", nargs="?", default=None, help="run id")
    p.add_argument("--orchestrator", default=None, help="ask a remote orchestrator at HOST:PORT")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("report", parents=[common], help="export a run's report (HTML, PNG, CSV, Markdown; the latest successful attempt's)")
    p.add_argument("run", help="run id")
    p.add_argument("--out", default=None, help="folder (default ./synthaug-report-RUN)")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("demo", parents=[common], help="procedural data + examples/demo.yaml end to end on this machine")
    p.add_argument("--out", default=".synthaug/demo-report", help="where to export the report (default .synthaug/demo-report)")
    p.add_argument("--max-parallel", type=int, default=8)
    p.set_defaults(func=cmd_demo)
