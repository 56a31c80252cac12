"""Who is acting: recorded in every audit record."""

from __future__ import annotations

import getpass
import os

from prefect.runtime import deployment, flow_run


def current_actor(explicit: str | None = None) -> str:
    """An explicit actor, else the deployment or flow run, else the local user."""
    if explicit:
        return explicit
    if deployment.get_name():
        return f"deployment {deployment.get_name()} (flow run {flow_run.get_name()})"
    try:
        return os.environ.get("FEDSHIP_ACTOR") or f"user {getpass.getuser()}"
    except (KeyError, OSError):
        return "unknown"
