"""The executing page: what a dead worker was running, readable by the scheduler."""

from __future__ import annotations

import os

from localsched.transport.executing import SLOTS, ExecutingPage


def test_started_tasks_are_visible_through_another_mapping_until_they_end():
    scheduler_side = ExecutingPage()
    worker_side = ExecutingPage(os.dup(scheduler_side.fileno()))  # as a child
    try:
        first = worker_side.start(11)
        second = worker_side.start(12)
        assert scheduler_side.executing() == {11, 12}
        worker_side.end(first)
        assert scheduler_side.executing() == {12}
        third = worker_side.start(13)  # reuses the freed slot
        assert third == first
        worker_side.end(second)
        worker_side.end(third)
        assert scheduler_side.executing() == set()
    finally:
        worker_side.close()
        scheduler_side.close()


def test_more_tasks_than_slots_make_the_answer_unknown_until_they_end():
    page = ExecutingPage()
    try:
        slots = [page.start(run_id) for run_id in range(1, SLOTS + 1)]
        assert page.executing() == set(range(1, SLOTS + 1))
        overflow = page.start(SLOTS + 1)
        assert page.executing() is None  # the scheduler then blames them all
        page.end(overflow)
        assert page.executing() == set(range(1, SLOTS + 1))
        for slot in slots:
            page.end(slot)
        assert page.executing() == set()
    finally:
        page.close()
    page.close()  # idempotent
