"""Parameter models: the pydantic base of every registry entry's parameters, and their types.

Each task (tasks/), attention kind (harness.models.attention) and optimizer (harness.optim)
declares its parameters as one `Params` subclass: every field with its default, its valid
range and a description. The grid spec, `--set`, `harness list`, `harness schema` and the
error messages all read these models, so a parameter is declared once.

Ranges include what torch enforces later: sizes are strict integers within int64 and below a
sane maximum (a typo such as 2**40 is refused, not turned into an allocation), floats are
finite numbers (never a bool; a string only when it reads as a number, as grid files written
for earlier versions quote them), so a value that passes here does not fail a run.

It lives in tasks/ because tasks may not import harness/; harness/ imports it from here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    ValidationError,
)
from pydantic_core import PydanticCustomError

MAX_WIDTH = 2**16  # any model width, head count or sequence length above this is a mistake
MAX_COUNT = 2**31 - 1  # examples, steps, vocabulary: far beyond one machine, within int64

# PyYAML reads YAML 1.1, where `3e-3` (no dot) is a string; YAML 1.2 and users read a number.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+")


def yaml_number(value: Any) -> Any:
    """`"3e-3"` -> 0.003 (see _EXPONENT_NUMBER); anything else unchanged."""
    if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _number(value: Any) -> Any:
    """A float field takes a number, or a string that reads as one (`"0.01"`, `"3e-3"`: grid
    files quote numbers, and `--set` values are strings); never a bool."""
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "expected a number")
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value  # the field's own error names it
    return value


# Value types shared by the parameter models (and the grid spec).
Real = Annotated[StrictFloat, BeforeValidator(_number), Field(allow_inf_nan=False)]
Width = Annotated[StrictInt, Field(ge=1, le=MAX_WIDTH)]
Count = Annotated[StrictInt, Field(ge=1, le=MAX_COUNT)]
NonNegative = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]


class Params(BaseModel):
    """Parameters of one registry entry: unknown names are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every parameter with its default value."""
        return cls().model_dump()

    @classmethod
    def described(cls) -> list[tuple[str, Any, str]]:
        """(name, default, description) of every parameter, in declaration order."""
        return [
            (name, info.get_default(call_default_factory=True), info.description or "")
            for name, info in cls.model_fields.items()
        ]


class TaskParams(Params):
    """A task's parameters. `size_bounds` feeds the memory check made before any run."""

    def size_bounds(self) -> tuple[int, int, int] | None:
        """Upper bounds of (sequence length, vocabulary, training examples) known from the
        parameters alone; None when they need the data (the check then skips the task)."""
        return None


def validated(
    model: type[Params],
    params: Mapping[str, Any],
    section: str,
    error: type[ValueError] = ValueError,
) -> Any:
    """`params` checked by `model`; a problem raises `error` with one line naming the field
    as `section.name=value` (the form --set takes)."""
    try:
        return model.model_validate(dict(params))
    except ValidationError as err:
        raise error(error_line(err.errors(include_url=False)[0], section, params)) from None


def error_line(error: Mapping[str, Any], section: str, values: Mapping[str, Any]) -> str:
    """One pydantic error of a section as `section.name=value: message` (`values`: the
    section's input, to show the value); an error about the whole section is its message."""
    message = error["msg"][:1].lower() + error["msg"][1:]
    path = error_path(error)
    if not path:
        return f"{section}: {message}"
    name = path[0]
    key = ".".join((section, *path))
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if isinstance(values, Mapping) and name in values:
        return f"{key}={values[name]!r}: {message}"
    return f"{key}: {message}"


def invalid(at: str, message: str) -> PydanticCustomError:
    """The error a model validator raises about one field: `at` is its name (dotted from the
    model being validated), so the message can name the field as the user wrote it."""
    return PydanticCustomError("invalid", message.replace("{", "(").replace("}", ")"), {"at": at})


def error_path(error: Mapping[str, Any]) -> tuple[str, ...]:
    """The field path of one pydantic error: its loc, then the field a validator named."""
    loc = tuple(str(part) for part in error["loc"])
    at = (error.get("ctx") or {}).get("at")
    return loc + tuple(at.split(".")) if at else loc
