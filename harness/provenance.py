"""What a run was made from (its code, its data, its software), and whether a FINISHED cell
may be reused by a later launch.

A cell's id hashes its configuration only. Two more facts decide what a number means, and
every run records them (names in harness.schema):

- Code. `harness.git_commit` is the HEAD of the harness checkout (for people, and as
  `mlflow.source.git.commit` for MLflow's UI). `harness.code_digest` is a sha256 over the
  source files of the packages that train, `harness/` and `tasks/` (relative path and bytes of
  every .py file, in sorted order), leaving out `harness/report/`, which only reads runs. The
  digest sees what a commit cannot: edits not committed yet, and an install outside git; and
  a commit that changes no training code (a README, a grid, the report) keeps it.
- Data. `harness.data_digest` is a sha256 over the run's data as the training process built
  it: the vocabulary and output sizes, then per split (train, val, test) each tensor's name,
  dtype, shape and bytes. `harness.heldout_digest` covers the validation and test splits only.
  Tasks promise (tasks.base) that validation and test data depend on the task's parameters
  alone, so every run of one task and parameter setting shares a held-out digest, and runs of
  one seed (the runs a paired comparison pairs) share a data digest. Hashing the tensors costs
  about 20-40 ms for a synthetic task's 7-15 MiB here, once per process for the data a worker
  keeps (tasks.cache). The three splits are also logged as MLflow dataset inputs (one per
  split, context `train`, `val` or `test`, each with its own digest), which MLflow's UI shows.
- Software. Each run also records the versions of Python, torch, Lightning and MLflow of the
  process that trained it (`env.*`): on a Ray cluster that need not be the launcher's machine.

Reusing a finished cell. The launcher compares, for each cell it would skip, without
training:
- code: its own code digest with the run's (runs recorded before code digests: the commit);
  reading about a hundred small files takes milliseconds;
- data, for tasks whose data is not a function of code, parameters and seed: tasks that read
  files or the interpreter's standard library (char_lm, text_cls; their default corpora come
  from the running Python, so two patch releases give two corpora). For those the launcher
  builds the cell's data here (corpus readers cache their work; a fraction of a second a seed)
  and compares data digests. A synthetic (`pure`) task's data is fixed by the code digest and
  the cell id together; were a torch release to change its random numbers, the runs would
  show it: the report flags a seed trained on two data digests.
What the launcher builds is this machine's data; workers on other machines record their own,
and the report compares what the runs recorded.

A cell whose code or data differs is reused, with one line saying so; `harness run
--rerun-changed` trains such cells again (their new runs then count, as the newest FINISHED
run of a cell always does). The report lists every code version and data digest behind its
numbers and warns when they mix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import schema

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput

    from harness.config import RunConfig
    from tasks.base import Split, TaskData

DIGEST_CHARS = 16  # hex characters kept of a sha256: 64 bits, within MLflow's 36 for datasets
NOT_TRAINING = ("harness/report/",)  # source that only reads runs: not part of the code digest
SOURCE_TYPE = "harness_task"  # an MLflow dataset's source type: built by a task from its params


def _hex(hasher: Any) -> str:
    return hasher.hexdigest()[:DIGEST_CHARS]


# --------------------------------------------------------------------------- code


def code_digest(packages: Iterable[Path]) -> str:
    """sha256 over every .py file under the `packages` folders (path relative to the folder
    above each, then bytes), in sorted order, without those under NOT_TRAINING."""
    files: list[tuple[str, Path]] = []
    for package in packages:
        for path in package.rglob("*.py"):
            relative = path.relative_to(package.parent).as_posix()
            if not relative.startswith(NOT_TRAINING):
                files.append((relative, path))
    hasher = hashlib.sha256()
    for relative, path in sorted(files):
        data = path.read_bytes()
        hasher.update(f"{relative}\0{len(data)}\0".encode())
        hasher.update(data)
    return _hex(hasher)


@functools.cache
def current_code_digest() -> str:
    """The code digest of the harness and tasks packages this process runs."""
    import harness
    import tasks

    return code_digest([Path(harness.__file__).parent, Path(tasks.__file__).parent])


def package_versions() -> dict[str, str]:
    """Versions of what trains (schema.PACKAGES), as `env.*` tags."""
    import mlflow
    import pytorch_lightning
    import torch

    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "mlflow": mlflow.__version__,
    }
    return {schema.ENV_PREFIX + name: versions[name] for name in schema.PACKAGES}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataDigests:
    data: str  # every split
    heldout: str  # validation and test
    splits: dict[str, str]  # "train" | "val" | "test" -> its digest


_KNOWN: dict[int, tuple[weakref.ref, DataDigests]] = {}  # id(TaskData) -> digests, while alive


def data_digests(data: TaskData) -> DataDigests:
    """The digests of `data`, computed once for as long as that object lives (a worker's
    cached data is hashed once, not once per cell)."""
    key = id(data)
    known = _KNOWN.get(key)
    if known is not None and known[0]() is data:
        return known[1]
    splits = {name: _split_digest(getattr(data, name)) for name in schema.SPLITS}
    sizes = f"vocab_size={data.vocab_size}\0n_outputs={data.n_outputs}\0"

    def combined(names: Iterable[str]) -> str:
        hasher = hashlib.sha256(sizes.encode())
        for name in names:
            hasher.update(f"{name}={splits[name]}\0".encode())
        return _hex(hasher)

    digests = DataDigests(combined(schema.SPLITS), combined(("val", "test")), splits)
    _KNOWN[key] = (weakref.ref(data, lambda _: _KNOWN.pop(key, None)), digests)
    return digests


def _split_digest(split: Split) -> str:
    hasher = hashlib.sha256()
    for name in ("x", "y", "score_mask", "padding"):
        tensor = getattr(split, name)
        if tensor is None:
            hasher.update(f"{name}=None\0".encode())
            continue
        tensor = tensor.detach().cpu().contiguous()
        hasher.update(f"{name}={tensor.dtype}{tuple(tensor.shape)}\0".encode())
        hasher.update(tensor.numpy())  # its buffer, not a copy
    return _hex(hasher)


def run_provenance(digests: DataDigests) -> dict[str, str]:
    """The tags the training process adds to a run: code and data digests, package versions."""
    return {
        schema.CODE_DIGEST: current_code_digest(),
        schema.DATA_DIGEST: digests.data,
        schema.HELDOUT_DIGEST: digests.heldout,
    } | package_versions()


def dataset_inputs(cfg: RunConfig, data: TaskData, digests: DataDigests) -> list[DatasetInput]:
    """The run's three splits as MLflow dataset inputs: named for the task, each with its
    digest, its context (`train`, `val`, `test`) and where it came from (JSON: task,
    parameters, and for the training split the seed)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for name in schema.SPLITS:
        split = getattr(data, name)
        source = {"task": cfg.task, "params": cfg.task_params}
        if name == "train":  # validation and test data are the same for every seed
            source["seed"] = cfg.seed
        profile = json.dumps({"num_rows": len(split), "seq_len": int(split.x.shape[1])})
        text = json.dumps(source, sort_keys=True, default=str)
        dataset = Dataset(cfg.task, digests.splits[name], SOURCE_TYPE, text, profile=profile)
        inputs.append(DatasetInput(dataset, [InputTag(schema.DATASET_CONTEXT, name)]))
    return inputs


