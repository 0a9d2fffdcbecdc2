"""Every Python snippet in README.md and docs/*.md runs as written.

Each ```python block is saved as a script in a temporary directory and run in a
fresh interpreter (so its ``if __name__ == "__main__":`` part runs too), with
this checkout's localsched first on the path. It must exit 0 and write nothing
to stderr (no traceback, warning or error logged), and a ``print`` whose line
ends in a comment holding a Python literal (``print(total.result())  # 500500``)
must have printed that value. The snippet's worker processes and shared-memory
segments must be gone after it. One script per block, about 25 s in all.

A block that cannot run as written says so in an HTML comment on the line just
above its fence, which a reader of the page sees in the source:

- ``<!-- snippet: excerpt examples/NAME.py -->``: the block shows part of an
  example script that the tests run (``tests/runtime/test_examples.py``,
  ``test_plugins.py``). Its code lines (comments and indentation aside) must
  appear in that order in the script; ``...`` stands for lines left out.
- ``<!-- snippet: skip REASON -->``: the block is compiled, not run. REASON,
  required, says why it cannot run here (for example, it connects to a dask
  scheduler on another machine).
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import re
import subprocess
import sys
import tokenize
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.runtime.helpers import DEADLINE, SHM_DIR, poll

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(\s*)```\s*(\S*)")
_DIRECTIVE = re.compile(r"^<!--\s*snippet:\s*(\S+)\s*(.*?)\s*-->$")
_KINDS = ("excerpt", "skip")
#: Marks the processes a snippet started, to find any it left running.
_MARKER = "LOCALSCHED_DOCS_SNIPPET"


@dataclass(frozen=True)
class Snippet:
    page: Path
    line: int  # of the opening fence, 1-based
    source: str
    kind: str | None = None  # a directive from _KINDS, or None: run it
    argument: str = ""

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def extract(page: Path) -> list[Snippet]:
    """The page's ```python blocks, with the directive above each, if any.

    A directive not followed by a ```python fence is an error: it would
    silently stop applying to the block it was written for.
    """
    lines = page.read_text().splitlines()
    snippets: list[Snippet] = []
    directive: tuple[str, str, int] | None = None
    i = 0
    while i < len(lines):
        text = lines[i].strip()
        fence = _FENCE.match(lines[i])
        if match := _DIRECTIVE.match(text):
            kind, argument = match.groups()
            if kind not in _KINDS or not argument:
                raise ValueError(f"{page.name}:{i + 1}: {kind!r} needs one of {_KINDS}")
            directive = (kind, argument, i + 1)
        elif fence:
            indent, language = fence.groups()
            end = i + 1
            while not lines[end].strip().startswith("```"):
                end += 1
            if language in ("python", "py"):
                body = [line.removeprefix(indent) for line in lines[i + 1 : end]]
                kind, argument = (directive or (None, "", 0))[:2]
                snippets.append(
                    Snippet(page, i + 1, "\n".join(body) + "\n", kind, argument)
                )
                directive = None
            i = end
        elif text and directive is not None:
            raise ValueError(
                f"{page.name}:{directive[2]}: snippet directive not above a "
                "```python block"
            )
        i += 1
    if directive is not None:
        raise ValueError(f"{page.name}:{directive[2]}: snippet directive at the end")
    return snippets


SNIPPETS = [snippet for page in PAGES for snippet in extract(page)]


def _comments(source: str) -> dict[int, tuple[int, str]]:
    """Line number -> column and text of the comment ending that line."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {
        t.start[0]: (t.start[1], t.string[1:].strip())
        for t in tokens
        if t.type == tokenize.COMMENT
    }


def promised_output(source: str) -> list[str]:
    """What the snippet's ``print(...)  # <literal>`` lines say they print."""
    comments = _comments(source)
    promised = []
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "print"
        ):
            continue
        _, comment = comments.get(node.end_lineno or node.lineno, (0, ""))
        if not comment:
            continue
        try:
            promised.append(str(ast.literal_eval(comment)))
        except (ValueError, SyntaxError):
            continue  # a comment in words, not a value
    return promised


