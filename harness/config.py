"""One training run's configuration, resolved from registries, defaults and user overrides.

A `RunConfig` is the normalised cell of DESIGN.md: every value that decides what is trained,
with all defaults filled in. Its hash is `harness.cell_id`; its flat form is the MLflow params.

Overridable sections (`--set section.key=value`, or the same dotted keys in a grid), each one
pydantic parameters model: `task.*` (the task's `Task.params`), `model.*` (`ModelParams`),
`attention.*` (the attention kind's), `optim.*` (the optimizer's, see harness.optim) and
`train.*` (`TrainParams`). `run_model` puts the sections of one task x attention x optimizer
under one model with the run's axes (lr, seed, steps, phase), so one validation checks every
value, field paths come from pydantic's own error locations, and the checks that span
sections (attention widths against the model's) are its validators. Whether a run fits in
this machine's memory is not a property of the configuration: `harness.memory.check_fits`
checks it where cells run here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    create_model,
    model_validator,
)

from harness.errors import UserError
from harness.models.attention import ATTENTION, AttentionParams
from harness.optim import OPTIMIZERS
from tasks import TaskInputError, get_task
from tasks.params import Count, Params, Real, Width, error_path, invalid

PHASES = ("tune", "final")
MAX_SEED = 2**32 - 1  # the range every seeding library accepts (numpy's is the narrowest)
SECTIONS = ("task", "model", "attention", "optim", "train")


class ModelParams(Params):
    d_model: Width = Field(64, description="width of the residual stream")
    n_layers: Width = Field(2, description="transformer blocks")
    d_ff: Width = Field(256, description="hidden width of each feed-forward layer")
    d_k: Width = Field(
        64,
        description="total query/key width of each attention layer, for every kind (per head "
        "d_k / n_heads, which must divide; attention.d_head or attention.d_attn set a per-head "
        "width instead)",
    )
    dropout: Annotated[Real, Field(ge=0, lt=1)] = Field(0.0, description="dropout probability")


class TrainParams(Params):
    batch_size: Count = Field(64, description="examples per step")
    val_every: Count = Field(100, description="steps between validations (and one at the end)")
    log_every: Count = Field(10, description="steps between lr / time / throughput points")


MODEL_DEFAULTS: dict[str, Any] = ModelParams.defaults()
TRAIN_DEFAULTS: dict[str, Any] = TrainParams.defaults()


class RunParams(BaseModel):
    """The run's axes; `run_model` adds one field per section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: Annotated[Real, Field(gt=0)]
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
    steps: Count
    phase: Literal[PHASES] = "final"

    @model_validator(mode="after")
    def _widths(self) -> RunParams:
        """The attention kind's widths against the model's (n_heads dividing d_model, d_k)."""
        model: ModelParams = self.model  # type: ignore[attr-defined]
        attention: AttentionParams = self.attention  # type: ignore[attr-defined]
        try:
            attention.check_widths(model.d_model, model.d_k)
        except ValueError as err:
            n_heads = attention.heads()[0]
            at = "attention.n_heads" if model.d_model % n_heads else "model.d_k"
            values = {"model.d_model": model.d_model, "model.d_k": model.d_k}
            values |= {f"attention.{k}": v for k, v in attention.model_dump().items()}
            shown = ", ".join(f"{k}={v}" for k, v in values.items() if k != at and v is not None)
            raise invalid(at, f"with {shown}: {err}") from None
        return self


@cache
def run_model(task: str, attention: str, optimizer: str) -> type[RunParams]:
    """The parameters model of one task x attention x optimizer: RunParams and its sections."""
    sections: dict[str, type[BaseModel]] = {
        "task": get_task(task).params,
        "model": ModelParams,
        "attention": ATTENTION[attention].params,
        "optim": OPTIMIZERS[optimizer].params,
        "train": TrainParams,
    }
    fields: dict[str, Any] = {
        name: (model, Field(default_factory=model)) for name, model in sections.items()
    }
    return create_model(f"Run_{task}_{attention}_{optimizer}", __base__=RunParams, **fields)


@dataclass(frozen=True)
class RunConfig:
    task: str
    attention: str
    optimizer: str
    lr: float
    seed: int
    steps: int
    phase: str = "final"
    task_params: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    attention_params: dict[str, Any] = field(default_factory=dict)
    optim: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def cell_id(self) -> str:
        """Stable hash of the normalised cell (sorted-key JSON of every resolved value)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def run_name(self) -> str:
        return self.run_name_at({})

    def run_name_at(self, sweep: Mapping[str, Any]) -> str:
        """`<task>/<attention>/<optimizer>/lr=<lr>[/<sweep point>]/seed=<seed>`: the run's
        name in MLflow, with its sweep point (`sweep_point_name`) in a sweep."""
        point = sweep_point_name(sweep)
        head = f"{self.task}/{self.attention}/{self.optimizer}/lr={self.lr:g}"
        return f"{head}/{point}/seed={self.seed}" if point else f"{head}/seed={self.seed}"

    def flat_params(self) -> dict[str, str]:
        """MLflow params: the run's axes, then every hyper-parameter under a dotted name."""
        flat: dict[str, Any] = {
            "task": self.task,
            "attention": self.attention,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "seed": self.seed,
            "phase": self.phase,
            "steps": self.steps,
        }
        for prefix, section in self._sections().items():
            flat.update({f"{prefix}.{k}": v for k, v in section.items()})
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in flat.items()}

    def _sections(self) -> dict[str, dict[str, Any]]:
        return {
            "task": self.task_params,
            "model": self.model,
            "attention": self.attention_params,
            "optim": self.optim,
            "train": self.train,
        }


