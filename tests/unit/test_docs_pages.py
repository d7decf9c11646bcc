"""The docs as files: every tested-snippet marker can be followed, every relative link of the README and of docs/
leads to a file that exists (mkdocs --strict checks docs/ only, not the README), and the generated pages (tag
table, CLI reference) have their one source."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from tests.docs_snippets import KNOWN, SnippetError, marked_blocks
from tests.helpers import REPO

PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md"), *(REPO / "tests").rglob("README.md")])
# [text](target) outside code; images too. Targets with a scheme or only an anchor are not files.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.S)


def _hook() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generated_pages", REPO / "docs" / "hooks" / "generated_pages.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_markers_name_known_environments_and_precede_a_fence(page: Path) -> None:
    for block in marked_blocks(page):  # raises SnippetError for a marker it cannot follow
        assert block.kind == "file" or block.arg in KNOWN


def test_a_marker_for_an_unknown_environment_is_refused(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("<!-- test: slurmm -->\n```bash\ntrue\n```\n")
    with pytest.raises(SnippetError, match="unknown environment 'slurmm'"):
        marked_blocks(page)
    page.write_text("<!-- test: embedded -->\n\n```bash\ntrue\n```\n")
    with pytest.raises(SnippetError, match="right before a ``` fence"):
        marked_blocks(page)


def test_a_marker_shown_inside_a_code_block_is_not_a_marker(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("````markdown\n<!-- test: embedded -->\n```bash\nfalse\n```\n````\n"
                    "<!-- file: a.txt -->\n```text\nA\n```\n")
    (block,) = marked_blocks(page)
    assert (block.kind, block.arg, block.text) == ("file", "a.txt", "A\n")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_relative_links_lead_to_files_that_exist(page: Path) -> None:
    text = CODE.sub("", page.read_text())
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)} links to files that do not exist: {broken}"


def test_tag_page_lists_every_tag_the_code_defines() -> None:
    hook = _hook()
    rows = hook.tag_rows()
    described = {tag for _, tag, _ in rows}
    assert {"mltf.cache_key", "mltf.complete", "mltf.slurm.job_id", "mltf.data.cufile_json"} <= described
    assert all(meaning for _, _, meaning in rows), "a tag row without a meaning"
    page = hook.tags_markdown()
    for tag in hook.defined_tags().values():
        assert f"`{tag}`" in page
    # A continuation line belongs to its row, not to a row of its own.
    (meaning,) = [m for _, tag, m in rows if tag == "mltf.key_before_run"]
    assert meaning.endswith("(the run is then keyed without them)")


def test_cli_page_has_every_subcommand() -> None:
    commands = dict(_hook().cli_help())
    for name in ("run", "status", "ui", "config", "profiles", "render", "doctor", "job", "init", "schedule"):
        assert f"mltf-flow {name}" in commands
        assert commands[f"mltf-flow {name}"].startswith(f"usage: mltf-flow {name}")
    assert "--backend-config" in commands["mltf-flow render"]
