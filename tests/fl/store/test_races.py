"""Create-only and compare-and-swap hold under contention: threads, and processes for LocalStore.

A barrier releases every contender at once so the writes actually overlap. The in-process
`mock_aws` backend is not raced here (see `concurrent_store` in tests/conftest.py).
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fl.errors import PreconditionFailed
from fl.store import LocalStore, ObjectStore

THREADS = 16
PROCESSES = 8
INCREMENTS_PER_PROCESS = 5
BARRIER_TIMEOUT = 30.0


def increment(store: ObjectStore, key: str, max_tries: int = 500) -> int:
    """Read the counter, add one, compare-and-swap; retry after losing. Returns the tries used."""
    for tries in range(1, max_tries + 1):
        current = store.get(key)
        try:
            store.put_if_match(key, str(int(current.data) + 1).encode(), current.token)
        except PreconditionFailed:
            continue
        return tries
    raise AssertionError(f"no successful compare-and-swap on {key!r} in {max_tries} tries")


def race_threads(worker: Callable[[int], Any], count: int = THREADS) -> list[Any]:
    """Run `worker(i)` in `count` threads released together; return results or exceptions."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait(BARRIER_TIMEOUT)
        try:
            results[index] = worker(index)
        except Exception as err:  # collected and asserted on by the caller
            results[index] = err

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BARRIER_TIMEOUT * 2)
    return results


@pytest.mark.parametrize("round_number", range(3))
def test_create_only_has_exactly_one_winner(
    concurrent_store: ObjectStore, round_number: int
) -> None:
    key = f"races/create-{round_number}"

    results = race_threads(lambda i: concurrent_store.put_if_absent(key, f"writer-{i}".encode()))

    winners = [i for i, result in enumerate(results) if isinstance(result, str)]
    losers = [result for result in results if isinstance(result, PreconditionFailed)]
    assert len(winners) == 1, results
    assert len(losers) == THREADS - 1, results
    stored = concurrent_store.get(key)
    assert (stored.data, stored.token) == (f"writer-{winners[0]}".encode(), results[winners[0]])
    assert list(concurrent_store.list("races/")) == [key]


def test_compare_and_swap_loses_no_update(concurrent_store: ObjectStore) -> None:
    concurrent_store.put("races/counter", b"0")

    results = race_threads(lambda _: increment(concurrent_store, "races/counter"))

    assert all(isinstance(tries, int) for tries in results), results
    assert concurrent_store.get("races/counter").data == str(THREADS).encode()
    assert max(results) > 1, "no thread ever lost a compare-and-swap: the threads did not race"
    assert list(concurrent_store.list("")) == ["races/counter"]


# -- LocalStore across processes ---------------------------------------------------------------
# Workers live at module level so forkserver children can import them; the exit code is the result.

CREATED, LOST = 0, 3


def _create_in_process(root: str, index: int, barrier: Any) -> None:
    store = LocalStore(root)
    barrier.wait(BARRIER_TIMEOUT)
    try:
        store.put_if_absent("races/create", f"process-{index}".encode())
    except PreconditionFailed:
        raise SystemExit(LOST) from None


def _increment_in_process(root: str, index: int, barrier: Any) -> None:
    store = LocalStore(root)
    barrier.wait(BARRIER_TIMEOUT)
    for _ in range(INCREMENTS_PER_PROCESS):
        increment(store, "races/counter")


def run_processes(target: Callable[[str, int, Any], None], root: Path) -> list[int]:
    """Start `PROCESSES` workers behind one barrier; return their exit codes (negative: killed)."""
    # forkserver, not fork: the moto server thread may be running in this process. Preloading
    # this module lets each child fork from a warm server instead of importing boto3 again.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    barrier = context.Barrier(PROCESSES)
    processes = [
        context.Process(target=target, args=(str(root), index, barrier))
        for index in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(BARRIER_TIMEOUT * 2)
        if process.exitcode is None:  # hung: do not leave it behind
            process.kill()
            process.join()
    return [int(process.exitcode or 0) for process in processes]


def test_local_create_only_across_processes(tmp_path: Path) -> None:
    exit_codes = run_processes(_create_in_process, tmp_path / "store")

    assert sorted(exit_codes) == [CREATED] + [LOST] * (PROCESSES - 1), exit_codes
    winner = exit_codes.index(CREATED)
    store = LocalStore(tmp_path / "store")
    assert store.get("races/create").data == f"process-{winner}".encode()
    assert list(store.list("")) == ["races/create"]


def test_local_compare_and_swap_across_processes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put("races/counter", b"0")

    exit_codes = run_processes(_increment_in_process, tmp_path / "store")

    assert exit_codes == [0] * PROCESSES
    assert store.get("races/counter").data == str(PROCESSES * INCREMENTS_PER_PROCESS).encode()
    assert list(store.list("")) == ["races/counter"]
