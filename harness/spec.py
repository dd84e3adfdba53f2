"""The grid spec: the YAML file a user writes to launch a grid, validated into a `GridSpec`.

    name: quick                     # MLflow experiment and report folder
    description: Does X beat Y here? # optional: the question, shown in the report's summary
    protocol: tune_then_final       # or fixed (one run per seed at each optimizer's `lr`)
    tasks: [copy, {name: char_lm, params: {seq_len: 32}, steps: 300}]
    attention: [dot, {name: multihead, params: {n_heads: 2}}]
    optimizers: [adam, {name: sgd, lr: 0.1, lr_grid: [0.01, 0.1, 1.0], params: {momentum: 0.9}}]
    seeds: {tune: [0], final: [1, 2, 3]}   # or a list: the final seeds (tune seeds: [0])
    budget: {steps: 500, val_every: 50}    # steps: default each task's own default_steps
    tuning: {scheduler: halving, eta: 3, rungs: 3}  # default: exhaustive (every rate, all steps)
    model: {d_model: 32}                   # model.* for every run; train: {...} likewise
    sweep: {model.d_k: [8, 32]}            # extra axes (dotted keys), cartesian product

Every error a user can make ends in one `UserError` line "<file>: <field path>: <what>", e.g.
"grids/x.yaml: optimizers[2].lr: input should be greater than 0 (got -0.1)". Entries and values
are checked by pydantic, then names against the registries, then every task x attention x
optimizer x sweep point through `harness.config.resolve` (the registries' parameters models),
whose errors name the dotted key at fault, mapped back to the grid field that set it; so a grid
that loads can be launched. harness.spec_schema gives the file's JSON Schema (`harness schema`).

`apply_sets` applies `harness run --set KEY=VALUE` overrides to a loaded grid, checked the same
way, its errors naming `--set KEY`.

About 530 lines: the grid file's whole contract with users (its models, how overrides combine,
`--set` included, and every error message) reads in one place.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from harness.config import MAX_SEED, ConfigError, resolve, shown_key
from harness.errors import UserError
from harness.models.attention import ATTENTION
from harness.optim import OPTIMIZERS
from tasks import TASKS
from tasks.params import MAX_COUNT, Real, yaml_number

# A safe path component: it names the MLflow experiment and the report folder.
NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
NAME_RULE = (
    "must be 1-64 characters of letters, digits, '_', '.', '-', not starting with '.' or '-' "
    "(it names the MLflow experiment and the report folder)"
)


# --------------------------------------------------------------------------- value types


def _scalar_values(params: dict[str, Any]) -> dict[str, Any]:
    return {key: yaml_number(value) for key, value in params.items()}


def _distinct(values: list[Any]) -> list[Any]:
    for i, value in enumerate(values):
        if value in values[:i]:
            raise PydanticCustomError("duplicate", f"duplicate value {value!r}")
    return values


PositiveInt = Annotated[StrictInt, Field(gt=0, le=MAX_COUNT)]
PositiveFloat = Annotated[Real, Field(gt=0)]
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
Params = Annotated[dict[str, Any], AfterValidator(_scalar_values)]
SeedList = Annotated[list[Seed], Field(min_length=1), AfterValidator(_distinct)]
LrGrid = Annotated[list[PositiveFloat], Field(min_length=1), AfterValidator(_distinct)]
SweepValues = Annotated[
    list[Any],
    Field(min_length=1),
    AfterValidator(lambda values: _distinct([yaml_number(v) for v in values])),
]


# --------------------------------------------------------------------------- the spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Entry(_Strict):
    """A registry name with parameters; a bare string `copy` means `{name: copy}`."""

    name: str
    params: Params = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _bare_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"name": data}
        if not isinstance(data, dict):
            raise PydanticCustomError("entry_type", "expected a name or a mapping with `name:`")
        return data


def _check_name(what: str, name: str, registry: Mapping[str, Any]) -> str:
    if name not in registry:
        choices = ", ".join(sorted(registry))
        raise PydanticCustomError(
            "unknown_name", f"unknown {what} {name!r} (choose from: {choices})"
        )
    return name


class TaskEntry(_Entry):
    steps: PositiveInt | None = None  # wins over budget.steps

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _check_name("task", name, TASKS)


class AttentionEntry(_Entry):
    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _check_name("attention", name, ATTENTION)


class OptimizerEntry(_Entry):
    lr: PositiveFloat | None = None  # protocol `fixed`; default: the registry's default_lr
    lr_grid: LrGrid | None = None  # protocol `tune_then_final`; default: the registry's lr_grid

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _check_name("optimizer", name, OPTIMIZERS)

    @property
    def fixed_lr(self) -> float:
        return OPTIMIZERS[self.name].default_lr if self.lr is None else self.lr

    @property
    def tune_lrs(self) -> tuple[float, ...]:
        return OPTIMIZERS[self.name].lr_grid if self.lr_grid is None else tuple(self.lr_grid)


class Seeds(_Strict):
    """Tune seeds pick the learning rate; final seeds are the repetitions that are compared."""

    tune: SeedList = Field(default_factory=lambda: [0])
    final: SeedList = Field(default_factory=lambda: [1, 2, 3])

    @model_validator(mode="before")
    @classmethod
    def _list_means_final(cls, data: Any) -> Any:
        return {"final": data} if isinstance(data, list) else data


class Budget(_Strict):
    steps: PositiveInt | None = None  # default: each task's default_steps
    val_every: PositiveInt | None = None  # becomes train.val_every


class Tuning(_Strict):
    """How the tune phase spends its steps (harness.grid.tune_rungs).

    `exhaustive`: every rate of the grid trains the full budget. `halving`: successive halving
    (Jamieson and Talwalkar 2016; the inner loop of Hyperband, Li et al. 2018): every rate first
    trains budget / eta^(rungs-1) steps, and at each rung only the best ceil(n/eta) rates train
    again, eta times longer, up to the full budget; once one rate is left it is chosen.
    """

    scheduler: Literal["exhaustive", "halving"] = "exhaustive"
    eta: Annotated[StrictInt, Field(ge=2, le=16)] = 3  # 1/eta of the rates go on at each rung
    rungs: Annotated[StrictInt, Field(ge=1, le=8)] = 3  # budgets S/eta^(rungs-1), ..., S/eta, S


class GridSpec(_Strict):
    name: str
    # What the grid asks, in a sentence or two (a hypothesis and its source): the report shows
    # it above the findings, so a reader can hold one against the other.
    description: str = ""
    protocol: Literal["tune_then_final", "fixed"] = "tune_then_final"
    tasks: Annotated[list[TaskEntry], Field(min_length=1)]
    attention: Annotated[list[AttentionEntry], Field(min_length=1)]
    optimizers: Annotated[list[OptimizerEntry], Field(min_length=1)]
    seeds: Seeds = Field(default_factory=Seeds)
    budget: Budget = Field(default_factory=Budget)
    tuning: Tuning = Field(default_factory=Tuning)
    model: Params = Field(default_factory=dict)
    train: Params = Field(default_factory=dict)
    sweep: dict[str, SweepValues] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not NAME_PATTERN.fullmatch(name):
            raise PydanticCustomError("grid_name", NAME_RULE)
        return name

    @model_validator(mode="after")
    def _disjoint_seeds(self) -> GridSpec:
        """A rate picked on a seed that is then compared would pick with the answer in hand."""
        if self.protocol == "tune_then_final":
            shared = sorted(set(self.seeds.tune) & set(self.seeds.final))
            if shared:
                raise PydanticCustomError(
                    "seed_overlap",
                    "seeds.tune and seeds.final must be disjoint (the learning rate is chosen "
                    f"on the tune seeds); both have {', '.join(map(str, shared))}",
                )
        return self

    def sweep_points(self) -> list[dict[str, Any]]:
        """The cartesian product of the sweep axes in the order given; [{}] without a sweep."""
        keys = list(self.sweep)
        return [
            dict(zip(keys, values, strict=True))
            for values in itertools.product(*self.sweep.values())
        ]


def check_experiment_name(name: str, option: str = "--experiment") -> str:
    """An experiment name given on the command line obeys the grid `name:` rule."""
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(f"{option} {name!r}: {NAME_RULE}")
    return name


# --------------------------------------------------------------------------- overrides


@dataclass(frozen=True)
class Override:
    value: Any
    origin: str  # the spec path that set it, e.g. "tasks[1].params.length" or "sweep.model.d_k"


def combination_overrides(
    spec: GridSpec, task: int, attention: int, optimizer: int, point: Mapping[str, Any]
) -> dict[str, Override]:
    """Dotted overrides of one task x attention x optimizer (indices) x sweep point.

    A key set in two places (say `model.d_k` and a sweep over it) is a UserError: one place wins
    silently otherwise.
    """
    sources: list[tuple[str, str, Mapping[str, Any]]] = [
        ("task", f"tasks[{task}].params", spec.tasks[task].params),
        ("attention", f"attention[{attention}].params", spec.attention[attention].params),
        ("optim", f"optimizers[{optimizer}].params", spec.optimizers[optimizer].params),
        ("model", "model", spec.model),
        ("train", "train", spec.train),
    ]
    out: dict[str, Override] = {}

    def put(key: str, value: Any, origin: str) -> None:
        if key in out:
            raise UserError(f"{origin}: also set by {out[key].origin} (set it in one place)")
        out[key] = Override(value, origin)

    for section, path, params in sources:
        for name, value in params.items():
            put(f"{section}.{name}", value, f"{path}.{shown_key(name)}")
    if spec.budget.val_every is not None:
        put("train.val_every", spec.budget.val_every, "budget.val_every")
    for key, value in point.items():
        put(key, value, f"sweep.{shown_key(key)}")
    return out


def entry_steps(spec: GridSpec, task: int) -> int | None:
    """Training steps: the task entry's, else budget.steps, else None (the task's default)."""
    steps = spec.tasks[task].steps
    return spec.budget.steps if steps is None else steps


# --------------------------------------------------------------------------- --set


BUDGET_KEYS = ("budget.steps", "budget.val_every")
_REGISTRIES: dict[str, tuple[str, Any]] = {  # section -> (the spec's list, its registry)
    "task": ("tasks", TASKS),
    "attention": ("attention", ATTENTION),
    "optim": ("optimizers", OPTIMIZERS),
}


def apply_sets(spec: GridSpec, sets: Mapping[str, Any]) -> GridSpec:
    """The grid with `harness run --set KEY=VALUE` overrides, which win over the grid file.

    Keys are those of `harness train --set`: `model.*` and `train.*` set the grid's `model:`
    and `train:` for every cell; `task.*`, `attention.*` and `optim.*` set that parameter in
    every entry whose task, kind or optimizer has it (an error when none has). `budget.steps`
    sets every task's steps (entries' own `steps:` included), `budget.val_every` (or
    `train.val_every`) the steps between validations. A key the grid sweeps over cannot be
    set. Every value is checked as the grid file's are, errors naming `--set KEY`; the result
    is what the launcher records as the grid's `grid.yaml`.
    """
    if not sets:
        return spec
    keys = {_val_every(key) for key in sets}
    if len(keys) < len(sets):
        raise UserError("--set budget.val_every and --set train.val_every: set it once")
    data = spec.model_dump(mode="json")
    for key, value in sets.items():
        _set_one(spec, data, key, value)
    source = "--set " + " ".join(f"{key}={value!r}" for key, value in sets.items())
    try:
        new = GridSpec.model_validate(data)
    except ValidationError as err:  # budget.steps: the one value GridSpec itself checks
        raise UserError(f"--set {_describe(err.errors(include_url=False)[0], data)}") from None
    try:
        _check_duplicates(new)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    origins = {_val_every(key): f"--set {key}" for key in sets}
    _check_combinations(new, origins)
    return new


def _val_every(key: str) -> str:
    return "train.val_every" if key == "budget.val_every" else key


def _set_one(spec: GridSpec, data: dict[str, Any], key: str, value: Any) -> None:
    """Put one override into the spec's data (GridSpec.model_dump), after checking its key."""
    section, _, name = key.partition(".")
    if _val_every(key) in spec.sweep:
        raise UserError(f"--set {key}: the grid sweeps over it (sweep.{_val_every(key)}); "
                        "change the sweep")  # fmt: skip
    if key in BUDGET_KEYS or key == "train.val_every":
        if key == "budget.steps":
            data["budget"]["steps"] = value
            for task in data["tasks"]:
                task["steps"] = None
        else:  # one place for it: train.val_every, as combination_overrides reads it
            data["budget"]["val_every"] = None
            data["train"]["val_every"] = value
        return
    if section not in ("model", "train", *_REGISTRIES) or not name:
        raise UserError(
            f"--set {shown_key(key)}: unknown key (keys look like SECTION.NAME with SECTION "
            f"one of: task, model, attention, optim, train; or {', '.join(BUDGET_KEYS)})"
        )
    if section in ("model", "train"):
        data[section][name] = value
        return
    field, registry = _REGISTRIES[section]
    having = [e for e in data[field] if name in registry[e["name"]].params.model_fields]
    if not having:
        names = {e["name"] for e in data[field]}
        choices = sorted({f"{section}.{n}" for e in names for n in registry[e].params.model_fields})
        raise UserError(
            f"--set {key}: no entry of the grid's {field} ({', '.join(sorted(names))}) has "
            f"this parameter (choose from: {', '.join(choices) or 'none'})"
        )
    for entry in having:
        entry["params"][name] = value


