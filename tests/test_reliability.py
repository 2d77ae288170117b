"""Every bad-input case of scripts/reliability.py behaves as docs/reliability.md says (the table cannot drift)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("reliability_script", ROOT / "scripts" / "reliability.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


rel = _script()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> list:
    return rel.run_all(tmp_path_factory.mktemp("reliability"))


def test_every_case_exits_as_expected_with_one_line(outcomes: list) -> None:
    for o in (o for o in outcomes if not o.skipped):
        assert o.code == o.case.expect, (o.case.name, o.output)
        assert "Traceback" not in o.output, (o.case.name, o.output)
        if o.case.expect == 2:
            errors = [ln for ln in o.output.splitlines() if ln.strip()]
            # one line: the refusal, and before it at most a data warning that is true whatever follows
            assert errors[-1].startswith("error:"), (o.case.name, o.output)
            assert all(ln.startswith("warning:") for ln in errors[:-1]), (o.case.name, o.output)


def test_refused_input_leaves_nothing_behind(outcomes: list) -> None:
    for o in outcomes:
        hidden = [p for p in o.left if Path(p).name.startswith(".")]
        assert not hidden, (o.case.name, o.left)
        if o.case.expect != 0:
            assert o.left == [], (o.case.name, o.left)


def test_docs_table_is_up_to_date(outcomes: list) -> None:
    """The whole table; where the root-only (tmpfs) cases cannot run, the rest of it."""
    doc = (ROOT / "docs" / "reliability.md").read_text()
    assert rel.render(outcomes) == rel.comparable(doc, outcomes), \
        "docs/reliability.md is out of date: run python scripts/reliability.py (as root)"


def test_root_only_cases_run_as_root(outcomes: list) -> None:
    skipped = [(o.case.name, o.skipped) for o in outcomes if o.skipped]
    if skipped:
        pytest.skip(f"{len(skipped)} full/read-only disk cases could not run here: {skipped[0][1]}")
