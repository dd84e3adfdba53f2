"""The JSON Schema of a grid file, for editors and other tools (`harness schema`).

pydantic derives it from `harness.spec.GridSpec`; each task, attention and optimizer entry is
then spelled out per registry name, with its `params` from the entry's parameters model (and
`model` / `train` from theirs), so an editor can complete and check parameter names and values.
The grid loader stays the judge: it also checks what a schema cannot (combinations, widths).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from harness.config import ModelParams, TrainParams
from harness.models.attention import ATTENTION
from harness.optim import OPTIMIZERS
from harness.spec import AttentionEntry, GridSpec, OptimizerEntry, TaskEntry, _Entry
from tasks import TASKS
from tasks.params import Params


def grid_json_schema() -> dict[str, Any]:
    """The JSON Schema of a grid file, for editors: GridSpec's, with each task, attention and
    optimizer entry spelled out per registry name (its `params` from the parameters model) and
    `model` / `train` from theirs."""
    schema = GridSpec.model_json_schema()
    defs = schema["$defs"]
    registries: list[tuple[type[_Entry], Mapping[str, type[Params]]]] = [
        (TaskEntry, {name: task.params for name, task in TASKS.items()}),
        (AttentionEntry, {name: kind.params for name, kind in ATTENTION.items()}),
        (OptimizerEntry, {name: spec.params for name, spec in OPTIMIZERS.items()}),
    ]
    for entry, registry in registries:
        generic = defs[entry.__name__]
        variants: list[dict[str, Any]] = [{"enum": list(registry)}]
        for name, model in registry.items():
            variant = copy.deepcopy(generic)
            variant["properties"]["name"] = {"const": name}
            variant["properties"]["params"] = _params_schema(model)
            variant["title"] = f"{entry.__name__} {name}"
            variants.append(variant)
        defs[entry.__name__] = {"anyOf": variants, "description": generic.get("description", "")}
    schema["properties"]["model"] = _params_schema(ModelParams)
    schema["properties"]["train"] = _params_schema(TrainParams)
    return schema


def _params_schema(model: type[Params]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("required", None)  # every parameter has a default
    schema.pop("description", None)  # the class docstring is for developers; fields say theirs
    return schema
