"""The tutorial preset three ways in one process: what the pipeline costs over plain PyTorch.

    .venv/bin/python benchmarks/pipeline_vs_raw.py [--rounds 30] [--clients-per-task 8 0]
                                                   [--repeat 1] [--server ephemeral|harness]

(a)  a plain loop: sample -> `train_cohort` -> `aggregate_weighted_mean` -> `evaluate`, no store,
     no orchestration; as in the tutorial nothing is promoted, each round continues from the
     aggregate it just made.
(a') `fl.engine.run_training` on a temporary local store: the flow's steps with registration,
     gating and checkpoint I/O, without Prefect.
(b)  the `federated_training` flow on a temporary local store, against a Prefect server started
     once before any timed run (the ephemeral server a user gets; `--server harness` uses
     `prefect_test_harness` instead). Its start-up and a trivial flow run are timed on their own.

Every number printed is measured in this run. Wall time on a shared machine follows its load, so
CPU seconds are printed too: this process's (all threads) and, for (b), the Prefect server's.
"in fl steps" is the time spent inside the `fl.rounds` step functions, summed over threads; the
rest of (b) is orchestration. The ephemeral server keeps its database in a fresh temporary
PREFECT_HOME (unless `--prefect-home` names one), so it neither reads nor grows anyone's
`~/.prefect`. Prefect's console handler is set to WARNING (the API handler still ships every
INFO record, as for a user); set PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL to see the logs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL = "bench"
PRESET = "tutorial"
# The `fl.rounds` functions the engine and the Prefect tasks call (as `steps.<name>`).
STEPS = ("resume", "sample", "train_clients", "aggregate", "evaluate", "gate", "register",
         "finish_round")  # fmt: skip


@dataclass
class Timing:
    """Wall and CPU seconds of one timed block, and the 1-minute load average after it."""

    wall: float = 0.0
    cpu: float = 0.0  # this process, all threads
    load_after: float = 0.0


@dataclass
class RunResult:
    """One run of one variant: its timing, per-round accuracies and registered checksums."""

    timing: Timing
    accuracies: list[float]
    sha256s: list[str]
    in_steps: float = 0.0  # seconds inside `fl.rounds` steps, summed over threads
    steps_covered: float = 0.0  # wall seconds during which some step was running
    server_cpu: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def timed(into: Timing) -> Iterator[Timing]:
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield into
    finally:
        into.wall = time.perf_counter() - wall
        into.cpu = time.process_time() - cpu
        into.load_after = os.getloadavg()[0]


@dataclass
class StepClock:
    """Intervals spent inside `fl.rounds` steps, from any thread."""

    intervals: list[tuple[float, float]] = field(default_factory=list)

    def summed(self) -> float:
        return sum(end - start for start, end in self.intervals)

    def covered(self) -> float:
        """Wall time during which at least one step was running (overlaps counted once)."""
        total, reach = 0.0, float("-inf")
        for start, end in sorted(self.intervals):
            total += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        return total


@contextmanager
def step_clock() -> Iterator[StepClock]:
    """Time every `fl.rounds` step while the block runs (wrapped, then restored)."""
    from fl import rounds

    clock = StepClock()
    lock = threading.Lock()

    def clocked(fn: Callable[..., Any]) -> Callable[..., Any]:
        def step(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with lock:
                    clock.intervals.append((start, time.perf_counter()))

        return step

    originals = {name: getattr(rounds, name) for name in STEPS if hasattr(rounds, name)}
    for name, fn in originals.items():
        setattr(rounds, name, clocked(fn))
    try:
        yield clock
    finally:
        for name, fn in originals.items():
            setattr(rounds, name, fn)


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU of another process (Linux /proc); 0.0 where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----- (a) plain PyTorch -------------------------------------------------------------------
def run_raw(config: Any) -> RunResult:
    """The tutorial's loop over the library functions, with nothing else around them."""
    from fl.aggregation import aggregate_weighted_mean
    from fl.data import load_federation
    from fl.models import build_model, initial_weights
    from fl.sampling import sample_clients
    from fl.serialization import sha256_hex, weights_to_bytes
    from fl.training import evaluate, train_cohort

    rounds, timing = config.rounds, Timing()
    accuracies = []
    with timed(timing):
        fed = load_federation(config.data, rounds.seed)
        weights = initial_weights(config.model, fed.input_dim, fed.num_classes, rounds.seed)
        train_model = build_model(config.model, fed.input_dim, fed.num_classes)
        eval_model = build_model(config.model, fed.input_dim, fed.num_classes)
        for server_round in range(1, rounds.per_run + 1):
            sampled = sample_clients(
                config.data.num_clients, rounds.clients_per_round, seed=rounds.seed,
                server_round=server_round,
            )  # fmt: skip
            updates = train_cohort(
                train_model, weights, [fed.client(cid) for cid in sampled], config.train,
                seed=rounds.seed, server_round=server_round,
            )  # fmt: skip
            weights = aggregate_weighted_mean(updates, weights)
            result = evaluate(eval_model, weights, fed.holdout_x, fed.holdout_y, fed.num_classes)
            accuracies.append(result.accuracy)
    # The checksum is taken outside the timed block: (a) itself never serializes anything.
    return RunResult(timing, accuracies, [sha256_hex(weights_to_bytes(weights))])


