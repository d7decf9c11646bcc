"""The tested snippets of the docs: how a page marks them and how they become one shell script.

A shell block is tested when the line before its fence is ``<!-- test: ENV -->``; ENV says where it can run:
``embedded`` (the embedded default: sqlite store in the current directory, LocalCluster, no server) or a test
environment of tests/environments.py (``slurm``, ``rucio``, ...), run only when the test run asks for it. A
block after ``<!-- file: PATH -->`` is not run but written to PATH (relative to the directory the script is in
at that point), so a tutorial creates its files from the code it shows. Unmarked blocks are not run
(commands for a real site).

Blocks run in page order in one ``bash -euo pipefail`` script, as a reader types them in one terminal: ``cd``
and ``export`` carry over. A block states its own expectation in shell (``grep -q``, ``test -f``), so a doc
that says something untrue fails. The runner is tests/integration/test_docs_snippets.py.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from tests.environments import ENVIRONMENTS
from tests.helpers import REPO

#: Where a block can run: the embedded default, or one of the test environments.
KNOWN = frozenset({"embedded", *ENVIRONMENTS})
MARK = re.compile(r"^<!--\s*(test|file):\s*(\S+)\s*-->\s*$")
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")
SHELLS = frozenset({"bash", "sh", "shell", "console"})


@dataclass(frozen=True)
class Block:
    """A marked block of a page: ``kind`` is ``test`` (run where ``arg`` is) or ``file`` (written to ``arg``)."""

    page: Path
    line: int  # 1-based line of the marker
    kind: str
    arg: str
    language: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


class SnippetError(ValueError):
    """A page whose markers cannot be followed (a marker not before a fence, an unknown environment)."""


def marked_blocks(page: Path) -> list[Block]:
    """Every marked block of a Markdown page, in order (a marker shown inside a code block is not one)."""
    lines = page.read_text().splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence:  # an unmarked block: skip it whole, markers shown in it included
            i = _closing(page, lines, i, fence.group(1)) + 1
            continue
        mark = MARK.match(line)
        if not mark:
            i += 1
            continue
        kind, arg = mark.groups()
        fence = FENCE.match(lines[i + 1]) if i + 1 < len(lines) else None
        if fence is None:
            raise SnippetError(f"{page}:{i + 1}: {line.strip()} must be on the line right before a ``` fence")
        if kind == "test" and arg not in KNOWN:
            raise SnippetError(f"{page}:{i + 1}: unknown environment {arg!r} (known: {', '.join(sorted(KNOWN))})")
        if kind == "test" and fence.group(2) not in SHELLS:
            raise SnippetError(f"{page}:{i + 1}: a tested block must be a bash block, not {fence.group(2)!r}")
        end = _closing(page, lines, i + 1, fence.group(1))
        blocks.append(Block(page, i + 1, kind, arg, fence.group(2), "\n".join(lines[i + 2:end]) + "\n"))
        i = end + 1
    return blocks


def _closing(page: Path, lines: list[str], start: int, fence: str) -> int:
    """The line index of the fence that closes the one opened at ``start``."""
    for j in range(start + 1, len(lines)):
        if lines[j].strip() == fence or (lines[j].startswith(fence) and not lines[j][len(fence):].strip()):
            return j
    raise SnippetError(f"{page}:{start + 1}: the fence is never closed")


def environments_of(blocks: list[Block]) -> set[str]:
    return {b.arg for b in blocks if b.kind == "test"}


def script(blocks: list[Block], environments: set[str]) -> str:
    """One bash script: each block in order (files written, tests of the given environments run), each
    announced with its page and line so a failure points at the block."""
    parts = ["exec 2>&1  # one stream, in order: a failure shows next to the block it came from\n"]
    for block in blocks:
        if block.kind == "file":
            target = shlex.quote(block.arg)
            delimiter = "MLTF_DOCS_SNIPPET_EOF"
            parts.append(f'mkdir -p "$(dirname {target})"\ncat > {target} <<\'{delimiter}\'\n{block.text}{delimiter}\n')
        elif block.arg in environments:
            parts.append(f"echo '>>> {block.where}'\n{block.text}")
        else:
            parts.append(f"echo '>>> {block.where}: skipped (needs -E {block.arg})'\n")
    return "\n".join(parts)
