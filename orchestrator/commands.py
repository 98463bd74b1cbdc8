"""`synthaug run | status | report | demo` and `synthaug dataset push`: experiment plans from
the command line, on this machine or through a remote orchestrator (`--orchestrator ADDR`).

Remotely, nothing needs the orchestrator's object store: runs are listed and watched over
OrchestratorService, reports are streamed out (FetchReport) and datasets imported here are
sent in (PushDataset). Exit codes as everywhere (services/common/cli_support.py): a remote
run that failed because of its plan or data exits 2, any other failure 1.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import grpc
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ingest.cli_data import _subcommand_group
from orchestrator.plan import Plan, load_plan, load_plan_text, resolve_paths
from orchestrator.progress import RunProgress, duration_text, follow, progress_view, state_name
from orchestrator.results_table import TABLE_FILES, print_results
from orchestrator.runner import RunSummary, RunTracker
from orchestrator.runs import PreparedRun, RunManager, load_status, load_succeeded, stored_runs, validate_run_id
from orchestrator.settings import parse_addresses
from orchestrator.steps import code_digests
from orchestrator.transfer import collect, dataset_chunks, report_files, write_report
from services.common.cli_support import exit_code as exit_code_of
from services.common.client import open_channel
from services.common.errors import InvalidArgument, SynthaugError
from services.common.jobs import TERMINAL
from services.common.store import ObjectStore, open_store
from synthaug.v1 import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where the plans the CLI ships live: package data of an installed synthaug, else the checkout.
EXAMPLES_PACKAGE = "synthaug"
EXAMPLES_FOLDER = "examples"
STATE = common_pb2.JobState


def _console() -> Console:
    """Wide enough for the step tables when output goes to a file or a pipe."""
    console = Console()
    return console if console.is_terminal else Console(width=160)


# --- the plans the CLI ships ------------------------------------------------------------------


def example_plan_text(name: str, package: Any = None, checkout: Path | None = None) -> tuple[str, str, Path | None]:
    """The text of a shipped plan (e.g. "demo.yaml"), where it was found, and its folder when
    that is a real one (for relative paths). Looked up as package data first
    (`synthaug/examples/NAME` in an installed wheel), then in the checkout's examples/.
    `package` / `checkout` override those two places (tests)."""
    root = package if package is not None else importlib.resources.files(EXAMPLES_PACKAGE)
    packaged = root.joinpath(EXAMPLES_FOLDER).joinpath(name)
    if packaged.is_file():
        folder = Path(str(packaged)).parent if isinstance(packaged, Path) else None
        return packaged.read_text(), f"{EXAMPLES_PACKAGE}/{EXAMPLES_FOLDER}/{name} (package data)", folder
    local = (checkout if checkout is not None else REPO_ROOT / EXAMPLES_FOLDER) / name
    if local.is_file():
        return local.read_text(), str(local), local.parent
    raise InvalidArgument(f"the plan {name} ships with synthaug but was found neither as package data ({EXAMPLES_PACKAGE}/{EXAMPLES_FOLDER}/) "
                          f"nor in {local.parent}: reinstall synthaug")


def example_plan(name: str) -> tuple[Plan, str]:
    text, source, folder = example_plan_text(name)
    plan = load_plan_text(text, source)
    return (resolve_paths(plan, folder) if folder is not None else plan), source


# --- talking to a remote orchestrator ---------------------------------------------------------


def remote_error(address: str, exc: grpc.RpcError) -> SynthaugError:
    """An RPC's failure as the error the CLI reports (and maps to its exit code)."""
    code = exc.code()
    details = exc.details() or code.name
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        message = f"orchestrator at {address} did not answer ({code.name}: {details}); is it running, and is the address right?"
    elif code == grpc.StatusCode.UNAUTHENTICATED:
        message = f"orchestrator at {address} refused the call: {details} (set SYNTHAUG_AUTH_TOKEN or SYNTHAUG_AUTH_TOKEN_FILE)"
    else:
        message = f"orchestrator at {address}: {details}"
    err = SynthaugError(message)
    err.code = code.name
    return err