# ----- (a') engine, (b) flow -----------------------------------------------------------------
def registered_sha256s(store_url: str, versions: list[int]) -> list[str]:
    from fl.registry import Registry
    from fl.store import open_store

    registry = Registry(open_store(store_url), MODEL)
    return [registry.manifest(version)["sha256"] for version in versions]


def run_engine(config: Any, store_url: str) -> RunResult:
    from fl.engine import run_training

    timing = Timing()
    with step_clock() as clock, timed(timing):
        summary = run_training(config, model=MODEL, store_url=store_url)
    result = RunResult(
        timing,
        [r.accuracy for r in summary.rounds],
        registered_sha256s(store_url, summary.versions_registered),
        in_steps=clock.summed(),
        steps_covered=clock.covered(),
    )
    result.extra["summary"] = summary.model_dump(mode="json")
    return result


def count_task_runs(flow_run_id: Any, settle_seconds: float = 30.0) -> tuple[int, int]:
    """Task runs of a flow run and how many ran more than once, once the server's count settles.

    The server records task runs from events in batches, so the count can lag the flow's return.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    previous, deadline = -1, time.monotonic() + settle_seconds
    with get_client(sync_client=True) as client:
        while True:
            runs: list[Any] = []
            while page := client.read_task_runs(
                flow_run_filter=flow_runs, limit=200, offset=len(runs)
            ):
                runs.extend(page)
            if (len(runs) == previous and runs) or time.monotonic() > deadline:
                return len(runs), sum(1 for run in runs if (run.run_count or 0) > 1)
            previous = len(runs)
            time.sleep(1.0)


def run_flow(
    config: Any, store_url: str, server_pid: int | None, extra: list[str] | None = None
) -> RunResult:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.training import federated_training

    timing = Timing()
    server_cpu = process_cpu_seconds(server_pid)
    with (
        temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        step_clock() as clock,
        timed(timing),
    ):
        state = federated_training(
            model=MODEL, store=store_url, preset=PRESET, rounds=config.rounds.per_run,
            overrides=[f"rounds.clients_per_task={config.rounds.clients_per_task}", *(extra or [])],
            return_state=True,
        )  # fmt: skip
    server_cpu = process_cpu_seconds(server_pid) - server_cpu
    summary = state.result()
    tasks, retried = count_task_runs(state.state_details.flow_run_id)
    result = RunResult(
        timing,
        [r["accuracy"] for r in summary["rounds"]],
        registered_sha256s(store_url, summary["versions_registered"]),
        in_steps=clock.summed(),
        steps_covered=clock.covered(),
        server_cpu=server_cpu,
    )
    result.extra.update(summary=summary, tasks=tasks, retried=retried)
    return result


# ----- the Prefect server --------------------------------------------------------------------
@dataclass
class ServerInfo:
    kind: str
    startup: Timing
    trivial_first: Timing
    trivial_second: Timing
    pid: int | None


def stop_ephemeral_server() -> None:
    """Ship the logs and events still queued, then stop the server (before its home is removed)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    with suppress(RuntimeError):  # no log was ever sent
        APILogWorker.instance().drain()
    EventsWorker.drain_all()
    SubprocessASGIServer().stop()