def _code_lines(source: str) -> list[str]:
    """The lines of ``source`` without comments, indentation or blank lines."""
    comments = _comments(source)
    out = []
    for number, line in enumerate(source.splitlines(), start=1):
        if number in comments:
            line = line[: comments[number][0]]
        if line.strip():
            out.append(line.strip())
    return out


def _marked(marker: str) -> list[psutil.Process]:
    """The running processes that the snippet given ``marker`` started."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get(_MARKER) == marker:
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # gone, a zombie, or another user's
    return found


def _leftovers(marker: str, pid: int) -> list[str]:
    """What the snippet started and left behind: processes, shm segments."""
    found = [f"process {p.pid}: {p.cmdline()}" for p in _marked(marker)]
    prefix = f"localsched-{pid}-"
    found += [f"/dev/shm/{n}" for n in os.listdir(SHM_DIR) if n.startswith(prefix)]
    return found


def run(snippet: Snippet, directory: Path) -> subprocess.CompletedProcess[str]:
    script = directory / "snippet.py"
    script.write_text(snippet.source)
    marker = uuid.uuid4().hex
    path = os.environ.get("PYTHONPATH")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), path])),
        _MARKER: marker,
    }
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=directory,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            # Also waits for any process the snippet left holding its stdout.
            stdout, stderr = process.communicate(timeout=50)
        except subprocess.TimeoutExpired:
            _kill([process, *_marked(marker)])
            stdout, stderr = process.communicate(timeout=10)
            pytest.fail(f"{snippet.name} did not finish in 50 s:\n{stdout}\n{stderr}")
        assert process.returncode == 0, (
            f"{snippet.name} failed (exit {process.returncode}):\n{stdout}\n{stderr}"
        )
        assert not stderr, f"{snippet.name} wrote to stderr:\n{stderr}"
        assert poll(lambda: not _leftovers(marker, process.pid), DEADLINE), (
            f"{snippet.name} left behind: {_leftovers(marker, process.pid)}"
        )
    finally:
        _kill(_marked(marker))  # a failed test leaves nothing running
    return subprocess.CompletedProcess(process.args, 0, stdout, stderr)


def _kill(processes: list[psutil.Process] | list[subprocess.Popen[str]]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
            process.kill()


def test_the_docs_have_snippets_and_few_opt_outs() -> None:
    # The extraction found the blocks (a changed fence syntax would find none).
    assert len(SNIPPETS) >= 12
    opted_out = [s for s in SNIPPETS if s.kind is not None]
    assert len(opted_out) <= len(SNIPPETS) // 4, [s.name for s in opted_out]


@pytest.mark.parametrize(
    "snippet", [s for s in SNIPPETS if s.kind is None], ids=lambda s: s.name
)
def test_snippet_runs_as_written(snippet: Snippet, tmp_path: Path) -> None:
    done = run(snippet, tmp_path)
    printed = done.stdout.splitlines()
    for value in promised_output(snippet.source):
        assert value in printed, f"{snippet.name} promises {value!r}:\n{done.stdout}"


@pytest.mark.parametrize(
    "snippet", [s for s in SNIPPETS if s.kind == "excerpt"], ids=lambda s: s.name
)
def test_excerpt_matches_its_example_script(snippet: Snippet) -> None:
    script = ROOT / snippet.argument
    assert script.is_file(), f"{snippet.name}: no {snippet.argument}"
    remaining = iter(_code_lines(script.read_text()))
    for line in _code_lines(snippet.source):
        if line == "...":
            continue
        # Consumes the script's lines up to the match: the order must agree.
        assert line in remaining, f"{snippet.name}: not in {snippet.argument}: {line}"


@pytest.mark.parametrize(
    "snippet", [s for s in SNIPPETS if s.kind == "skip"], ids=lambda s: s.name
)
def test_skipped_snippet_still_compiles(snippet: Snippet) -> None:
    compile(snippet.source, snippet.name, "exec")
