"""`fedship`: train, inspect, promote, roll back and serve.

Exit codes: 0 done; 1 refused (integrity failure, gate refusal, nothing to roll back to,
unknown model or version); 2 usage or configuration error. Errors are one line, no traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn, TypeVar

# Prefect's console log is noise under our progress bar; --verbose brings it back. This must be
# set before Prefect is imported, which configures logging on import.
os.environ.setdefault(
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL",
    "INFO" if {"-v", "--verbose"} & set(sys.argv[1:]) else "CRITICAL",
)

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import tasks  # noqa: E402,F401  (Fedship's Prefect defaults, before Prefect is imported)
from fl.config import DEFAULT_STORE, STORE_ENV, ConfigError  # noqa: E402
from fl.errors import FedshipError  # noqa: E402
from fl.registry import DEFAULT_ALIAS, Registry  # noqa: E402
from fl.store import open_store  # noqa: E402
from flows.actor import local_actor  # noqa: E402

app = typer.Typer(
    help="Fedship: federated training with versioned, gated releases and rollback.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (make demo, CI logs) gets wide tables instead of rich's 80-column default.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
T = TypeVar("T")

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help=f"Store URL (s3://bucket/prefix, file://path or a path). "
        f"Default: ${STORE_ENV}, else {DEFAULT_STORE}.",
    ),
]
ModelOpt = Annotated[str, typer.Option("--model", help="Registered model name.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
AliasOpt = Annotated[str, typer.Option("--alias", help="Alias to change.")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")]


def fail(message: str, code: int) -> NoReturn:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def guarded(action: Callable[[], T]) -> T:
    """Run an action; a known error becomes one line and an exit code."""
    try:
        return action()
    except ConfigError as error:
        fail(str(error), 2)
    except FedshipError as error:
        fail(str(error), 1)
    except Exception as error:  # Prefect's parameter validation, pydantic, botocore
        if type(error).__name__ in (
            "ParameterTypeError",
            "ValidationError",
            "SignatureMismatchError",
        ):
            fail(str(error).splitlines()[0], 2)
        if type(error).__module__.startswith("botocore"):
            fail(f"object store: {str(error).splitlines()[0]}", 1)
        raise


def registry(store: str | None, model: str) -> Registry:
    return Registry(open_store(store), model)


def existing_registry(store: str | None, model: str) -> Registry:
    reg = registry(store, model)
    if not reg.exists():
        raise _unknown_model(reg)
    return reg


def _unknown_model(reg: Registry) -> FedshipError:
    from fl.errors import RegistryError

    known = sorted({k.split("/")[1] for k in reg.store.list("models/") if k.count("/") >= 2})
    hint = f" (models here: {', '.join(known)})" if known else " (the store holds no models)"
    return RegistryError(f"model {reg.model!r} not found in {reg.store.url}{hint}")


@contextmanager
def prefect_session() -> Iterator[None]:
    """Run flows in-process without the ~1 s heartbeat-thread join at the end of each."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def print_json(payload: Any) -> None:
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


# ----- train --------------------------------------------------------------------------------
class _ProgressHandler(logging.Handler):
    def __init__(self, on_round: Callable[[Any, int], None]) -> None:
        super().__init__()
        self.on_round = on_round

    def emit(self, record: logging.LogRecord) -> None:
        if hasattr(record, "fedship_round"):
            self.on_round(record.fedship_round, getattr(record, "fedship_total", 0))


@app.command()
def train(
    store: StoreOpt = None,
    model: ModelOpt = "default",
    preset: Annotated[
        str | None, typer.Option(help="Preset: digits (default) or tutorial.")
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", help="YAML or TOML config file.")
    ] = None,
    rounds: Annotated[
        int | None, typer.Option(min=1, help="Rounds to run (rounds.per_run).")
    ] = None,
    overrides: Annotated[
        list[str] | None, typer.Option("--set", help="Override a field: section.key=value.")
    ] = None,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Run federated rounds, continuing from the model's last checkpoint."""
    from fl.engine import RunSummary
    from flows.training import ROUND_EVENTS, build_run_config

    config_obj = guarded(lambda: build_run_config(preset, config, rounds, overrides))
    store_url = store or config_obj.store.resolved_url()
    guarded(lambda: registry(store_url, model))  # bad store URL or model name: exit 2 / 1 now

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]rounds"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err,
        disable=as_json,
    )
    bar = progress.add_task("starting Prefect...", total=config_obj.rounds.per_run)

    def on_round(record: Any, total: int) -> None:
        verdict = (
            "[green]promoted"
            if record.promoted
            else ("passed" if record.gate_passed else "[yellow]rejected")
        )
        progress.update(
            bar,
            advance=1,
            description=f"round {record.round}: v{record.version} "
            f"acc {record.accuracy:.4f} {verdict}",
        )
        if not as_json:
            reason = "" if record.gate_passed else " — " + "; ".join(record.rejected_by)
            progress.console.print(
                f"round {record.round:>4}  v{record.version:<5} accuracy {record.accuracy:.4f}  "
                f"{verdict}[/]{reason}",
                highlight=False,
            )

    handler = _ProgressHandler(on_round)
    ROUND_EVENTS.addHandler(handler)
    ROUND_EVENTS.setLevel(logging.INFO)
    try:
        with prefect_session(), progress:
            from flows.training import federated_training

            summary = guarded(
                lambda: federated_training(
                    model=model,
                    store=store_url,
                    preset=preset,
                    config_file=config,
                    rounds=rounds,
                    overrides=overrides or [],
                )
            )
    finally:
        ROUND_EVENTS.removeHandler(handler)
    public = {k: summary[k] for k in RunSummary.PUBLIC_FIELDS}
    if as_json:
        print_json(public)
        return
    out.print(
        f"run {summary['run_id']}: {summary['rounds_completed']} round(s) "
        f"(rounds {summary['first_round']}-{summary['last_round']}), "
        f"registered {_span(summary['versions_registered'])}, "
        f"promoted {_span(summary['versions_promoted']) or 'none'}; "
        f"production: {summary['production'] or 'none'}; "
        f"final accuracy {summary['final_accuracy']:.4f}",
        highlight=False,
    )