# --------------------------------------------------------------------------- loading


def load_grid(path: str | Path) -> GridSpec:
    """Read and validate a grid file; any problem is one UserError line naming file and field."""
    source = shown_key(str(path))
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{source}: is a folder, not a grid file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{source}: cannot read: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{source}: not valid YAML: {_yaml_reason(err)}") from None
    return grid_from_dict(data, source)


def grid_from_dict(data: Any, source: str = "<grid>") -> GridSpec:
    """Validate parsed YAML (a mapping) into a GridSpec; errors as in `load_grid`."""
    if not isinstance(data, dict):
        what = {type(None): "an empty file", list: "a list"}.get(type(data), f"the value {data!r}")
        raise UserError(
            f"{source}: expected a mapping of grid fields (name, tasks, ...), got {what}"
        )
    try:
        spec = GridSpec.model_validate(data)
    except ValidationError as err:
        errors = err.errors(include_url=False)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UserError(f"{source}: {_describe(errors[0], data)}{more}") from None
    try:
        _check_duplicates(spec)
        _check_combinations(spec)
    except UserError as err:
        raise UserError(f"{source}: {err}") from None
    return spec


def _yaml_reason(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"{err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(err).splitlines()[0]


# The model that holds each place an unknown field can appear (list indices as "*").
_MODEL_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): GridSpec,
    ("tasks", "*"): TaskEntry,
    ("attention", "*"): AttentionEntry,
    ("optimizers", "*"): OptimizerEntry,
    ("seeds",): Seeds,
    ("budget",): Budget,
}


