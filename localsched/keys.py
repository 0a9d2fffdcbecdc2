"""Key prefixes, as dask names them (``key_split``).

Pure and dependency-free: the scheduler core names its task prefixes with it,
and a worker's profiler (``localsched.worker.diagnostics``) names the prefix of
the tasks it samples with it, without loading the core.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = ["key_split"]

Key = Hashable


def key_split(key: Key) -> str:
    """The prefix of a key, as dask computes it.

    >>> key_split("inc-ab12cd34ef56ab12cd34ef56ab12cd34")
    'inc'
    >>> key_split(("x-123", 0))
    'x'
    >>> key_split("hello-world-1")
    'hello-world'
    """
    if type(key) is not str:
        if isinstance(key, tuple):
            key = key[0] if key else ""
        if isinstance(key, bytes):
            key = key.decode(errors="replace")
        if not isinstance(key, str):
            return str(key)
    # Runs for every new task: the usual key keeps only its first word, which
    # partition finds without splitting the whole key.
    head, dash, rest = key.partition("-")
    if dash:
        word = rest.partition("-")[0]
        if word.isalpha() and not (len(word) == 8 and _is_hex(word)):
            kept = [head]
            for word in rest.split("-"):
                if word.isalpha() and not (len(word) == 8 and _is_hex(word)):
                    kept.append(word)
                else:
                    break
            return "-".join(kept)
    if len(head) == 32 and _is_hex(head):
        return "data"
    return head


_HEX_DIGITS = frozenset("0123456789abcdef")


def _is_hex(word: str) -> bool:
    return _HEX_DIGITS.issuperset(word)
