"""The janitor sweeps again: a worker may write a segment after the first sweep."""

from __future__ import annotations

from localsched.transport.janitor import sweep_until_quiet


def test_segments_created_after_the_first_sweep_are_removed_too(tmp_path):
    prefix = "localsched-1-test-"
    early = tmp_path / f"{prefix}early"
    early.write_bytes(b"x")
    other = tmp_path / "someone-elses"
    other.write_bytes(b"x")
    late = tmp_path / f"{prefix}late"
    pauses = []

    def pause(delay: float) -> None:
        # A worker finishing a result as its parent dies, after the first sweep.
        assert not early.exists()
        pauses.append(delay)
        late.write_bytes(b"x")

    removed = sweep_until_quiet(prefix, str(tmp_path), (0.2, 1.0), pause)
    assert pauses == [0.2, 1.0]
    assert sorted(removed) == sorted([str(early), str(late), str(late)])
    assert not late.exists()
    assert other.exists()