def _describe(error: Mapping[str, Any], data: Any) -> str:
    """One pydantic error as "<field path>: <message>"."""
    loc = tuple(error["loc"])
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden":
        parent = tuple("*" if isinstance(p, int) else str(p) for p in loc[:-1])
        model = _MODEL_AT.get(parent)
        choices = f" (choose from: {', '.join(model.model_fields)})" if model else ""
        message = f"unknown field{choices}"
    elif kind == "too_short" and error.get("ctx", {}).get("min_length") == 1:
        message = "must not be empty"
    elif kind == "missing":
        message = "required field is missing"
    else:
        message = message[:1].lower() + message[1:]
        value = error.get("input")
        if kind not in ("duplicate", "unknown_name") and _is_scalar(value):
            message += f" (got {value!r})"
    path = _field_path(loc, data)
    return f"{path}: {message}" if path else message


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _field_path(loc: Sequence[Any], data: Any) -> str:
    """pydantic's loc as the user wrote it: `optimizers[2].lr`, `seeds.final[1]`, `sweep.a.b`.

    Shorthands leave pydantic's wrapper out: a bare name stands for {name: ...} (so an error on
    `name` is reported at the entry) and a seed list stands for {final: [...]}.
    """
    path, node = "", data
    for part in loc:
        if part == "[key]":  # pydantic's marker for an error in a mapping's key
            continue
        if isinstance(part, int) and not isinstance(node, dict):
            path += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
        elif isinstance(node, str):
            break
        elif isinstance(node, list):
            continue
        else:
            path += f".{shown_key(part)}" if path else shown_key(part)
            node = node.get(part) if isinstance(node, dict) else None
    return path