def start_server(kind: str, stack: ExitStack) -> ServerInfo:
    """Start the server once and time it, then time two trivial flow runs (first-use costs)."""
    from prefect import flow
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    startup = Timing()
    with timed(startup):
        if kind == "harness":
            from prefect.testing.utilities import prefect_test_harness

            stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        else:  # exactly what Prefect's client does on first use when no PREFECT_API_URL is set
            stack.callback(stop_ephemeral_server)
            SubprocessASGIServer().start()
    server = SubprocessASGIServer._instances.get(None)
    pid = server.server_process.pid if server and server.server_process else None

    @flow(name="bench-trivial")
    def trivial() -> int:
        return 1

    first, second = Timing(), Timing()
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        with timed(first):
            trivial()
        with timed(second):
            trivial()
    return ServerInfo(kind, startup, first, second, pid)


# ----- report --------------------------------------------------------------------------------
def agreement(left: RunResult, right: RunResult) -> str:
    """How closely two runs' per-round accuracies (and final weights) agree."""
    diffs = [abs(a - b) for a, b in zip(left.accuracies, right.accuracies, strict=False)]
    first = next((i + 1 for i, d in enumerate(diffs) if d > 0), None)
    same_weights = left.sha256s[-1:] == right.sha256s[-1:]
    where = (
        "per-round accuracies identical"
        if first is None
        else f"accuracies first differ in round {first}, max |diff| {max(diffs):.4f}"
    )
    return f"{where}; final weights {'bitwise identical' if same_weights else 'differ'}"


def median_of(results: list[RunResult]) -> RunResult:
    """A result whose timings are the medians over repeats (accuracies from the last run)."""
    timings = [r.timing for r in results]
    median = Timing(*(statistics.median(getattr(t, k) for t in timings)
                      for k in ("wall", "cpu", "load_after")))  # fmt: skip
    return RunResult(
        median, results[-1].accuracies, results[-1].sha256s,
        in_steps=statistics.median(r.in_steps for r in results),
        steps_covered=statistics.median(r.steps_covered for r in results),
        server_cpu=statistics.median(r.server_cpu for r in results),
        extra=results[-1].extra,
    )  # fmt: skip


LABELS = {"a": "(a)  plain PyTorch", "a'": "(a') engine + LocalStore",
          "b": "(b)  Prefect flow + LocalStore"}  # fmt: skip


def describe(label: str, r: RunResult) -> str:
    times = f"wall {r.timing.wall:7.3f} s  cpu {r.timing.cpu:7.3f} s"
    more = f"  in fl steps {r.in_steps:7.3f} s" if r.in_steps else ""
    more += f"  server cpu {r.server_cpu:6.2f} s" if r.server_cpu else ""
    return f"  {label:<36} {times}{more}  load {r.timing.load_after:5.2f}"


def ratios(name: str, b: float, a: float, a1: float) -> str:
    return f"  {name}: b/a = {b / a:.2f}   b/a' = {b / a1:.2f}   a'/a = {a1 / a:.2f}"


def report(clients_per_task: int, runs: dict[str, list[RunResult]]) -> None:
    repeats = len(runs["a"])
    print(f"\n== clients_per_task={clients_per_task} ==")
    for repeat in range(repeats):
        for key, label in LABELS.items():
            print(describe(f"{label} #{repeat + 1}", runs[key][repeat]))
    a, a1, b = (median_of(runs[key]) for key in LABELS)
    tasks, retried = b.extra["tasks"], b.extra["retried"]
    b_cpu = b.timing.cpu + b.server_cpu
    print(f"  medians of {repeats}; server start-up excluded throughout")
    print(ratios("wall", b.timing.wall, a.timing.wall, a1.timing.wall))
    print(ratios("cpu (b incl. server)", b_cpu, a.timing.cpu, a1.timing.cpu))
    print(f"  task runs in (b): {tasks} ({retried} ran more than once)")
    per_task_wall = 1000 * (b.timing.wall - a1.timing.wall) / tasks
    per_task_cpu = 1000 * (b_cpu - a1.timing.cpu) / tasks
    print(f"  overhead per task, (b - a')/tasks: wall {per_task_wall:.1f} ms,"
          f" cpu incl. server {per_task_cpu:.1f} ms")  # fmt: skip
    outside = b.timing.wall - b.steps_covered
    print(f"  (b) wall with no fl step running: {outside:.3f} s, {1000 * outside / tasks:.1f} ms"
          " a task")  # fmt: skip
    print(f"  time in fl steps (summed over threads): (b) {b.in_steps:.3f} s,"
          f" (a') {a1.in_steps:.3f} s")  # fmt: skip
    finals = (f"({key}) {r.accuracies[-1]:.4f}" for key, r in zip(LABELS, (a, a1, b), strict=True))
    print(f"  final accuracy: {'   '.join(finals)}")
    print(f"  (a) vs (a'): {agreement(a, a1)}")
    print(f"  (a') vs (b): {agreement(a1, b)}")
    rounds = a1.extra["summary"]["rounds"]
    rejected = sum(1 for r in rounds if not r["gate_passed"])
    print(f"  (a') gate: {rejected} of {len(rounds)} rounds rejected, promoted versions "
          f"{a1.extra['summary']['versions_promoted']}")  # fmt: skip


