"""``progress`` outside a terminal writes what dask's ``TextProgressBar`` writes.

dask's own tests (``distributed/diagnostics/tests/test_progressbar.py``) read
the bar from pytest's ``capsys``: the segment before the last ``\\r`` must be
``[####...] | 100% Completed | <time>``. These tests hold localsched to the same
bytes, on standard output as it is when ``progress`` runs.
"""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from localsched import progress
from localsched.diagnostics.progress_tracker import PrefixProgress, ProgressSnapshot
from localsched.diagnostics.progressbar import ProgressBar, format_time, text_line
from tests.runtime.helpers import DEADLINE

pytestmark = pytest.mark.timeout(60)


def inc(x: int) -> int:
    return x + 1


def fail_on_two(x: int) -> int:
    if x == 2:
        raise ValueError("two is not allowed")
    return x


def final_bar(out: str) -> tuple[str, str, str]:
    """dask's ``check_bar_completed``: the final bar's three fields."""
    bar, percent, elapsed = (part.strip() for part in out.split("\r")[-2].split("|"))
    return bar, percent, elapsed


def snapshot(total: int, done: int, erred: int = 0) -> ProgressSnapshot:
    return ProgressSnapshot(
        prefixes=(PrefixProgress("inc", total, done, erred, 0),),
        elapsed=1.25,
        complete=True,
        first_error=None,
    )


def test_format_time_is_dasks():
    # The examples of distributed.diagnostics.progress.format_time.
    assert format_time(10.4) == "10.4s"
    assert format_time(1000.4) == "16min 40.4s"
    assert format_time(100000.4) == "27hr 46min 40.4s"
    assert format_time(0.04) == " 0.0s"  # padded as dask's "{:4.1f}s"


def test_text_line_rounds_down_as_dask():
    # 999 of 1000 is not "100%": dask's bar shows 100% only when all finished.
    assert text_line(snapshot(1000, 999)) == (f"[{'#' * 39} ] | 99% Completed |  1.2s")
    assert text_line(snapshot(4, 4)) == f"[{'#' * 40}] | 100% Completed |  1.2s"
    assert text_line(snapshot(0, 0)).startswith(f"[{'#' * 40}] | 100% Completed")
    assert text_line(snapshot(4, 3, erred=1)).endswith(" | 1 erred")


def test_progress_writes_dasks_bar_to_standard_output(client, capsys):
    f = client.submit(inc, 1)
    g = client.submit(inc, 2)
    # Nested containers and dask's loop= are accepted, as in dask's test.
    assert progress([[f], [[g]]], notebook=False, loop=None) is None
    out, err = capsys.readouterr()
    assert final_bar(out)[:2] == ("[" + "#" * 40 + "]", "100% Completed")
    assert re.fullmatch(r"\d+\.\ds", final_bar(out)[2])
    assert out.startswith("\r[")
    assert out.endswith("\r\n")
    assert "\x1b[" not in out  # no escape codes in a log
    assert err == ""
    # Again on finished futures, with dask's duration string for interval.
    progress(f, interval="20ms")
    out, _ = capsys.readouterr()
    assert final_bar(out)[:2] == ("[" + "#" * 40 + "]", "100% Completed")
    assert f.result(timeout=DEADLINE) == 2


def test_progress_keeps_its_final_bar_and_ends_the_line(client, capsys):
    futures = client.map(inc, range(5))
    progress(futures, notebook=False)
    print("next output")
    out, _ = capsys.readouterr()
    # What a reader of the log sees: the last draw of the bar (a \r only moves
    # the cursor back), then the next print on a line of its own.
    shown = [
        ([""] + [s for s in line.split("\r") if s])[-1] for line in out.split("\n")
    ]
    assert re.fullmatch(r"\[#{40}\] \| 100% Completed \| +\d+\.\ds", shown[0])
    assert shown[1:] == ["next output", ""]


def test_progress_with_errors_ends_with_the_first_error(client, capsys):
    futures = client.map(fail_on_two, range(4))
    progress(futures, notebook=False)
    out, _ = capsys.readouterr()
    bar_line, error_line, rest = out.split("\n")
    assert bar_line.rsplit("\r", 2)[-2].endswith(" | 1 erred")
    assert error_line.startswith("first error: ")
    assert "two is not allowed" in error_line
    assert rest == ""


def test_progress_on_a_closed_stream_does_not_fail(client):
    futures = client.map(inc, range(3))
    stream = io.StringIO()
    stream.close()  # e.g. stdout closed at interpreter shutdown
    console = Console(file=stream, force_terminal=False)
    ProgressBar(futures, console=console).run()  # draws nothing, raises nothing
    assert client.gather(futures) == [1, 2, 3]
