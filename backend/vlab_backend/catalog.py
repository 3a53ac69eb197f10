"""The resource catalogue: target types, engines and engine parameters in the database.

Built-in entries are seeded from the engine registry and the target configuration at start;
administrators add, attach, detach and delete more through `/api/targets/...`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from vlab_backend.engines import engine_specs
from vlab_backend.engines.base import ParameterSpec
from vlab_backend.store.schema import (
    EngineFamily,
    EngineParameter,
    EngineParameterLink,
    HardwareType,
    TargetInstance,
)


def default_values_text(value: Any) -> str:
    """The stored (string) form of a default or enum choices."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


def seed(session: Session) -> None:
    """Make sure every built-in engine, its parameters and every configured type exist."""
    for spec in engine_specs().values():
        if session.get(EngineFamily, spec.name) is None:
            session.add(EngineFamily(name=spec.name, display_name=spec.display_name,
                                     supported_file_extensions=spec.file_extensions))
        for parameter in spec.all_parameters:
            row = session.scalar(select(EngineParameter).where(
                EngineParameter.key == parameter.key))
            if row is None:
                default = list(parameter.choices) if parameter.type == "enum" \
                    else parameter.default
                row = EngineParameter(key=parameter.key, display_name=parameter.key,
                                      description=parameter.description, type=parameter.type,
                                      default_values=default_values_text(default), builtin=True)
                session.add(row)
                session.flush()
            if session.scalar(select(EngineParameterLink).where(
                    EngineParameterLink.engine == spec.name,
                    EngineParameterLink.parameter_id == row.id)) is None:
                session.add(EngineParameterLink(engine=spec.name, parameter_id=row.id))
    for target_type in set(session.scalars(select(TargetInstance.target_type))):
        if session.get(HardwareType, target_type) is None:
            session.add(HardwareType(name=target_type, display_name=target_type))


def spec_from_row(row: EngineParameter) -> ParameterSpec:
    choices: tuple[Any, ...] = ()
    default: Any = row.default_values
    if row.type == "enum":
        try:
            parsed = json.loads(row.default_values)
        except json.JSONDecodeError:
            parsed = [v.strip() for v in row.default_values.split(",") if v.strip()]
        choices = tuple(parsed) if isinstance(parsed, list) else (parsed,)
        default = choices[0] if choices else None
    return ParameterSpec(row.key, row.type, default, row.description, choices=choices)


def attached_parameters(session: Session, engine: str) -> dict[str, ParameterSpec]:
    rows = session.scalars(select(EngineParameter).join(
        EngineParameterLink, EngineParameterLink.parameter_id == EngineParameter.id).where(
        EngineParameterLink.engine == engine)).all()
    return {row.key: spec_from_row(row) for row in rows}


def find_parameter(session: Session, ident: str) -> EngineParameter | None:
    """By numeric id or by key."""
    if re.fullmatch(r"\d{1,9}", ident):
        row = session.get(EngineParameter, int(ident))
        if row is not None:
            return row
    return session.scalar(select(EngineParameter).where(EngineParameter.key == ident))


class EngineProfile:
    """What the platform knows of an engine: the model formats it runs and its parameters.

    Engines with an adapter in the registry run on the built-in targets; others exist only in
    the catalogue and in target repositories that implement them."""

    def __init__(self, name: str, extensions: list[str], parameters: dict[str, ParameterSpec],
                 has_adapter: bool) -> None:
        self.name = name
        self.extensions = [e.lower() for e in extensions]
        self.parameters = parameters
        self.has_adapter = has_adapter

    @property
    def formats(self) -> list[str]:
        return [e.lstrip(".") for e in self.extensions]

    def validate_parameters(self, params: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise ValueError(f"engine {self.name!r} has no parameter(s) {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(self.parameters))}")
        return {key: self.parameters[key].validate(value) for key, value in params.items()}


def engine_profile(session: Session, name: str) -> EngineProfile | None:
    attached = attached_parameters(session, name)
    spec = engine_specs().get(name)
    if spec is not None:
        declared = {p.key: p for p in spec.all_parameters}
        return EngineProfile(name, spec.file_extensions, {**attached, **declared}, True)
    family = session.get(EngineFamily, name)
    if family is None:
        return None
    return EngineProfile(name, list(family.supported_file_extensions), attached, False)
