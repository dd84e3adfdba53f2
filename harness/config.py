"""One training run's configuration, resolved from registries, defaults and user overrides.

A `RunConfig` is the normalised cell of DESIGN.md: every value that decides what is trained,
with all defaults filled in. Its hash is `harness.cell_id`; its flat form is the MLflow params.

Overridable sections (`--set section.key=value`, or the same dotted keys in a grid):
`task.*` (the task's parameters), `model.*`, `attention.*` (the attention kind's parameters),
`optim.*` (the optimizer's parameters, see harness.optim) and `train.*`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from harness.errors import UserError
from harness.models.attention import ATTENTION, check_attention
from harness.optim import OPTIMIZERS, SCHEDULES, param_defaults
from tasks import TaskInputError, get_task

MAX_WIDTH = 2**16  # any model width above this is a mistake on one machine
MODEL_DEFAULTS: dict[str, Any] = {
    "d_model": 64,
    "n_layers": 2,
    "d_ff": 256,
    # Total query/key width of each attention layer, for every kind: per head d_k / n_heads
    # (multihead, additive), and a d_k that n_heads does not divide is a UserError. For an
    # explicit per-head width instead, set attention.d_head (multihead) or attention.d_attn
    # (additive); the total is then n_heads times it. 64 = d_model, as in Vaswani et al.
    "d_k": 64,
    "dropout": 0.0,
}
TRAIN_DEFAULTS: dict[str, Any] = {
    "batch_size": 64,
    "val_every": 100,  # steps between validations (and one at the end)
    "log_every": 10,  # steps between lr / time / throughput points (train/loss: every step)
}
PHASES = ("tune", "final")
MAX_SEED = 2**32 - 1  # the range every seeding library accepts (numpy's is the narrowest)


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
        return f"{self.task}/{self.attention}/{self.optimizer}/lr={self.lr:g}/seed={self.seed}"

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
    """Fill in defaults, apply dotted overrides, and check every value a user can get wrong."""
    try:
        task_spec = get_task(task)
    except TaskInputError as err:
        raise UserError(str(err)) from None
    _check_choice("attention", attention, ATTENTION)
    _check_choice("optimizer", optimizer, OPTIMIZERS)
    _check_choice("phase", phase, PHASES)
    sections = {
        "task": dict(task_spec.params),
        "model": dict(MODEL_DEFAULTS),
        "attention": dict(ATTENTION[attention].params),
        "optim": param_defaults(optimizer),
        "train": dict(TRAIN_DEFAULTS),
    }
    for key, value in (overrides or {}).items():
        _apply_override(sections, key, value)
    lr = OPTIMIZERS[optimizer].default_lr if lr is None else lr
    steps = task_spec.default_steps if steps is None else steps
    _check_positive("lr", lr, float)
    _check_positive("steps", steps, int)
    _check_int("seed", seed, minimum=0, maximum=MAX_SEED)
    _check_sections(sections)
    _check_attention_widths(attention, sections["model"], sections["attention"])
    return RunConfig(
        task=task,
        attention=attention,
        optimizer=optimizer,
        lr=float(lr),
        seed=int(seed),
        steps=int(steps),
        phase=phase,
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


def _apply_override(sections: dict[str, dict[str, Any]], key: str, value: Any) -> None:
    prefix, _, name = key.partition(".")
    if prefix not in sections or not name:
        raise UserError(
            f"{shown_key(key)}: unknown key (keys look like SECTION.NAME with SECTION one of: "
            f"{', '.join(sections)})"
        )
    section = sections[prefix]
    if name not in section:
        choices = ", ".join(f"{prefix}.{k}" for k in sorted(section)) or "none"
        raise UserError(f"{shown_key(key)}: unknown key (choose from: {choices})")
    section[name] = _coerce(key, value, section[name])


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Give `value` the type of `default`; None defaults accept numbers or null."""
    if isinstance(value, str) and (default is None or isinstance(default, float)):
        value = _float_or_str(value)  # YAML 1.1 reads 1e-8 (no dot) as a string
    if default is None or value is None:
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            return value
        raise UserError(f"{key}={value!r}: expected a number or null")
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise UserError(f"{key}={value!r}: expected true or false")
    if isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{key}={value!r}: expected an integer")
    if isinstance(default, float):
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise UserError(f"{key}={value!r}: expected a finite number")
    if isinstance(value, str):
        return value
    raise UserError(f"{key}={value!r}: expected a string")


def _float_or_str(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _check_sections(sections: dict[str, dict[str, Any]]) -> None:
    model, optim, train = sections["model"], sections["optim"], sections["train"]
    for name in ("d_model", "n_layers", "d_ff", "d_k"):  # torch takes sizes as int64
        _check_int(f"model.{name}", model[name], minimum=1, maximum=MAX_WIDTH)
    if not 0.0 <= model["dropout"] < 1.0:
        raise UserError(f"model.dropout={model['dropout']}: must be in [0, 1)")
    for name in ("batch_size", "val_every", "log_every"):
        _check_positive(f"train.{name}", train[name], int)
    _check_choice("optim.schedule", optim["schedule"], SCHEDULES)
    _check_int("optim.warmup_steps", optim["warmup_steps"], minimum=0)
    if optim["grad_clip"] < 0:
        raise UserError(f"optim.grad_clip={optim['grad_clip']}: must be >= 0 (0 = off)")
    if optim["weight_decay"] < 0:
        raise UserError(f"optim.weight_decay={optim['weight_decay']}: must be >= 0")


def _check_attention_widths(attention: str, model: dict[str, Any], params: dict[str, Any]) -> None:
    """The widths the attention module would reject (d_k vs n_heads, d_model vs n_heads)."""
    try:
        check_attention(attention, model["d_model"], model["d_k"], **params)
    except (ValueError, TypeError, OverflowError) as err:  # as torch would reject them later
        shown = ", ".join(f"attention.{k}={v}" for k, v in params.items() if v is not None)
        raise UserError(
            f"attention {attention!r} with model.d_model={model['d_model']}, "
            f"model.d_k={model['d_k']}{', ' + shown if shown else ''}: {err}"
        ) from None


def _check_choice(name: str, value: str, choices: Mapping[str, Any] | tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"unknown {name} {value!r} (choose from: {', '.join(sorted(choices))})")


def _check_positive(name: str, value: Any, kind: type) -> None:
    ok_type = isinstance(value, int | float) if kind is float else isinstance(value, int)
    if isinstance(value, bool) or not ok_type or not 0 < value < math.inf:
        what = "a number" if kind is float else "an integer"
        raise UserError(f"{name}={value!r}: must be {what} > 0")


def _check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{name}={value!r}: must be an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise UserError(f"{name}={value!r}: must be an integer <= {maximum}")
