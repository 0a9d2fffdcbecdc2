"""Published datasets: ``Client.publish_dataset``, ``get_dataset``,
``list_datasets``, ``unpublish_dataset`` and the ``Client.datasets`` mapping.

A dataset is any picklable object, futures inside it included; it lives on the
scheduler thread (``localsched.runtime.coordination_state``) and its futures' keys
stay in memory (pseudo-client ``published-<name>``) until it is unpublished.
Every client of the cluster, tasks' clients included, sees the same datasets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable, Iterator, Mapping, MutableMapping
from typing import Any

from localsched.client.control import no_default
from localsched.client.coordination import call, dumps, load_many
from localsched.client.dual import dual

Key = Hashable

__all__ = ["Datasets", "DatasetsMixin"]


class Datasets(MutableMapping):
    """A dict-like view of the published datasets of a client's cluster."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getitem__(self, key: Key) -> Any:
        return self._client.get_dataset(key)

    def __setitem__(self, key: Key, value: Any) -> None:
        self._client.publish_dataset(value, name=key)

    def __delitem__(self, key: Key) -> None:
        if key not in self._client.list_datasets():
            raise KeyError(key)
        self._client.unpublish_dataset(key)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._client.list_datasets())

    def __aiter__(self) -> AsyncIterator[Key]:
        """``async for name in client.datasets`` (an asynchronous client's loop).

        Raises
        ------
        TypeError
            The client is synchronous here (dask's message).
        """
        if not self._client.asynchronous:
            raise TypeError(
                "Can't invoke 'async for' on client.datasets when client is "
                "synchronous; use iter() or 'for' instead"
            )

        async def names() -> AsyncIterator[Key]:
            for name in await self._client.list_datasets():
                yield name

        return names()

    def __len__(self) -> int:
        return len(self._client.list_datasets())

    def __contains__(self, key: object) -> bool:
        return key in self._client.list_datasets()


def published(
    args: tuple[Any, ...], name: Key | None, kwargs: dict[str, Any]
) -> tuple[list[Key], list[Any]]:
    """``publish_dataset``'s names and pickled records."""
    names: list[Key] = list(kwargs)
    data: list[Any] = list(kwargs.values())
    if name:
        if not args:
            raise ValueError(
                "If name is provided, expecting call signature like"
                " publish_dataset(df, name='ds')"
            )
        names.append(name)
        data.append(args[0] if len(args) == 1 else args)
    elif args:
        if len(args) != 1 or not isinstance(args[0], Mapping):
            raise ValueError(
                "If name is omitted, positional argument must be a {name: value} dict"
            )
        names.extend(args[0])
        data.extend(args[0].values())
    records = [dumps(value) for value in data]
    return names, records


class DatasetsMixin:
    """The datasets methods of :class:`~localsched.client.client.Client`."""

    @dual
    def publish_dataset(
        self, *args: Any, name: Key | None = None, override: bool = False, **kwargs: Any
    ) -> None:
        """Publish named datasets (objects holding futures, usually) to the
        scheduler, for every client of the cluster (``get_dataset``).

        Parameters
        ----------
        args
            One or more objects to publish as ``name`` (several: a tuple), or,
            without ``name``, a single ``{name: object}`` dict.
        name : str, int, float or tuple thereof
            Name to publish ``args`` under.
        override : bool
            False (default) to raise ``KeyError`` if a dataset of that name
            exists already; True to overwrite it.
        kwargs
            Named objects to publish.

        Examples
        --------
        >>> client.publish_dataset(x=future)  # doctest: +SKIP
        >>> client.publish_dataset(future, name="x")  # doctest: +SKIP
        >>> client.publish_dataset({"x": future})  # doctest: +SKIP
        """
        names, records = published(args, name, kwargs)
        call(self, "publish_put", names, records, override)

    @dual
    def unpublish_dataset(self, name: Key | list[Key], **kwargs: Any) -> None:
        """Remove named datasets (a name or a list of names) from the scheduler;
        their futures' keys are released."""
        names = name if isinstance(name, list) else [name]
        call(self, "publish_delete", names)

    @dual
    def list_datasets(self, **kwargs: Any) -> list[Key]:
        """The names of the published datasets (sorted)."""
        return list(call(self, "publish_list"))

    @dual
    def get_dataset(
        self, name: Key | list[Key], default: Any = no_default, **kwargs: Any
    ) -> Any:
        """A published dataset (a list of them for a list of names); its
        futures belong to this client.

        Raises
        ------
        KeyError
            No dataset of that name, and no ``default``.
        """
        names = name if isinstance(name, list) else [name]
        out = []
        for entry in call(self, "publish_get", names):
            if entry is None:
                if default is no_default:
                    raise KeyError(f"Dataset '{name}' not found")
                out.append(default)
            else:
                out.append(load_many(self, [entry[0]], entry[1], entry[2])[0])
        return out if isinstance(name, list) else out[0]

    @property
    def datasets(self) -> Datasets:
        """The published datasets, as a mutable mapping."""
        return Datasets(self)