def _span(versions: list[int]) -> str:
    if not versions:
        return ""
    if versions == list(range(versions[0], versions[-1] + 1)) and len(versions) > 2:
        return f"v{versions[0]}-v{versions[-1]}"
    return ", ".join(f"v{v}" for v in versions)


# ----- versions, show, audit ---------------------------------------------------------------
def version_row(
    reg: Registry, manifest: dict[str, Any], aliases: dict[int, list[str]]
) -> dict[str, Any]:
    return {
        "version": manifest["version"],
        "sha256": manifest["sha256"],
        "metrics": manifest["metrics"],
        "round": manifest.get("round"),
        "gate": {"passed": manifest["gate"]["passed"], "reasons": manifest["gate"]["reasons"]}
        if manifest.get("gate")
        else None,
        "aliases": aliases.get(manifest["version"], []),
        "parent_version": manifest.get("parent_version"),
        "run_id": manifest.get("run_id"),
        "created_at": manifest["created_at"],
        "uri": reg.uri(manifest["version"]),
    }


def _aliases_by_version(reg: Registry) -> dict[int, list[str]]:
    by_version: dict[int, list[str]] = {}
    for name, version in reg.aliases().items():
        by_version.setdefault(version, []).append(name)
    return by_version


@app.command()
def versions(
    store: StoreOpt = None,
    model: ModelOpt = "default",
    limit: Annotated[int, typer.Option(min=1, help="Versions per page.")] = 50,
    before: Annotated[int | None, typer.Option(help="Show versions older than this one.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """List versions, newest first."""

    def load() -> list[dict[str, Any]]:
        reg = existing_registry(store, model)
        aliases = _aliases_by_version(reg)
        return [version_row(reg, m, aliases) for m in reg.list_versions(limit=limit, before=before)]

    rows = guarded(load)
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"model {model}: {len(rows)} version(s), newest first")
    for column in ("version", "round", "accuracy", "gate", "aliases", "parent", "created (UTC)"):
        table.add_column(
            column, justify="right" if column in ("version", "round", "accuracy") else "left"
        )
    for row in rows:
        gate = row["gate"] or {"passed": None, "reasons": []}
        verdict = (
            "[green]passed"
            if gate["passed"]
            else "[yellow]rejected"
            if gate["passed"] is False
            else "-"
        )
        table.add_row(
            str(row["version"]),
            str(row["round"] or "-"),
            f"{row['metrics'].get('accuracy', float('nan')):.4f}",
            verdict,
            "[bold]" + ", ".join(row["aliases"]) if row["aliases"] else "",
            str(row["parent_version"] or "-"),
            row["created_at"][:19].replace("T", " "),
        )
    out.print(table)


@app.command()
def show(
    version: Annotated[str, typer.Argument(help="Version number or alias name.")],
    store: StoreOpt = None,
    model: ModelOpt = "default",
    as_json: JsonOpt = False,
) -> None:
    """Show one version's whole manifest."""

    def load() -> dict[str, Any]:
        reg = existing_registry(store, model)
        number = reg.resolve(version)
        return {
            **reg.manifest(number),
            "uri": reg.uri(number),
            "aliases": _aliases_by_version(reg).get(number, []),
        }

    manifest = guarded(load)
    if as_json:
        print_json(manifest)
        return
    out.print_json(json.dumps(manifest, default=str))


@app.command()
def audit(
    store: StoreOpt = None,
    model: ModelOpt = "default",
    limit: Annotated[int, typer.Option(min=1)] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Promotions and rollbacks, newest first: who, when, from, to and why."""
    records = guarded(lambda: existing_registry(store, model).audit_log(limit))
    if as_json:
        print_json(records)
        return
    table = Table(title=f"model {model}: audit trail, newest first")
    for column in ("at (UTC)", "action", "alias", "from", "to", "actor", "reason"):
        table.add_column(column, overflow="fold")
    for r in records:
        table.add_row(
            r["at"][:19].replace("T", " "),
            r["action"],
            r["alias"],
            str(r["from_version"] or "-"),
            str(r["to_version"]),
            r["actor"],
            r["reason"],
        )
    out.print(table)


# ----- promote, rollback --------------------------------------------------------------------
def _print_change(change: dict[str, Any], as_json: bool) -> None:
    public = {k: change.get(k) for k in ("alias", "from_version", "to_version", "changed")}
    if as_json:
        print_json(public)
    elif not change.get("changed", True):
        out.print(
            f"{change['alias']} already serves version {change['to_version']}: nothing changed"
        )
    else:
        out.print(f"{change['alias']}: version {change['from_version']} -> {change['to_version']}")


@app.command()
def promote(
    version: Annotated[int, typer.Argument(help="Version to promote.")],
    store: StoreOpt = None,
    model: ModelOpt = "default",
    alias: AliasOpt = DEFAULT_ALIAS,
    force: Annotated[bool, typer.Option(help="Promote even if the gate refuses.")] = False,
    reason: Annotated[str, typer.Option(help="Why (required with --force).")] = "",
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Promote a version through the gate (or --force with --reason)."""
    if force and not reason.strip():
        fail("--force needs --reason (it goes into the audit record)", 2)
    guarded(lambda: existing_registry(store, model).manifest(version))
    with prefect_session():
        from flows.promotion import promote as promote_flow

        change = guarded(
            lambda: promote_flow(
                version=version, model=model, store=store, alias=alias, force=force, reason=reason
            )
        )
    _print_change(change, as_json)


@app.command()
def rollback(
    reason: Annotated[str, typer.Option(help="Why (recorded in the audit trail).")],
    store: StoreOpt = None,
    model: ModelOpt = "default",
    steps: Annotated[
        int | None, typer.Option(min=1, help="Promotions to go back (default 1).")
    ] = None,
    to: Annotated[int | None, typer.Option("--to", help="Version to go back to.")] = None,
    alias: AliasOpt = DEFAULT_ALIAS,
    direct: Annotated[
        bool,
        typer.Option(
            "--direct",
            help="Skip Prefect: same checks and audit record, in this process, in seconds "
            "(for when no Prefect server is reachable).",
        ),
    ] = False,
    as_json: JsonOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Roll an alias back to a version it served before, after verifying that version."""
    if steps is not None and to is not None:
        fail("give --steps or --to, not both", 2)
    if not reason.strip():
        fail("--reason must not be empty (it goes into the audit record)", 2)
    target = guarded(
        lambda: existing_registry(store, model).rollback_target(steps=steps, to=to, alias=alias)
    )
    if target is None:
        _print_change(
            {"alias": alias, "from_version": to, "to_version": to, "changed": False}, as_json
        )
        return
    if direct:
        from fl.release import verify_version

        reg = existing_registry(store, model)
        change = guarded(
            lambda: reg.rollback(
                to=target,
                alias=alias,
                actor=f"{local_actor()} (direct, no Prefect)",
                reason=reason,
                verify=lambda version: None if verify_version(reg, version) else None,
            ).to_dict()
        )
        _print_change(change, as_json)
        return
    with prefect_session():
        from flows.rollback import rollback as rollback_flow

        change = guarded(
            lambda: rollback_flow(
                reason=reason, model=model, store=store, steps=steps, to_version=to, alias=alias
            )
        )
    _print_change(change, as_json)


# ----- serve --------------------------------------------------------------------------------
@app.command()
def serve(
    store: StoreOpt = None,
    model: ModelOpt = "default",
    preset: Annotated[str, typer.Option(help="Preset the scheduled training uses.")] = "digits",
    rounds: Annotated[int, typer.Option(min=1, help="Rounds per scheduled run.")] = 1,
    cron: Annotated[str, typer.Option(help="Training schedule (cron, UTC).")] = "0 * * * *",
) -> None:
    """Serve training (scheduled), rollback and promotion deployments from this process."""
    guarded(lambda: registry(store, model))
    from deployments.serve import serve_all

    guarded(lambda: serve_all(model=model, store=store, preset=preset, rounds=rounds, cron=cron))


def _is(error: BaseException, name: str) -> bool:
    """Typer ships its own copy of click, so match click's exception classes by name."""
    return any(cls.__name__ == name for cls in type(error).__mro__)


def main() -> None:
    """Entry point: usage errors (unknown option, missing value) become one line, exit 2."""
    try:
        code = app(standalone_mode=False)
    except Exception as error:
        if _is(error, "UsageError"):
            ctx = getattr(error, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            message = error.format_message()  # type: ignore[attr-defined]
            err.print(f"error: {where}{message}", markup=False, highlight=False)
            sys.exit(2)
        if _is(error, "Abort"):
            err.print("aborted", markup=False)
            sys.exit(1)
        raise
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