def _check_duplicates(spec: GridSpec) -> None:
    """Two entries with the same name and (default-filled) params would be one group twice."""
    lists: list[tuple[str, Sequence[_Entry], Any]] = [
        ("tasks", spec.tasks, lambda name: TASKS[name].params.defaults()),
        ("attention", spec.attention, lambda name: ATTENTION[name].params.defaults()),
        ("optimizers", spec.optimizers, lambda name: OPTIMIZERS[name].params.defaults()),
    ]
    for field, entries, defaults in lists:
        seen: list[tuple[str, dict[str, Any]]] = []
        for i, entry in enumerate(entries):
            key = (entry.name, {**defaults(entry.name), **entry.params})
            if key in seen:
                first = seen.index(key)
                raise UserError(
                    f"{field}[{i}]: duplicate of {field}[{first}] "
                    f"(same name {entry.name!r} and params)"
                )
            seen.append(key)


def _check_combinations(spec: GridSpec, origins: Mapping[str, str] | None = None) -> None:
    """Resolve every task x attention x optimizer x sweep point as a run would; `origins`
    names where a dotted key was set when that was not the grid file (`--set model.d_k`)."""
    indices = (range(len(spec.tasks)), range(len(spec.attention)), range(len(spec.optimizers)))
    for t, a, o in itertools.product(*indices):
        for point in spec.sweep_points():
            overrides = {
                key: Override(item.value, (origins or {}).get(key, item.origin))
                for key, item in combination_overrides(spec, t, a, o, point).items()
            }
            names = (spec.tasks[t].name, spec.attention[a].name, spec.optimizers[o].name)
            try:
                resolve(
                    *names,
                    lr=spec.optimizers[o].lr,
                    steps=entry_steps(spec, t),
                    overrides={key: item.value for key, item in overrides.items()},
                )
            except ConfigError as err:
                raise UserError(_locate(err, overrides, "/".join(names))) from None


def _locate(err: ConfigError, overrides: Mapping[str, Override], label: str) -> str:
    """A resolve() error with the grid field that set its key in place of the key; the
    combination is named when the field is not one entry's own (a sweep over entry params, a
    default, the run as a whole)."""
    item = overrides.get(err.key) if err.key is not None else None
    if item is None:
        return f"{err} (with {label})"
    assert err.key is not None
    shared = item.origin.startswith("sweep.") and err.key.startswith(
        ("task.", "attention.", "optim.")
    )
    return err.line(item.origin) + (f" (with {label})" if shared else "")
