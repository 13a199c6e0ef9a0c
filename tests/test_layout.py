"""The layering rules that import-linter cannot see (its contracts are in pyproject.toml)."""

from __future__ import annotations

import re
from pathlib import Path

import wanserve

PACKAGE = Path(wanserve.__file__).parent


def sources_outside(*folders: str) -> dict[str, str]:
    return {str(p.relative_to(PACKAGE)): p.read_text() for p in PACKAGE.rglob("*.py")
            if p.relative_to(PACKAGE).parts[0] not in folders}


def test_only_the_api_names_http_statuses():
    """Answering HTTP is the API's job (a downloader may read an upstream's status_code)."""
    http = re.compile(r"\bstatus_code\s*=[^=]|HTTPException|\bfastapi\b|\bstarlette\b|\bHTTPStatus\b")
    assert [name for name, text in sources_outside("api").items() if http.search(text)] == []


def test_only_storage_builds_result_and_upload_paths():
    paths = re.compile(r"""["'](results|uploads|partial)["']\s*/|/\s*["'](results|uploads|partial)["']""")
    assert [name for name, text in sources_outside("storage").items() if paths.search(text)] == []


def test_only_config_reads_the_environment():
    env = re.compile(r"os\.environ|os\.getenv|getenv\(")
    assert [name for name, text in sources_outside().items()
            if env.search(text) and name != "config.py"] == []


def test_error_codes_are_spelled_once():
    """Every code string lives in errors.Code; other modules use the enum."""
    from wanserve.errors import Code

    literal = re.compile("|".join(re.escape(f'"{c.value}"') for c in Code))
    assert [name for name, text in sources_outside().items()
            if name != "errors.py" and literal.search(text)] == []


def test_the_docs_show_the_state_machine_the_store_uses():
    from wanserve.tasks.states import describe

    assert describe() in (PACKAGE.parents[1] / "docs" / "architecture.md").read_text()
