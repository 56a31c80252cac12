"""The tutorial preset three ways in one process: what the pipeline costs over plain PyTorch.

    .venv/bin/python benchmarks/pipeline_vs_raw.py [--rounds 30] [--clients-per-task 8 0] [--repeat 1]

(a)  a plain loop: sample -> `train_cohort` -> `aggregate_weighted_mean` -> `evaluate`, no store,
     no orchestration; as in the tutorial nothing is promoted, each round continues from the
     aggregate it just made.
(a') `fl.engine.run_training` on a temporary local store: the flow's steps with registration,
     gating and checkpoint I/O, without Prefect.
(b)  the `federated_training` flow on a temporary local store, against a Prefect server started
     once before any timed run (the ephemeral server a user gets; `--server harness` uses
     `prefect_test_harness` instead). Its start-up and a trivial flow run are timed on their own.

Every number printed is measured in this run. The ephemeral server keeps its database in a fresh
temporary PREFECT_HOME (unless `--prefect-home` names one), so it neither reads nor grows
anyone's `~/.prefect`. Prefect's console handler is set to WARNING (the API handler still ships
every INFO record, as for a user); set PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL to see the logs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL = "bench"
PRESET = "tutorial"


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


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of another process (Linux /proc), or None where it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
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
    accuracies, sha256s = [], []
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
    # Checksums outside the timed block: (a) itself never serializes anything.
    sha256s.append(sha256_hex(weights_to_bytes(weights)))
    return RunResult(timing, accuracies, sha256s)


# ----- (a') engine, (b) flow -----------------------------------------------------------------
def registered_sha256s(store_url: str, versions: list[int]) -> list[str]:
    from fl.registry import Registry
    from fl.store import open_store

    registry = Registry(open_store(store_url), MODEL)
    return [registry.manifest(version)["sha256"] for version in versions]


def run_engine(config: Any, store_url: str) -> RunResult:
    from fl.engine import run_training

    timing = Timing()
    with timed(timing):
        summary = run_training(config, model=MODEL, store_url=store_url)
    result = RunResult(
        timing,
        [r.accuracy for r in summary.rounds],
        registered_sha256s(store_url, summary.versions_registered),
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
            runs, offset = [], 0
            while page := client.read_task_runs(flow_run_filter=flow_runs, limit=200, offset=offset):
                runs.extend(page)
                offset += len(page)
            if (len(runs) == previous and runs) or time.monotonic() > deadline:
                return len(runs), sum(1 for run in runs if (run.run_count or 0) > 1)
            previous = len(runs)
            time.sleep(1.0)


def run_flow(config: Any, store_url: str, server_pid: int | None) -> RunResult:
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    from flows.training import federated_training

    timing = Timing()
    server_cpu = process_cpu_seconds(server_pid) if server_pid else None
    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}), timed(timing):
        state = federated_training(
            model=MODEL, store=store_url, preset=PRESET, rounds=config.rounds.per_run,
            overrides=[f"rounds.clients_per_task={config.rounds.clients_per_task}"],
            return_state=True,
        )  # fmt: skip
    summary = state.result()
    if server_cpu is not None and server_pid:
        after = process_cpu_seconds(server_pid)
        server_cpu = None if after is None else after - server_cpu
    tasks, retried = count_task_runs(state.state_details.flow_run_id)
    result = RunResult(
        timing,
        [r["accuracy"] for r in summary["rounds"]],
        registered_sha256s(store_url, summary["versions_registered"]),
    )
    result.extra.update(summary=summary, tasks=tasks, retried=retried, server_cpu=server_cpu)
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

    try:
        APILogWorker.instance().drain()
    except RuntimeError:
        pass  # no log was ever sent
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
    pairs = list(zip(left.accuracies, right.accuracies, strict=False))
    diffs = [abs(a - b) for a, b in pairs]
    first = next((i + 1 for i, d in enumerate(diffs) if d > 0), None)
    same_weights = left.sha256s[-1:] == right.sha256s[-1:]
    where = "identical in every round" if first is None else (
        f"first differ in round {first}, max |diff| {max(diffs):.4f}"
    )
    return f"{where}; final weights {'bitwise identical' if same_weights else 'differ'}"


def median_timing(timings: list[Timing]) -> Timing:
    return Timing(
        statistics.median(t.wall for t in timings),
        statistics.median(t.cpu for t in timings),
        statistics.median(t.load_after for t in timings),
    )


def describe(name: str, t: Timing) -> str:
    return f"  {name:<34} wall {t.wall:8.3f} s   cpu {t.cpu:8.3f} s   load after {t.load_after:5.2f}"


def report(clients_per_task: int, runs: dict[str, list[RunResult]]) -> None:
    a, a1, b = (median_timing([r.timing for r in runs[k]]) for k in ("a", "a'", "b"))
    last = {k: v[-1] for k, v in runs.items()}
    tasks = last["b"].extra["tasks"]
    print(f"\n== clients_per_task={clients_per_task} ({len(runs['a'])} repeat(s), medians) ==")
    for repeat in range(len(runs["a"])):
        for key, label in (("a", "(a)  plain PyTorch"), ("a'", "(a') engine + LocalStore"),
                           ("b", "(b)  Prefect flow + LocalStore")):  # fmt: skip
            print(describe(f"{label} #{repeat + 1}", runs[key][repeat].timing))
    print(f"  b/a  = {b.wall / a.wall:.2f}   b/a' = {b.wall / a1.wall:.2f}   a'/a = {a1.wall / a.wall:.2f}"
          "   (server start-up excluded)")  # fmt: skip
    retried = last["b"].extra["retried"]
    print(f"  task runs in (b): {tasks} ({retried} ran more than once)")
    print(f"  overhead per task (b - a')/tasks: {1000 * (b.wall - a1.wall) / tasks:.1f} ms;"
          f"  (b - a)/tasks: {1000 * (b.wall - a.wall) / tasks:.1f} ms")  # fmt: skip
    server_cpu = last["b"].extra["server_cpu"]
    if server_cpu is not None:
        print(f"  Prefect server process CPU during (b): {server_cpu:.2f} s"
              f" ({1000 * server_cpu / tasks:.1f} ms a task run)")  # fmt: skip
    finals = {k: v.accuracies[-1] for k, v in last.items()}
    print("  final accuracy: " + "   ".join(f"({k}) {v:.4f}" for k, v in finals.items()))
    raw, engine, flow = last["a"], last["a'"], last["b"]
    print(f"  (a) vs (a'): {agreement(raw, engine)}")
    print(f"  (a') vs (b): {agreement(engine, flow)}")
    rejected = [r["round"] for r in engine.extra["summary"]["rounds"] if not r["gate_passed"]]
    promoted = engine.extra["summary"]["versions_promoted"]
    print(f"  (a') gate: promoted versions {promoted}; rejected in rounds {rejected}")


# ----- main ----------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=30, help="rounds of each run (default 30)")
    parser.add_argument(
        "--clients-per-task", type=int, nargs="+", default=[8],
        help="clients per training task, 0 = one task per client; several values run in turn",
    )  # fmt: skip
    parser.add_argument("--repeat", type=int, default=1, help="runs of each variant (default 1)")
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
    warm = {name: Timing() for name in ("import torch + fl", "first optimizer", "import prefect + flow")}
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
    warm = warm_up()
    for name, t in warm.items():
        print(describe(f"one-off: {name}", t))
    server = start_server(args.server, stack)
    print(f"server start-up ({server.kind}): {server.startup.wall:.3f} s wall"
          f" (load after {server.startup.load_after:.2f})")  # fmt: skip
    print(f"trivial flow run: first {server.trivial_first.wall:.3f} s, second"
          f" {server.trivial_second.wall:.3f} s")  # fmt: skip
    for clients_per_task in args.clients_per_task:
        config = load_config(preset=PRESET, overrides=[
            f"rounds.per_run={args.rounds}", f"rounds.clients_per_task={clients_per_task}"])  # fmt: skip
        runs: dict[str, list[RunResult]] = {"a": [], "a'": [], "b": []}
        for repeat in range(args.repeat):
            where = scratch / f"stores-{clients_per_task}-{repeat}"
            runs["a"].append(run_raw(config))
            runs["a'"].append(run_engine(config, str(where / "engine")))
            runs["b"].append(run_flow(config, str(where / "flow"), server.pid))
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