@contextlib.contextmanager
def orchestrator_stub(address: str) -> Iterator[orchestrator_pb2_grpc.OrchestratorServiceStub]:
    """A stub for the orchestrator at `address`; its RPC errors become SynthaugErrors."""
    channel = open_channel(address)
    try:
        yield orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    except grpc.RpcError as exc:
        raise remote_error(address, exc) from None
    finally:
        channel.close()


# --- run ---------------------------------------------------------------------------------------


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
    line = f"training budget: {', '.join(f'{k}={v}' for k, v in budget.items())}"
    if graph.plan.synthesis_real:
        line += f"; synthesis from the first {graph.plan.synthesis_real} real images"
    console.print(line)


class LocalFollower:
    """Progress of a run in this process: announces it when it starts, then renders its
    events (live bars on a terminal, plain lines elsewhere) until it ends."""

    def __init__(self, console: Console, store_url: str, show: bool = True):
        self.console = console
        self.store_url = store_url
        self.show = show
        self.view: Any = None
        self.thread: threading.Thread | None = None

    def start(self, tracker: RunTracker) -> None:
        model = RunProgress(tracker.status())
        cached = sum(1 for r in tracker.records.values() if r.cached)
        self.console.print(f"run {tracker.run_id} (plan {tracker.plan_name}): {model.total} steps, {cached} cached; store {self.store_url}")
        if not self.show:
            return
        self.view = progress_view(model, self.console)
        self.view.start()
        self.thread = threading.Thread(target=follow, args=(self.view, tracker.watch()), name="progress", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread is not None:
            self.thread.join(timeout=10)  # the run's final event ends it
        if self.view is not None:
            self.view.stop()


def print_summary(console: Console, summary: RunSummary, store: ObjectStore) -> None:
    forced = f" ({summary.forced} forced)" if summary.forced else ""
    console.print(
        f"run {summary.run_id} attempt {summary.attempt}: {state_name(summary.state)} in {summary.wall_seconds:.1f} s — "
        f"{summary.executed} steps executed{forced}, {summary.cached} cached; "
        f"orchestration overhead {summary.overhead_seconds:.2f} s ({100 * summary.overhead_fraction:.1f}% of step time)"
    )
    for failure in summary.failed:
        console.print(f"[red]failed:[/red] {escape(failure)}", highlight=False)
    if summary.report is not None:
        print_results_table(console, store, summary.run_id)


def print_results_table(console: Console, store: ObjectStore, run_id: str) -> None:
    """The run's results table, from its report's CSV files, and where the report is."""
    _status, prefix, keys = report_files(store, run_id)
    files = {name: store.get_bytes(prefix + name) for name in TABLE_FILES if prefix + name in keys}
    print_results(console, files)
    root = getattr(store, "root", None)
    location = Path(root, prefix, "index.html") if root is not None else f"{store.url} key {prefix}index.html"
    console.print(f"report: {location} (synthaug report {run_id} --out DIR exports it)")


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
        return _run_remote(args, console, Path(args.plan).read_text(), recompute)
    store = open_store(args.store)
    manager = RunManager(store, parse_addresses(args.services), max_parallel=args.max_parallel)
    try:
        if args.dry_run:
            prepared = manager.prepare(plan, recompute)
            print_graph(console, prepared, code_files=args.code_files)
            console.print(f"run id {prepared.run_id}; store {store.url}")
            return 0
        follower = LocalFollower(console, store.url, show=not args.no_progress)
        cancel = threading.Event()
        try:
            summary = manager.run(plan, on_start=follower.start, cancel=cancel, recompute=recompute)
        except KeyboardInterrupt:
            cancel.set()
            raise
        finally:
            follower.stop()
        print_summary(console, summary, store)
        return exit_code(summary)
    finally:
        manager.close()


def _run_remote(args: argparse.Namespace, console: Console, text: str, recompute: list[str]) -> int:
    address = args.orchestrator
    with orchestrator_stub(address) as stub:
        request = orchestrator_pb2.SubmitPlanRequest(plan_yaml=text, dry_run=args.dry_run, recompute=recompute)
        ref = stub.SubmitPlan(request, timeout=60)
        status = stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=ref.id), timeout=30)
        model = RunProgress(status)
        cached = sum(1 for s in status.steps if s.cached)
        console.print(f"run {ref.id} (plan {ref.plan_name}) on {address}: {model.total} steps, {cached} cached")
        if args.dry_run:
            _print_status(console, status)
            return 0
        view = None if args.no_progress else progress_view(model, console)
        if view is not None:
            view.start()
        try:
            for event in stub.WatchRun(orchestrator_pb2.WatchRunRequest(run_id=ref.id)):
                if view is not None:
                    view.event(event)
                if event.run_state in TERMINAL and not event.step.key:
                    break
        except KeyboardInterrupt:
            console.print(f"stopped following; the run goes on at {address} (synthaug status {ref.id} --orchestrator {address})")
            raise
        finally:
            if view is not None:
                view.stop()
        status = stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=ref.id), timeout=30)
        done = RunProgress(status)
        console.print(f"run {ref.id}: {state_name(status.state)} ({done.done}/{done.total} steps done, {done.cached} cached)")
        if status.state == common_pb2.JOB_STATE_SUCCEEDED:
            if status.report.key:
                files = collect(stub.FetchReport(orchestrator_pb2.FetchReportRequest(run_id=ref.id, paths=list(TABLE_FILES)), timeout=120))
                print_results(console, files)
                console.print(f"report: synthaug report {ref.id} --orchestrator {address} --out DIR")
            return 0
        if status.error.message:
            console.print(f"[red]error:[/red] {escape(status.error.message)}", highlight=False)
        return exit_code_of(status.error.code or "INTERNAL") if status.state == common_pb2.JOB_STATE_FAILED else 1