# ----- main ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of each run (default 30)")
    parser.add_argument(
        "--clients-per-task", type=int, nargs="+", default=[8],
        help="clients per training task, 0 = one task per client; several values run in turn",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant (default 1)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="extra config override for every variant, e.g. train.local_epochs=20 (repeatable)",
    )  # fmt: skip
    parser.add_argument("--server", choices=["ephemeral", "harness"], default="ephemeral")
    parser.add_argument("--prefect-home", help="PREFECT_HOME for the server (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeat < 1 or min(args.clients_per_task) < 0:
        parser.error("--rounds and --repeat must be at least 1, --clients-per-task at least 0")
    return args


def prepare_environment(args: argparse.Namespace, scratch: Path) -> None:
    """Prefect reads these when it is imported: set them first, then Fedship's own defaults."""
    if os.environ.get("PREFECT_API_URL"):
        sys.exit("unset PREFECT_API_URL: this benchmark starts its own Prefect server")
    os.environ["PREFECT_HOME"] = args.prefect_home or str(scratch / "prefect-home")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    import tasks  # noqa: F401  (Fedship's Prefect defaults, before Prefect is imported)


def warm_up() -> dict[str, Timing]:
    """One-off costs every variant would otherwise pay on first use, timed on their own."""
    names = ("import torch + fl", "first optimizer", "import prefect + flow")
    warm = {name: Timing() for name in names}
    with timed(warm["import torch + fl"]):
        import torch

        from fl import aggregation, engine, training  # noqa: F401
    with timed(warm["first optimizer"]):  # torch.optim imports torch._dynamo on first use
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with timed(warm["import prefect + flow"]):
        import flows.training  # noqa: F401
    return warm


def run_all(args: argparse.Namespace, scratch: Path, stack: ExitStack) -> None:
    from fl.config import load_config

    print(f"machine: {load_text()} (start)")
    for name, t in warm_up().items():
        print(f"  one-off: {name:<24} wall {t.wall:7.3f} s  cpu {t.cpu:7.3f} s")
    server = start_server(args.server, stack)
    print(f"server start-up ({server.kind}): {server.startup.wall:.3f} s wall"
          f" (load {server.startup.load_after:.2f})")  # fmt: skip
    print(f"trivial flow run: first {server.trivial_first.wall:.3f} s, second"
          f" {server.trivial_second.wall:.3f} s")  # fmt: skip
    for clients_per_task in args.clients_per_task:
        overrides = [
            f"rounds.per_run={args.rounds}",
            f"rounds.clients_per_task={clients_per_task}",
            *args.overrides,
        ]
        config = load_config(preset=PRESET, overrides=overrides)
        runs: dict[str, list[RunResult]] = {"a": [], "a'": [], "b": []}
        for repeat in range(args.repeat):
            where = scratch / f"stores-{clients_per_task}-{repeat}"
            runs["a"].append(run_raw(config))
            runs["a'"].append(run_engine(config, str(where / "engine")))
            runs["b"].append(run_flow(config, str(where / "flow"), server.pid, args.overrides))
        report(clients_per_task, runs)
    print(f"\nmachine: {load_text()} (end)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="fedship-bench-") as tmp, ExitStack() as stack:
        scratch = Path(tmp)
        prepare_environment(args, scratch)
        run_all(args, scratch, stack)


if __name__ == "__main__":
    main()
