"""mkdocs hook: the pages whose content has one source in the code, filled in at build time.

* ``<!-- generated: tags -->`` becomes the table of every ``mltf.*`` run tag, read from the table in
  ``mltf_flow/tags.py``'s module docstring (parsed with :mod:`ast`, nothing imported), plus any ``TAG_*``
  constant the table does not describe yet, so the page lists every tag the code defines.
* ``<!-- generated: cli -->`` becomes ``mltf-flow --help`` and the help of every subcommand, from the
  CLI's own argument parser.

The test of the docs (tests/unit/test_docs_pages.py) calls :func:`tag_rows` and :func:`cli_help` too.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TAGS_MODULE = REPO / "mltf_flow" / "tags.py"
_ROLE = re.compile(r":(?:mod|data|func|class|attr|meth):`~?([^`]+)`")


def _inline(text: str) -> str:
    """reST inline markup of the docstring as Markdown: ``x`` and :role:`x` become `x`."""
    text = _ROLE.sub(r"`\1`", text)
    return text.replace("``", "`").replace("|", "\\|")


def tag_rows() -> list[tuple[str, str, str]]:
    """(section, tag, meaning) for every row of the table in tags.py's docstring, in its order."""
    tree = ast.parse(TAGS_MODULE.read_text())
    doc = ast.get_docstring(tree) or ""
    lines = doc.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("=====")]
    if len(rules) < 3:
        raise ValueError(f"{TAGS_MODULE}: no reST simple table (three ===== rules) in the module docstring")
    width = len(lines[rules[0]].split(" ")[0])
    rows: list[tuple[str, str, str]] = []
    section = ""
    for line in lines[rules[1] + 1:rules[2]]:
        if line.startswith("*"):
            section = line.strip()
        elif line[:width].strip():
            rows.append((section, line[:width].strip(), line[width:].strip()))
        elif rows and line.strip():  # a continuation of the previous meaning
            sec, tag, meaning = rows[-1]
            rows[-1] = (sec, tag, f"{meaning} {line.strip()}")
    return rows


def defined_tags() -> dict[str, str]:
    """Every ``TAG_*`` constant of tags.py: name -> tag."""
    tree = ast.parse(TAGS_MODULE.read_text())
    found: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id.startswith("TAG_"):
                    found[target.id] = node.value.value
    return found


def _group(section: str, first: bool) -> str:
    """``*lineage* (step runs)`` -> ``lineage (step runs)`` on a group's first row, ``lineage`` on the others."""
    name, _, note = section.strip("*").partition("*")
    return _inline(f"{name} {note.strip()}" if first and note.strip() else name).strip()


def tags_markdown() -> str:
    """One table of every tag: the docstring's rows in its order, then constants it does not describe yet."""
    rows = tag_rows()
    out = ["| tag | meaning (who sets it) | group |", "|---|---|---|"]
    previous = None
    for section, tag, meaning in rows:
        out.append(f"| `{tag}` | {_inline(meaning)} | {_group(section, section != previous)} |")
        previous = section
    described = {tag for _, tag, _ in rows}
    missing = sorted(tag for tag in defined_tags().values() if tag not in described)
    out += [f"| `{tag}` | (defined in `mltf_flow/tags.py`, not yet described in its table) | |" for tag in missing]
    return "\n".join(out) + "\n"


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_help() -> list[tuple[str, str]]:
    """(command, help text) for ``mltf-flow`` and each subcommand, nested ones too, as --help prints them."""
    os.environ.setdefault("COLUMNS", "100")  # argparse wraps to the terminal; a page has none
    from mltf_flow.cli import _parser

    found: list[tuple[str, str]] = []

    def walk(prog: str, parser: argparse.ArgumentParser) -> None:
        found.append((prog, parser.format_help()))
        for name, child in _subcommands(parser).items():
            walk(f"{prog} {name}", child)

    walk("mltf-flow", _parser())
    return found


def cli_markdown() -> str:
    parts = []
    for prog, text in cli_help():
        parts += [f"## `{prog}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(parts)


# A reST role in a docstring, as mkdocstrings renders it: :class:<code>~a.b.C</code>.
_RENDERED_ROLE = re.compile(r":(?:mod|data|func|class|attr|meth|exc|obj):<code>(~?)([^<]+)</code>")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """The API pages: the docstrings' reST roles shown as code (``~`` keeps the last name, as in Sphinx)."""
    return _RENDERED_ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>",
                              html)


GENERATED = {"<!-- generated: tags -->": tags_markdown, "<!-- generated: cli -->": cli_markdown}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    for marker, make in GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
