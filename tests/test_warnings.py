"""The suite's warning filters (pyproject.toml, `filterwarnings`): a deprecated library call
made from our code fails its test; the same call made by a library is shown, not fatal.

A warning is attributed to the module of the frame its `stacklevel` points at; pandas points
at the first frame outside pandas, the caller. The call below runs as a line of a module
named like ours (`harness...`) or like a library's: `__name__` is what names a frame's module.
"""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

# Deprecated in pandas 3 (a Pandas4Warning, a DeprecationWarning): a dict to from_records.
DEPRECATED_CALL = "pd.DataFrame.from_records({'a': [1, 2]})"


def _call_from(module: str) -> None:
    code = compile(DEPRECATED_CALL, f"{module.replace('.', '/')}.py", "exec")
    exec(code, {"__name__": module, "pd": pd})


@pytest.mark.parametrize("module", ["harness.report.collect", "tasks.text"])
def test_a_deprecated_pandas_call_in_our_code_is_an_error(module: str) -> None:
    with pytest.raises(DeprecationWarning, match="from_records is deprecated"):
        _call_from(module)


def test_the_same_call_made_by_a_library_is_shown_not_raised() -> None:
    with warnings.catch_warnings(record=True) as seen:  # keeps the suite's filters
        _call_from("seaborn.categorical")
        _call_from("harnessing")  # a name that only starts like ours
    assert [issubclass(w.category, DeprecationWarning) for w in seen] == [True, True]
