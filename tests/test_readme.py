"""The README's configuration reference names every configuration field, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from fl.config import RunConfig

README = Path(__file__).resolve().parents[1] / "README.md"


def dotted_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    names = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.extend(dotted_fields(annotation, f"{prefix}{name}."))
        elif prefix:
            names.append(prefix + name)
    return names


def test_configuration_reference_is_complete_and_current() -> None:
    text = README.read_text()
    table = text[text.index("## Configuration reference") :]
    documented = set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", table, re.MULTILINE))
    assert documented == set(dotted_fields(RunConfig))
