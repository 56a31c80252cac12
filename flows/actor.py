"""Who is acting: recorded in every audit record."""

from __future__ import annotations

import getpass
import os


def local_actor() -> str:
    """`FEDSHIP_ACTOR`, else the local user name."""
    try:
        return os.environ.get("FEDSHIP_ACTOR") or f"user {getpass.getuser()}"
    except (KeyError, OSError):
        return "unknown"


def current_actor(explicit: str | None = None) -> str:
    """An explicit actor, else the deployment and flow run, else the local user."""
    if explicit:
        return explicit
    from prefect.runtime import deployment, flow_run

    if deployment.get_name():
        return f"deployment {deployment.get_name()} (flow run {flow_run.get_name()})"
    return local_actor()