# --------------------------------------------------------------------------- reuse


class ReuseCheck:
    """What the launcher compares before it reuses a FINISHED run of a cell: `changed` names
    what differs from this launch (nothing, "code" or "data")."""

    def __init__(self, commit: str | None) -> None:
        self.code, self.commit = current_code_digest(), commit
        self._data: dict[str, str] = {}  # data key -> data digest built here

    def changed(self, cfg: RunConfig, tags: Mapping[str, str]) -> str | None:
        if self._other_code(tags):
            return "code"
        if self._other_data(cfg, tags):
            return "data"
        return None

    def _other_code(self, tags: Mapping[str, str]) -> bool:
        recorded = tags.get(schema.CODE_DIGEST)
        if recorded:
            return recorded != self.code
        commit = tags.get(schema.GIT_COMMIT)  # a run recorded before code digests
        return bool(commit and self.commit and commit != self.commit)

    def _other_data(self, cfg: RunConfig, tags: Mapping[str, str]) -> bool:
        recorded = tags.get(schema.DATA_DIGEST)
        if not recorded:
            return False
        from harness.errors import UserError
        from tasks import TaskInputError, get_task

        task = get_task(cfg.task)
        if task.pure:  # a function of code (digest), parameters and seed (cell id)
            return False
        key = json.dumps([cfg.task, cfg.task_params, cfg.seed], sort_keys=True, default=str)
        if key not in self._data:
            try:
                self._data[key] = data_digests(task.build(cfg.task_params, cfg.seed)).data
            except TaskInputError as err:
                raise UserError(f"{cfg.run_name}: {err}") from None
        return recorded != self._data[key]

    def line(self, changed: Mapping[str, list[Mapping[str, str]]], rerun: bool) -> str:
        """One line about finished cells whose code or data differs from this launch's:
        `changed` maps "code" and "data" to the tags of their runs."""
        parts = []
        code = changed.get("code", [])
        if code:
            parts.append(f"{_cells(len(code))} made by other code ({self._other(code)})")
        data = changed.get("data", [])
        if data:
            parts.append(f"{_cells(len(data))} trained on other data than this machine builds")
        what = " and ".join(parts)
        if rerun:
            return f"training again {what} (--rerun-changed)"
        them = "it" if len(code) + len(data) == 1 else "them"
        return f"warning: reusing {what}; --rerun-changed trains {them} again"

    def _other(self, runs: list[Mapping[str, str]]) -> str:
        """Which code made `runs`: their commits against this checkout's, else digests."""
        commits = sorted({tags.get(schema.GIT_COMMIT, "")[:12] for tags in runs} - {""})
        now = (self.commit or "")[:12]
        if commits and now:
            if commits == [now]:
                return f"commit {now} as here, with other uncommitted edits"
            return f"commit {_some(commits)}; this checkout: {now}"
        digests = sorted({tags.get(schema.CODE_DIGEST, "") for tags in runs} - {""})
        return f"code digest {_some(digests) or 'not recorded'}; this code: {self.code}"


def _cells(n: int) -> str:
    return f"{n} finished cell" + ("" if n == 1 else "s")


def _some(names: list[str], shown: int = 3) -> str:
    """ "a, b, c and 2 more": a list cut short for one line."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
