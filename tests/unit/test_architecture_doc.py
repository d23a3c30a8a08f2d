"""docs/architecture.md stays true to the code it describes."""

from __future__ import annotations

import re

from modelgate.core.store.catalog import key_table
from tests.procs import REPO_ROOT

DOC = REPO_ROOT / "docs" / "architecture.md"


def test_the_key_table_is_the_one_the_store_generates() -> None:
    text = DOC.read_text()
    found = re.search(r"<!-- keys:begin -->\n(.*?)<!-- keys:end -->", text, re.S)
    assert found is not None, "docs/architecture.md lost its key table markers"
    assert found.group(1) == key_table(), (
        "the key table is stale: run `python -m modelgate.core.store.catalog --write "
        "docs/architecture.md`")


def test_every_file_the_page_names_exists() -> None:
    text = DOC.read_text()
    named = {f"modelgate/{n}" for n in re.findall(
        r"`((?:gateway|worker|autoscaler|core|cli)/[\w/]+\.py)`", text)}
    named |= {f"modelgate/core/store/{n}" for n in re.findall(r"`store/(\w+\.py)`", text)}
    assert len(named) > 10
    missing = sorted(n for n in named if not (REPO_ROOT / n).is_file())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_no_code_cites_a_design_document_outside_the_repository() -> None:
    cited = [str(path.relative_to(REPO_ROOT)) for folder in ("modelgate", "tests", "bench")
             for path in (REPO_ROOT / folder).rglob("*.py")
             if "DESIGN" in path.read_text() and path.name != "test_architecture_doc.py"]
    assert not cited, f"point these at docs/architecture.md instead: {cited}"