def _print_status(console: Console, status: orchestrator_pb2.RunStatus) -> None:
    table = Table(title=f"run {status.run.id} ({status.run.plan_name}): {state_name(status.state)}")
    for col in ("kind", "arm", "seed", "state", "progress", "cached", "message"):
        table.add_column(col)
    for s in status.steps:
        seed = str(s.seed) if s.arm else ""
        table.add_row(s.kind, s.arm, seed, state_name(s.state), f"{100 * s.progress:.0f}%", "yes" if s.cached else "", escape(s.message[:80]))
    console.print(table)
    if status.error.message:
        console.print(f"[red]error:[/red] {escape(status.error.message)}", highlight=False)
    if status.report.key:
        console.print(f"report: {status.report.key}")


# --- status ------------------------------------------------------------------------------------


def _when(unix: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(unix)) if unix else "?"


def print_runs(console: Console, runs: list[orchestrator_pb2.RunInfo], where: str, now: float | None = None) -> None:
    """One row per run, newest first: state, steps done of all, when, how long, what ran and
    the orchestration overhead (a finished attempt's)."""
    if not runs:
        console.print(f"no runs in {where}")
        return
    now = time.time() if now is None else now
    table = Table(title=f"runs in {where} (each run's latest attempt, newest first)")
    for col in ("run", "plan", "attempt", "state", "steps", "started", "took", "executed", "cached", "overhead", "last success"):
        table.add_column(col)
    for r in runs:
        running = r.state not in TERMINAL
        took = duration_text((now if running else r.finished) - r.started) if r.started and (running or r.finished) else ""
        table.add_row(
            r.run.id, r.run.plan_name, str(r.attempt or "?"), state_name(r.state), f"{r.steps_done}/{r.steps_total}", _when(r.started),
            f"{took} so far" if running and took else took, "" if running else str(r.executed), "" if running else str(r.cached),
            "" if running else f"{r.overhead_seconds:.2f} s ({100 * r.overhead_fraction:.1f}%)",
            f"attempt {r.last_succeeded_attempt}" if r.last_succeeded_attempt else "none",
        )
    console.print(table)