def sweep_point_name(sweep: Mapping[str, Any]) -> str:
    """{"model.d_k": 128} -> "d_k=128": each swept key without its section (the whole dotted
    key where two keys share a name), in key order, joined by "/"; "" outside a sweep."""
    short = {key: str(key).partition(".")[2] or str(key) for key in sweep}
    names = list(short.values())
    parts = []
    for key in sorted(sweep, key=str):
        value = sweep[key]
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{short[key] if names.count(short[key]) == 1 else key}={shown}")
    return "/".join(parts)


class ConfigError(UserError):
    """A value resolve() refuses. `key` is the dotted key at fault ("model.d_k", "lr"; None for
    the run as a whole), `reason` the message without it; str() is the one line for users."""

    def __init__(self, key: str | None, reason: str, value: Any = None, given: bool = False):
        self.key, self.reason, self.value, self.given = key, reason, value, given
        super().__init__(self.line(None if key is None else shown_key(key)))

    def line(self, where: str | None) -> str:
        """The message with the key shown as `where` (e.g. the grid field that set it)."""
        if where is None:
            return self.reason
        return f"{where}={self.value!r}: {self.reason}" if self.given else f"{where}: {self.reason}"


def validated_run(cfg: RunConfig) -> RunParams:
    """The validated parameters model of a resolved cell (for checks that read its sections
    as models, such as the memory estimate)."""
    values = {
        "lr": cfg.lr, "seed": cfg.seed, "steps": cfg.steps, "phase": cfg.phase,
        "task": cfg.task_params, "model": cfg.model, "attention": cfg.attention_params,
        "optim": cfg.optim, "train": cfg.train,
    }  # fmt: skip
    return run_model(cfg.task, cfg.attention, cfg.optimizer).model_validate(values)


def resolve(
    task: str,
    attention: str,
    optimizer: str,
    *,
    lr: float | None = None,
    seed: int = 0,
    steps: int | None = None,
    phase: str = "final",
    overrides: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Fill in defaults, apply dotted overrides, and check every value a user can get wrong
    (a `ConfigError` naming the key, or a UserError for an unknown name)."""
    try:
        task_spec = get_task(task)
    except TaskInputError as err:
        raise UserError(str(err)) from None
    _check_choice("attention", attention, ATTENTION)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    given: dict[str, Any] = {
        "lr": OPTIMIZERS[optimizer].default_lr if lr is None else lr,
        "seed": seed,
        "steps": task_spec.default_steps if steps is None else steps,
        "phase": phase,
        **_nest(overrides or {}),
    }
    model = run_model(task, attention, optimizer)
    try:
        run = model.model_validate(given)
    except ValidationError as err:
        raise _config_error(err.errors(include_url=False)[0], given, model) from None
    sections = {name: getattr(run, name).model_dump() for name in SECTIONS}
    return RunConfig(
        task=task,
        attention=attention,
        optimizer=optimizer,
        lr=run.lr,
        seed=run.seed,
        steps=run.steps,
        phase=run.phase,
        task_params=sections["task"],
        model=sections["model"],
        attention_params=sections["attention"],
        optim=sections["optim"],
        train=sections["train"],
    )


def parse_set_options(items: list[str]) -> dict[str, Any]:
    """`["model.d_k=32"]` -> {"model.d_k": 32}; values are read as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. model.d_k=32")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def shown_key(key: Any) -> str:
    """A key as a message shows it: as written, or quoted when it holds a line break or another
    unprintable character (an error stays one line whatever the YAML's keys hold)."""
    return key if isinstance(key, str) and key.isprintable() else repr(key)


def _nest(overrides: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """{"model.d_k": 8} -> {"model": {"d_k": 8}}; a key outside the sections is an error."""
    nested: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        prefix, _, name = str(key).partition(".")
        if prefix not in SECTIONS or not name:
            raise ConfigError(
                key,
                "unknown key (keys look like SECTION.NAME with SECTION one of: "
                f"{', '.join(SECTIONS)})",
            )
        nested.setdefault(prefix, {})[name] = value
    return nested


def _config_error(
    error: Mapping[str, Any], given: Mapping[str, Any], model: type[RunParams]
) -> ConfigError:
    """One pydantic error as a ConfigError on the dotted key it is about."""
    path = error_path(error)
    if not path:
        return ConfigError(None, error["msg"])
    key = ".".join(path)
    if error["type"] == "extra_forbidden" and len(path) == 2:
        fields = model.model_fields[path[0]].annotation.model_fields  # type: ignore[union-attr]
        choices = ", ".join(f"{path[0]}.{name}" for name in sorted(fields)) or "none"
        return ConfigError(key, f"unknown key (choose from: {choices})")
    node: Any = given
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return ConfigError(key, _lower(error["msg"]))
        node = node[part]
    return ConfigError(key, _lower(error["msg"]), node, given=True)


def _lower(message: str) -> str:
    return message[:1].lower() + message[1:]


def _check_choice(name: str, value: str, choices: Mapping[str, Any]) -> None:
    if value not in choices:
        raise UserError(f"unknown {name} {value!r} (choose from: {', '.join(sorted(choices))})")
