"""The code, data and software behind a report's numbers, and the warnings when they mix.

Read from what the runs recorded (harness.provenance writes it; this module reads the run
schema only): for every run that counts (each cell's newest FINISHED run, final and tune: the
tune runs chose the rates), its commit and code digest, its data and held-out digests, and its
package versions. The report warns up front when
- the runs come from more than one version of the code (commit and code digest);
- runs of one task, parameter setting and seed (the runs a paired comparison pairs) trained on
  data with different digests;
- runs of one task and parameter setting were validated and tested on different data (their
  held-out digests differ; tasks promise one held-out set per setting);
- the runs were made with different versions of Python, torch, Lightning or MLflow.
A run made before these facts were recorded shows "not recorded" where they would be; a
digest it lacks is never counted as one more digest.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pandas as pd

from harness import schema

NOT_RECORDED = "not recorded"
SHOWN = 5  # mixed seeds named in a warning; the rest counted


def provenance(runs: pd.DataFrame) -> dict[str, Any]:
    """What appendix B lists (`code`, `data`, `software` rows) and the summary's `warnings`."""
    used = runs[runs.current & (runs.status == "FINISHED")].copy()
    if used.empty:
        return {"code": [], "data": [], "software": [], "warnings": []}
    used["point"] = _task_points(used)
    code = _code(used)
    data, mixed_seeds, mixed_heldout = _data(used)
    software = _software(used)
    warnings = []
    if len(code) > 1:
        versions = ", ".join(f"{c['label']} ({_runs(c['runs'])})" for c in code)
        warnings.append(
            f"These results mix {len(code)} versions of the training code: {versions}. "
            "Differences between configurations may come from the change of code "
            "(appendix B lists the runs of each)."
        )
    if mixed_seeds:
        named = ", ".join(mixed_seeds[:SHOWN])
        more = f" and {len(mixed_seeds) - SHOWN} more" if len(mixed_seeds) > SHOWN else ""
        warnings.append(
            f"Runs of one seed trained on different data: {named}{more}. Comparisons pair "
            "runs by seed assuming the same data (appendix B)."
        )
    for label in mixed_heldout:
        warnings.append(
            f"Validation and test data differ between runs of {label}: their scores come "
            "from different test sets (appendix B)."
        )
    mixed_software = [s for s in software if len(s["values"]) > 1]
    if mixed_software:
        text = "; ".join(
            f"{s['package']} " + ", ".join(f"{v} ({_runs(n)})" for v, n in s["values"])
            for s in mixed_software
        )
        warnings.append(f"The runs were made with different software: {text}.")
    return {"code": code, "data": data, "software": software, "warnings": warnings}


def _runs(n: int) -> str:
    return f"{n} run" + ("" if n == 1 else "s")


def _task_points(runs: pd.DataFrame) -> pd.Series:
    """Per run, the task parameters that differ between the task's runs ("" if none do), so
    data rows tell the settings of a task apart."""
    params = runs.params.map(lambda p: {k: v for k, v in p.items() if k.startswith("task.")})
    points = pd.Series("", index=runs.index)
    for _, rows in runs.groupby("task", sort=False):
        keys = sorted({k for p in params[rows.index] for k in p})
        varying = [k for k in keys if len({params[i].get(k) for i in rows.index}) > 1]
        for i in rows.index:
            points[i] = " ".join(f"{k}={params[i].get(k, '')}" for k in varying)
    return points


def _phases(rows: pd.DataFrame) -> dict[str, int]:
    return {
        "runs": len(rows),
        "final": int((rows.phase == "final").sum()),
        "tune": int((rows.phase == "tune").sum()),
    }


def _code(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """One row per (commit, code digest), in the order the runs started; a commit with more
    than one code digest (edits not committed) is labelled with both."""
    ordered = runs.sort_values("start_time", kind="stable")
    versions = list(dict.fromkeys(zip(ordered.git_commit, ordered.code_digest, strict=True)))
    per_commit = Counter(commit for commit, _ in versions)
    out = []
    for commit, digest in versions:
        rows = ordered[(ordered.git_commit == commit) & (ordered.code_digest == digest)]
        label = f"commit {commit[:12] or NOT_RECORDED}"
        if per_commit[commit] > 1:
            label += f" (code {digest or NOT_RECORDED})"
        out.append({"commit": commit or NOT_RECORDED, "code_digest": digest or NOT_RECORDED,
                    "label": label, **_phases(rows)})  # fmt: skip
    return out


def _data(runs: pd.DataFrame) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """One row per task, setting, seed and digests; the seeds and the task settings whose
    runs recorded more than one digest."""
    mixed_seeds, mixed_heldout, flagged = [], [], set()
    for (task, point), rows in runs.groupby(["task", "point"], sort=False):
        label = f"{task} ({point})" if point else task
        if rows.heldout_digest[rows.heldout_digest != ""].nunique() > 1:
            mixed_heldout.append(label)
            flagged.update((task, point, seed) for seed in rows.seed)
        for seed, same in rows.groupby("seed"):
            if same.data_digest[same.data_digest != ""].nunique() > 1:
                mixed_seeds.append(f"{label} seed {seed}")
                flagged.add((task, point, seed))
    keys = ["task", "point", "seed", "data_digest", "heldout_digest"]
    out = []
    for (task, point, seed, data, heldout), rows in runs.groupby(keys, sort=False):
        out.append({
            "task": task, "point": point, "seed": int(seed),
            "data_digest": data or NOT_RECORDED, "heldout_digest": heldout or NOT_RECORDED,
            "mixed": (task, point, seed) in flagged, **_phases(rows),
        })  # fmt: skip
    out.sort(key=lambda r: (r["task"], r["point"], r["seed"]))
    return out, mixed_seeds, mixed_heldout


def _software(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Per package, each version the runs recorded and how many runs did."""
    out = []
    for package in schema.PACKAGES:
        counts = runs[schema.ENV_PREFIX + package].replace("", NOT_RECORDED).value_counts()
        values = [(str(v), int(n)) for v, n in counts.items()]
        if values != [(NOT_RECORDED, len(runs))]:
            out.append({"package": package, "values": values})
    return out