def cmd_status(args: argparse.Namespace) -> int:
    console = _console()
    if args.orchestrator:
        with orchestrator_stub(args.orchestrator) as stub:
            if args.run:
                _print_status(console, stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=validate_run_id(args.run)), timeout=30))
            else:
                listed = stub.ListRuns(orchestrator_pb2.ListRunsRequest(limit=args.limit), timeout=60)
                print_runs(console, list(listed.runs), f"the orchestrator at {args.orchestrator}")
        return 0
    store = open_store(args.store)
    if args.run:
        status = load_status(store, args.run)
        _print_status(console, status)
        success = load_succeeded(store, args.run)
        if status.state != STATE.Value("JOB_STATE_SUCCEEDED") and success is not None:
            console.print(f"latest successful attempt: {success['attempt']}; its report: {success['report'] or '(none)'} (synthaug report {args.run})")
        return 0
    runs = stored_runs(store)
    print_runs(console, runs[: args.limit] if args.limit > 0 else runs, store.url)
    return 0


# --- report ------------------------------------------------------------------------------------


def export_report(store: ObjectStore, run_id: str, out: Path) -> Path:
    """Copy the run's report folder (the attempt `synthaug report` shows) to `out`; its index."""
    _status, prefix, keys = report_files(store, run_id)
    out.mkdir(parents=True, exist_ok=True)
    for key in keys:
        target = out / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        store.get_to_file(key, target)
    return out / "index.html"


def cmd_report(args: argparse.Namespace) -> int:
    run_id = validate_run_id(args.run)
    out = Path(args.out or f"synthaug-report-{run_id}")
    if args.orchestrator:
        with orchestrator_stub(args.orchestrator) as stub:
            written = write_report(stub.FetchReport(orchestrator_pb2.FetchReportRequest(run_id=run_id), timeout=600), out)
        if not written:
            raise InvalidArgument(f"the orchestrator at {args.orchestrator} sent no report files for run {run_id}")
        index = out / "index.html"
    else:
        index = export_report(open_store(args.store), run_id, out)
    console = _console()
    print_results(console, {name: (out / name).read_bytes() for name in TABLE_FILES if (out / name).is_file()})
    console.print(f"report: {index}")
    return 0


# --- demo --------------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """The demo plan end to end on this machine: embedded services, the store of --store,
    else $SYNTHAUG_STORE, else file://.synthaug/store."""
    console = _console()
    store = open_store(args.store)
    plan, source = example_plan("demo.yaml")
    manager = RunManager(store, parse_addresses(None, env={}), max_parallel=args.max_parallel)
    start = time.monotonic()
    try:
        if args.dry_run:
            print_graph(console, manager.prepare(plan))
            console.print(f"plan {source}; store {store.url}")
            return 0
        follower = LocalFollower(console, store.url)
        try:
            summary = manager.run(plan, on_start=follower.start)
        finally:
            follower.stop()
    finally:
        manager.close()
    print_summary(console, summary, store)
    if summary.report is not None:
        index = export_report(store, summary.run_id, Path(args.out))
        console.print(f"report exported to {index}")
    console.print(f"demo finished in {time.monotonic() - start:.1f} s")
    return exit_code(summary)


# --- dataset push ------------------------------------------------------------------------------


def cmd_dataset_push(args: argparse.Namespace) -> int:
    """Send a dataset of the local store to a remote orchestrator's store."""
    store = open_store(args.store)
    with orchestrator_stub(args.orchestrator) as stub:
        ref = stub.PushDataset(dataset_chunks(store, args.dataset, replace=args.replace), timeout=args.timeout)
    named = f" as {ref.name}" if ref.name else ""
    print(f"pushed dataset {ref.id}{named} to {args.orchestrator}: {ref.num_images} images, {ref.num_instances} instances")
    return 0


