"""A test run leaves the repository as it found it: outputs go under build/ or a temporary folder.
conftest.py takes the snapshot when the session starts and runs this test last."""

from __future__ import annotations

import pytest

from tests.conftest import REPO_ROOT, TREE_AT_START
from tests.tree_state import tree_changes


def test_the_run_changed_no_tracked_file(request: pytest.FixtureRequest):
    before = request.config.stash.get(TREE_AT_START, None)
    after = tree_changes(REPO_ROOT)
    if before is None or after is None:
        pytest.skip("not a git checkout: nothing to compare against")
    touched = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    assert not touched, f"the test run wrote into the repository (write under build/ instead): {touched}"
