"""The grid spec: what loads, the defaults it fills in, and one exact line for every error."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import memory
from harness.config import ModelParams, TrainParams, parse_set_options, resolve
from harness.errors import UserError
from harness.grid import final_cells, groups
from harness.memory import check_fits
from harness.models.attention import ATTENTION
from harness.optim import OPTIMIZERS
from harness.preflight import check_cells
from harness.spec import GridSpec, grid_from_dict, load_grid
from harness.spec_schema import grid_json_schema
from tasks import TASKS
from tasks.params import Params

GRIDS = Path(__file__).resolve().parent.parent / "grids"
BASE: dict[str, Any] = {
    "name": "t",
    "tasks": ["copy"],
    "attention": ["dot"],
    "optimizers": ["adam"],
}


def _error(changes: dict[str, Any], source: str = "g.yaml") -> str:
    with pytest.raises(UserError) as info:
        grid_from_dict({**BASE, **changes}, source)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bare_names_load_with_defaults() -> None:
    spec = grid_from_dict(BASE)
    assert isinstance(spec, GridSpec)
    assert spec.protocol == "tune_then_final"
    assert [t.name for t in spec.tasks] == ["copy"] and spec.tasks[0].params == {}
    assert spec.tasks[0].steps is None
    assert spec.seeds.tune == [0] and spec.seeds.final == [1, 2, 3]
    assert spec.budget.steps is None and spec.budget.val_every is None
    assert spec.model == {} and spec.train == {} and spec.sweep == {}
    assert spec.optimizers[0].lr is None and spec.optimizers[0].lr_grid is None
    assert spec.optimizers[0].fixed_lr == OPTIMIZERS["adam"].default_lr
    assert spec.optimizers[0].tune_lrs == OPTIMIZERS["adam"].lr_grid


def test_full_entries_load() -> None:
    spec = grid_from_dict(
        {
            "name": "full-1.x_y",
            "protocol": "fixed",
            "tasks": ["copy", {"name": "char_lm", "params": {"seq_len": 32}, "steps": 300}],
            "attention": ["dot", {"name": "multihead", "params": {"n_heads": 2}}],
            "optimizers": [
                "adam",
                {"name": "sgd", "lr": 0.05, "lr_grid": [0.01, 0.1], "params": {"momentum": 0.5}},
            ],
            "seeds": {"tune": [3], "final": [4, 5]},
            "budget": {"steps": 100, "val_every": 10},
            "model": {"d_model": 32},
            "train": {"batch_size": 16},
            "sweep": {"model.d_k": [8, 32], "train.log_every": [5]},
        }
    )
    assert spec.protocol == "fixed"
    assert spec.tasks[1].params == {"seq_len": 32} and spec.tasks[1].steps == 300
    assert spec.attention[1].params == {"n_heads": 2}
    sgd = spec.optimizers[1]
    assert (sgd.fixed_lr, sgd.tune_lrs, sgd.params) == (0.05, (0.01, 0.1), {"momentum": 0.5})
    assert spec.seeds.tune == [3] and spec.seeds.final == [4, 5]
    assert spec.budget.steps == 100 and spec.budget.val_every == 10
    assert spec.sweep_points() == [
        {"model.d_k": 8, "train.log_every": 5},
        {"model.d_k": 32, "train.log_every": 5},
    ]


def test_seed_list_means_final_seeds() -> None:
    spec = grid_from_dict({**BASE, "seeds": [4, 7]})
    assert spec.seeds.final == [4, 7] and spec.seeds.tune == [0]


def test_exponent_without_dot_reads_as_a_number(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads `3e-3` as a string; the spec reads it as the number a user means.
    path = tmp_path / "grid.yaml"
    path.write_text(
        "name: t\ntasks: [copy]\nattention: [dot]\n"
        "optimizers: [{name: adam, lr: 3e-3, lr_grid: [1e-3, 1e-2], params: {eps: 1e-6}}]\n"
        "sweep: {model.dropout: [0, 1e-1]}\n"
    )
    spec = load_grid(path)
    assert spec.optimizers[0].lr == 0.003 and spec.optimizers[0].lr_grid == [0.001, 0.01]
    assert spec.optimizers[0].params == {"eps": 1e-6}
    assert spec.sweep == {"model.dropout": [0, 0.1]}


@pytest.mark.parametrize("name", ["quick", "full", "dk_scaling", "cluster_demo"])
def test_shipped_grids_load_and_tune_on_seeds_they_do_not_compare(name: str) -> None:
    spec = load_grid(GRIDS / f"{name}.yaml")
    assert spec.name == name
    if spec.protocol == "tune_then_final":
        assert not set(spec.seeds.tune) & set(spec.seeds.final)


def test_the_quick_grid_has_enough_seeds_to_call_a_difference() -> None:
    """With m comparisons in a task, an exact paired sign-flip test over n seeds can reach
    Holm-adjusted p = m * 2 / 2**n at best: the demo must be able to get below 0.05."""
    spec = load_grid(GRIDS / "quick.yaml")
    kinds, optimizers = len(spec.attention), len(spec.optimizers)
    points = len(spec.sweep_points())
    m = points * (
        optimizers * kinds * (kinds - 1) // 2 + kinds * optimizers * (optimizers - 1) // 2
    )
    assert m * 2 / 2 ** len(spec.seeds.final) < 0.05
    assert spec.description  # the report states the question the grid asks


def _choices(registry: dict[str, Any]) -> str:
    return f"(choose from: {', '.join(sorted(registry))})"


COPY_KEYS = ", ".join(f"task.{name}" for name in sorted(TASKS["copy"].params.model_fields))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {"nope": 1},
            "g.yaml: nope: unknown field (choose from: name, description, protocol, tasks, "
            "attention, optimizers, seeds, budget, tuning, model, train, sweep)",
        ),
        (
            {"tasks": ["copy", "nope"]},
            f"g.yaml: tasks[1]: unknown task 'nope' {_choices(TASKS)}",
        ),
        (
            {"tuning": {"scheduler": "halving", "eta": 1}},
            "g.yaml: tuning.eta: input should be greater than or equal to 2 (got 1)",
        ),
        (
            {"tuning": {"scheduler": "asha"}},
            "g.yaml: tuning.scheduler: input should be 'exhaustive' or 'halving' (got 'asha')",
        ),
        (
            {"tasks": [{"name": "nope"}]},
            f"g.yaml: tasks[0].name: unknown task 'nope' {_choices(TASKS)}",
        ),
        (
            {"attention": ["dot", "flash"]},
            f"g.yaml: attention[1]: unknown attention 'flash' {_choices(ATTENTION)}",
        ),
        (
            {"optimizers": ["lion"]},
            f"g.yaml: optimizers[0]: unknown optimizer 'lion' {_choices(OPTIMIZERS)}",
        ),
        ({"tasks": []}, "g.yaml: tasks: must not be empty"),
        (
            {"optimizers": [{"name": "adam", "lr_grid": []}]},
            "g.yaml: optimizers[0].lr_grid: must not be empty",
        ),
        (
            {"tasks": [{"name": "copy", "steps": "ten"}]},
            "g.yaml: tasks[0].steps: input should be a valid integer (got 'ten')",
        ),
        ({"seeds": ["a"]}, "g.yaml: seeds[0]: input should be a valid integer (got 'a')"),
        (
            {"seeds": {"final": [1, "x"]}},
            "g.yaml: seeds.final[1]: input should be a valid integer (got 'x')",
        ),
        (
            {"seeds": {"tune": [-1]}},
            "g.yaml: seeds.tune[0]: input should be greater than or equal to 0 (got -1)",
        ),
        ({"seeds": [1, 2, 1]}, "g.yaml: seeds: duplicate value 1"),
        ({"seeds": {"final": [0, 0]}}, "g.yaml: seeds.final: duplicate value 0"),
        (
            {"seeds": {"tune": [0, 5], "final": [5, 6]}},
            "g.yaml: seeds.tune and seeds.final must be disjoint (the learning rate is chosen on "
            "the tune seeds); both have 5",
        ),
        (
            {"seeds": [0, 1]},  # the list is the final seeds; the tune seeds default to [0]
            "g.yaml: seeds.tune and seeds.final must be disjoint (the learning rate is chosen on "
            "the tune seeds); both have 0",
        ),
        ({"budget": {"steps": 0}}, "g.yaml: budget.steps: input should be greater than 0 (got 0)"),
        (
            {"budget": {"val_every": -5}},
            "g.yaml: budget.val_every: input should be greater than 0 (got -5)",
        ),
        (
            {"budget": {"step": 5}},
            "g.yaml: budget.step: unknown field (choose from: steps, val_every)",
        ),
        (
            {"optimizers": ["adam", "sgd", {"name": "rmsprop", "lr": -0.1}]},
            "g.yaml: optimizers[2].lr: input should be greater than 0 (got -0.1)",
        ),
        (
            {"optimizers": [{"name": "adam", "lr": True}]},
            "g.yaml: optimizers[0].lr: expected a number (got True)",
        ),
        (
            {"optimizers": [{"name": "adam", "lr_grid": [0.001, 0.01, 0.001]}]},
            "g.yaml: optimizers[0].lr_grid: duplicate value 0.001",
        ),
        (
            {"optimizers": [{"name": "adam", "betas": [0.9]}]},
            "g.yaml: optimizers[0].betas: unknown field (choose from: name, params, lr, lr_grid)",
        ),
        ({"tasks": [3]}, "g.yaml: tasks[0]: expected a name or a mapping with `name:` (got 3)"),
        ({"sweep": {"model.d_k": [8, 16, 8]}}, "g.yaml: sweep.model.d_k: duplicate value 8"),
        ({"sweep": {"model.d_k": []}}, "g.yaml: sweep.model.d_k: must not be empty"),
        (
            {"tasks": ["copy", "reverse", {"name": "copy", "params": {"length": 10}}]},
            "g.yaml: tasks[2]: duplicate of tasks[0] (same name 'copy' and params)",
        ),
        (
            {"attention": ["additive", {"name": "additive", "params": {"n_heads": 1}}]},
            "g.yaml: attention[1]: duplicate of attention[0] (same name 'additive' and params)",
        ),
        (
            {"optimizers": ["sgd", {"name": "sgd", "lr": 0.3}]},
            "g.yaml: optimizers[1]: duplicate of optimizers[0] (same name 'sgd' and params)",
        ),
        (
            {"sweep": {"model.nope": [1, 2]}},
            "g.yaml: sweep.model.nope: unknown key (choose from: model.d_ff, model.d_k, "
            "model.d_model, model.dropout, model.n_layers)",
        ),
        (
            {"sweep": {"lr": [0.1]}},
            "g.yaml: sweep.lr: unknown key (keys look like SECTION.NAME with SECTION one of: "
            "task, model, attention, optim, train)",
        ),
        (
            {"attention": ["multihead", "dot"], "sweep": {"attention.n_heads": [1, 2]}},
            "g.yaml: sweep.attention.n_heads: unknown key (choose from: none) (with copy/dot/adam)",
        ),
        (
            {"tasks": ["reverse", {"name": "copy", "params": {"nope": 1}}]},
            f"g.yaml: tasks[1].params.nope: unknown key (choose from: {COPY_KEYS})",
        ),
        (
            {"model": {"d_model": 32, "nope": 1}},
            "g.yaml: model.nope: unknown key (choose from: model.d_ff, model.d_k, "
            "model.d_model, model.dropout, model.n_layers)",
        ),
        (
            {"model": {"d_k": 0}},
            "g.yaml: model.d_k=0: input should be greater than or equal to 1",
        ),
        ({"model": {1: 2}}, "g.yaml: model.1: input should be a valid string (got 1)"),
        (
            {"train": {"batch_size": "big"}},
            "g.yaml: train.batch_size='big': input should be a valid integer",
        ),
        (
            {"optimizers": [{"name": "adam", "params": {"schedule": "linear"}}]},
            "g.yaml: optimizers[0].params.schedule='linear': input should be 'constant' or "
            "'cosine'",
        ),
        (
            {"model": {"d_k": 16}, "sweep": {"model.d_k": [8, 32]}},
            "g.yaml: sweep.model.d_k: also set by model.d_k (set it in one place)",
        ),
        (
            {"protocol": "tune"},
            "g.yaml: protocol: input should be 'tune_then_final' or 'fixed' (got 'tune')",
        ),
        (
            {"budget": {"steps": 0}, "seeds": [-1], "tasks": []},
            "g.yaml: tasks: must not be empty (and 2 more)",
        ),
    ],
)
def test_validation_errors_name_the_field(changes: dict[str, Any], expected: str) -> None:
    assert _error(changes) == expected


def test_missing_required_field() -> None:
    with pytest.raises(UserError, match=r"^g\.yaml: attention: required field is missing$"):
        grid_from_dict({"name": "t", "tasks": ["copy"], "optimizers": ["adam"]}, "g.yaml")


@pytest.mark.parametrize("name", ["a/b", "..", ".", "", "-x", "a" * 65, "ok name"])
def test_bad_names_are_refused(name: str) -> None:
    message = _error({"name": name})
    assert message.startswith("g.yaml: name: must be 1-64 characters of letters, digits")
    assert message.endswith(f"(got {name!r})")


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: t\ntasks: [copy, reverse\nattention: [dot]\n")
    with pytest.raises(UserError) as info:
        load_grid(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid YAML: ") and "(line 3, column" in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(UserError, match=r"nope\.yaml: no such file$"):
        load_grid(path)


@pytest.mark.parametrize(
    ("text", "what"),
    [("- copy\n- reverse\n", "a list"), ("", "an empty file"), ("7", "the value 7")],
)
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str, what: str) -> None:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_grid(path)
    assert str(info.value) == (
        f"{path}: expected a mapping of grid fields (name, tasks, ...), got {what}"
    )


def test_fixed_protocol_has_no_tune_seeds_to_overlap() -> None:
    spec = grid_from_dict({**BASE, "protocol": "fixed", "seeds": [0, 1]})
    assert spec.seeds.final == [0, 1]


# --------------------------------------------------------------------------- the typed tree

# Computed before parameters became pydantic models: resuming a grid finds its runs by these.
PINNED_CELLS = [
    (("copy", "dot", "adam"), {}, "52f8773f55edcb33"),
    (
        ("char_lm", "multihead", "sgd"),
        {
            "lr": 0.1,
            "seed": 3,
            "steps": 50,
            "phase": "tune",
            "overrides": {"model.d_k": 32, "attention.n_heads": 2, "optim.momentum": 0.5},
        },
        "d1f2dd38dadb8be7",
    ),
    (
        ("text_cls", "additive", "adamw"),
        {
            "lr": 3e-3,
            "seed": 1,
            "overrides": {
                "attention.d_attn": 8,
                "optim.eps": 1,
                "train.batch_size": 16,
                "model.dropout": 0.1,
                "task.max_len": 64,
            },
        },
        "2e1e40d767e5e4bb",
    ),
    (
        ("assoc_recall", "scaled_dot", "rmsprop"),
        {
            "seed": 7,
            "overrides": {
                "optim.schedule": "cosine",
                "optim.warmup_steps": 10,
                "optim.grad_clip": 1,
                "model.d_model": 32,
            },
        },
        "07176d355f10854d",
    ),
    (
        ("copy", "multihead", "sgd"),
        {
            "lr": 1,
            "seed": 2,
            "overrides": {"optim.nesterov": True, "optim.weight_decay": 0, "model.dropout": 0},
        },
        "55fced9f5d71fcbc",
    ),
]


@pytest.mark.parametrize(("names", "kwargs", "cell_id"), PINNED_CELLS, ids=lambda v: str(v)[:30])
def test_cell_ids_are_unchanged(names: tuple[str, str, str], kwargs: dict, cell_id: str) -> None:
    assert resolve(*names, **kwargs).cell_id == cell_id


def test_resolved_values_keep_their_types() -> None:
    """An int given for a float parameter is stored as a float (as the cell id was computed)."""
    names, kwargs, _ = PINNED_CELLS[2]
    cfg = resolve(*names, **kwargs)
    assert cfg.optim["eps"] == 1.0 and isinstance(cfg.optim["eps"], float)
    assert cfg.flat_params()["optim.eps"] == "1.0" and cfg.flat_params()["attention.d_attn"] == "8"
    assert cfg.to_dict()["task_params"]["max_len"] == 64
    assert cfg.run_name == "text_cls/additive/adamw/lr=0.003/seed=1"


def _entries() -> list[tuple[str, str, type[Params]]]:
    return (
        [("task", name, t.params) for name, t in TASKS.items()]
        + [("attention", name, k.params) for name, k in ATTENTION.items()]
        + [("optim", name, o.params) for name, o in OPTIMIZERS.items()]
        + [("model", "model", ModelParams), ("train", "train", TrainParams)]
    )


@pytest.mark.parametrize(("section", "name", "model"), _entries(), ids=lambda v: str(v)[:20])
def test_every_parameter_has_a_default_and_a_description(
    section: str, name: str, model: type[Params]
) -> None:
    defaults = model.defaults()
    assert model.model_validate(defaults).model_dump() == defaults
    for field, default, description in model.described():
        assert description, f"{section}.{field} of {name} has no description"
        assert defaults[field] == default


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_combination_resolves_with_defaults(task: str) -> None:
    for attention in ATTENTION:
        for optimizer in OPTIMIZERS:
            cfg = resolve(task, attention, optimizer)
            assert cfg.task_params == TASKS[task].params.defaults()
            assert cfg.attention_params == ATTENTION[attention].params.defaults()
            assert cfg.optim == OPTIMIZERS[optimizer].params.defaults()


def _numbers(model: type[Params]) -> list[tuple[str, type]]:
    """(field, int or float) of every numeric parameter of `model`."""
    out = []
    for field, default, _ in model.described():
        kind = type(default)
        if default is None:  # an optional width
            kind = int
        if kind in (int, float):
            out.append((field, kind))
    return out


@pytest.mark.parametrize(("section", "name", "model"), _entries(), ids=lambda v: str(v)[:20])
def test_values_torch_would_reject_are_refused_naming_the_key(
    section: str, name: str, model: type[Params]
) -> None:
    """Sizes beyond int64, non-finite floats and bools are one-line errors before any run."""
    names = {
        "task": (name, "dot", "adam"),
        "attention": ("copy", name, "adam"),
        "optim": ("copy", "dot", name),
    }.get(section, ("copy", "dot", "adam"))
    for field, kind in _numbers(model):
        bad = [2**64, True, -(2**63) - 1] if kind is int else [math.inf, math.nan, True]
        for value in bad:
            key = f"{section}.{field}"
            with pytest.raises(UserError) as info:
                resolve(*names, overrides={key: value})
            message = str(info.value)
            assert message.startswith(f"{key}=") and "\n" not in message, message


def test_set_reads_exponents_as_numbers() -> None:
    overrides = parse_set_options(["optim.eps=1e-6", "model.dropout=1e-1", "train.batch_size=8"])
    cfg = resolve("copy", "dot", "adam", overrides=overrides)
    assert cfg.optim["eps"] == 1e-6 and cfg.model["dropout"] == 0.1
    with pytest.raises(UserError, match=r"^train\.batch_size='8e0': input should be a valid"):
        resolve("copy", "dot", "adam", overrides=parse_set_options(["train.batch_size=8e0"]))


def test_a_run_too_large_for_memory_is_refused_with_the_estimate() -> None:
    big = {"model.d_model": 2**15, "model.d_ff": 2**16, "train.batch_size": 2**20}
    cfg = resolve("copy", "dot", "adam", overrides=big)  # a valid configuration...
    with pytest.raises(UserError) as info:
        check_fits(cfg)  # ...that does not fit here
    message = str(info.value)
    assert message.startswith("needs about ") and "GiB" in message and "\n" not in message
    assert "model.d_model=32768" in message and "train.batch_size=1048576" in message
    spec = grid_from_dict({**BASE, "model": {"d_model": 2**15, "d_ff": 2**16}})  # loads
    with pytest.raises(UserError, match=r"^copy/dot/adam: needs about .* GiB"):
        check_cells(spec, workers_here=1)
    check_cells(grid_from_dict({**BASE, "model": {"d_model": 2**10}}), workers_here=None)


def test_evaluation_batches_count_in_the_estimate(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training at batch 1 on long sequences still evaluates 500 examples at once."""
    monkeypatch.setattr(memory, "machine_memory", lambda: 8 * 2**30)
    long = {"task.length": 2048, "train.batch_size": 1}
    with pytest.raises(UserError, match="needs about"):
        check_fits(resolve("copy", "dot", "adam", overrides=long))


def test_the_shipped_grids_fit_an_8_gib_machine_with_two_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory, "machine_memory", lambda: 8 * 2**30)
    for path in sorted(GRIDS.glob("*.yaml")):
        spec = load_grid(path)
        for group in groups(spec):
            check_fits(final_cells(spec, group, group.fixed_lr)[0], workers=2)


def test_width_errors_name_the_field_that_set_them() -> None:
    assert _error({"attention": [{"name": "multihead", "params": {"n_heads": 3}}]}) == (
        "g.yaml: attention[0].params.n_heads=3: with model.d_model=64, model.d_k=64: "
        "d_model=64 is not divisible by n_heads=3"
    )
    message = _error({"attention": ["multihead"], "sweep": {"model.d_k": [30]}})
    assert message.startswith("g.yaml: sweep.model.d_k=30: with model.d_model=64")


def test_the_json_schema_accepts_the_shipped_grids_and_spells_out_params() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = grid_json_schema()
    for path in GRIDS.glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    bad = {**BASE, "tasks": [{"name": "copy", "params": {"length": "ten"}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    names = json.dumps(schema)
    assert all(f'"const": "{name}"' in names for name in [*TASKS, *ATTENTION, *OPTIMIZERS])
