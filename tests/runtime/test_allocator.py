"""``AllocatorTrim``: after a large release the runtime clears its empty
per-task tables and trims the heap, once per release."""

from __future__ import annotations

import sys

from localsched.runtime.allocator import AllocatorTrim


def test_trims_once_when_tasks_fall_to_a_quarter_of_a_large_peak():
    trim = AllocatorTrim(threshold=200)
    table = {i: i for i in range(10_000)}
    for i in range(10_000):
        del table[i]
    big = sys.getsizeof(table)
    assert not trim.after_tick(400, (table,))
    assert not trim.after_tick(101, (table,))  # above a quarter of the peak
    assert sys.getsizeof(table) == big
    assert trim.after_tick(100, (table,))
    assert sys.getsizeof(table) < big
    assert trim.trims == 1
    assert not trim.after_tick(0, (table,))  # the peak restarted from 100, below 200
    assert trim.trims == 1


def test_small_peaks_and_full_tables_are_left_alone():
    trim = AllocatorTrim(threshold=1_000)
    assert not trim.after_tick(999, ())
    assert not trim.after_tick(0, ())
    full = {"kept": 1}
    trim = AllocatorTrim(threshold=10)
    trim.after_tick(100, (full,))
    assert trim.after_tick(1, (full,))
    assert full == {"kept": 1}