# --- registration ------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--store", default=None, help="object store URL (default $SYNTHAUG_STORE or file://.synthaug/store)")
    remote = "a remote orchestrator at HOST:PORT (compose: localhost:50050); its token from $SYNTHAUG_AUTH_TOKEN(_FILE)"

    p = subparsers.add_parser(
        "run", parents=[common], help="run an experiment plan", description="Run an experiment plan: every step cached, resumable.",
        epilog="Prints the run id and plan when the run starts, then its progress: steps done of all, an ETA (from the "
        "durations of this run's finished steps of each kind; see orchestrator/progress.py) and each running step — live "
        "bars on a terminal, plain lines elsewhere (one per step start and end, and every 30 s per running step).",
    )
    p.add_argument("plan", help="plan YAML file")
    p.add_argument("--services", default=None, help="compositor=H:P[,H:P];gan=...;segmenter=...;evaluator=... (default: $SYNTHAUG_<NAME>_ADDR; none: embedded)")
    p.add_argument("--orchestrator", default=None, help=f"submit to {remote} instead of running here; Ctrl-C stops following, not the run")
    p.add_argument("--dry-run", action="store_true", help="show the step graph, each step's code digest and why it is or is not cached; run nothing")
    p.add_argument("--recompute", default=None, metavar="KIND[,KIND…]",
                   help="compute these step kinds (e.g. evaluate,report) and every step that depends on them again, ignoring stored results")
    p.add_argument("--code-files", action="store_true", help="with --dry-run: list every file each step kind's code digest covers")
    p.add_argument("--max-parallel", type=int, default=8, help="steps running at once (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress display (only the start line and the summary)")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("status", parents=[common], help="list runs (running ones too), or show one run's steps")
    p.add_argument("run", nargs="?", default=None, help="run id")
    p.add_argument("--orchestrator", default=None, help=f"ask {remote}")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="list only the N newest runs (default: all)")
    p.set_defaults(func=cmd_status)

    p = subparsers.add_parser("report", parents=[common], help="export a run's report (HTML, figures, CSV, LaTeX, Markdown; the latest successful attempt's)")
    p.add_argument("run", help="run id")
    p.add_argument("--out", default=None, help="folder (default ./synthaug-report-RUN)")
    p.add_argument("--orchestrator", default=None, help=f"fetch it from {remote} (no store access needed)")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("demo", parents=[common], help="procedural data + the demo plan (examples/demo.yaml) end to end on this machine")
    p.add_argument("--out", default=".synthaug/demo-report", help="where to export the report (default .synthaug/demo-report)")
    p.add_argument("--max-parallel", type=int, default=8)
    p.add_argument("--dry-run", action="store_true", help="show the demo's step graph and the store it would use; run nothing")
    p.set_defaults(func=cmd_demo)

    datasets = _subcommand_group(subparsers, "dataset", "datasets in the store: demo data, list, show, preview; push to a remote orchestrator")
    p = datasets.add_parser(
        "push", parents=[common], help="send a dataset of the local store to a remote orchestrator's store",
        description="Send a dataset (its manifest and every image) from the local store (--store) to the store of a remote "
        "orchestrator, through the orchestrator: no access to its store needed. Every image is checked against its sha256 on "
        "arrival; nothing is registered unless all arrived. The dataset keeps its id and name there.",
        epilog="Example: synthaug import masks --images DATA/images --masks DATA/masks --name isic-train && "
        "synthaug dataset push isic-train --orchestrator localhost:50050",
    )
    p.add_argument("dataset", metavar="NAME_OR_ID", help="registered name or 32-hex id in the local store")
    p.add_argument("--orchestrator", required=True, help=remote)
    p.add_argument("--replace", action="store_true", help="let the name move to this dataset when it names another one there")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="S", help="give up after S seconds (default 3600)")
    p.set_defaults(func=cmd_dataset_push)
