"""The janitor sweeps again: a worker may write a segment after the first sweep."""

from __future__ import annotations

import os

from localsched.transport.janitor import sweep_until_quiet
from localsched.transport.segment_files import (
    FALLBACK_LINK,
    claim_directory,
    make_private_directory,
    point_link,
    private_directory_name,
)


def test_segments_created_after_the_first_sweep_are_removed_too(tmp_path):
    directory = make_private_directory(str(tmp_path))
    fallback = str(tmp_path / private_directory_name())
    point_link(os.path.join(directory, FALLBACK_LINK), fallback)
    early = os.path.join(directory, "localsched-1-test-early")
    open(early, "wb").close()
    other = tmp_path / "someone-elses"
    other.write_bytes(b"x")
    late = os.path.join(fallback, "localsched-1-test-late")
    pauses = []

    def pause(delay: float) -> None:
        # A worker finishing a result as its parent dies, after the first sweep:
        # the cluster's directory is gone, so it can only be the disk fallback.
        assert not os.path.exists(directory)
        pauses.append(delay)
        claim_directory(fallback)
        open(late, "wb").close()

    removed = sweep_until_quiet(directory, (0.2, 1.0), pause)
    assert pauses == [0.2, 1.0]
    assert early in removed
    assert removed.count(late) == 2
    assert not os.path.exists(fallback)
    assert not os.path.exists(directory)
    assert other.exists()
