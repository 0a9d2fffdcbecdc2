"""One method, two faces: blocking, or a coroutine in the client's event loop.

dask's client decides per call (``SyncMethodMixin.sync``): in the event loop of
an asynchronous client (or with ``asynchronous=True``) a method returns an
awaitable, elsewhere it blocks and returns the value. ``@dual`` gives a
blocking method that behaviour: the coroutine is its *twin*, registered by
qualified name in :mod:`localsched.client.asynchronous` (imported with the
first asynchronous call). A method without a twin runs inline in a coroutine:
only methods that the scheduler thread answers at once are left so.

A synchronous client without an event loop pays nothing: ``@dual`` only
marks a ``Client`` method, and a client that gets an event loop becomes an
instance of a subclass whose methods decide per call (``with_loop``).
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = ["TWINS", "dual", "dual_of_client", "is_async_call", "with_loop"]

F = TypeVar("F", bound=Callable[..., Any])

#: ``"Class.method"`` -> its coroutine twin, called with the same arguments.
TWINS: dict[str, Callable[..., Awaitable[Any]]] = {}

_TWIN_MODULE = "localsched.client.async_methods"

#: Set while a method without a twin runs inline in the loop: the methods it
#: calls block too (they are part of its blocking body).
_inline: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "localsched_inline", default=False
)


def is_async_call(client: Any, flag: bool | None) -> bool:
    """dask's ``client.asynchronous`` for this call, ``flag`` (the method's
    ``asynchronous=`` argument) first."""
    if flag is not None:
        return bool(flag)
    binding = getattr(client, "_aio", None)
    return binding is not None and binding.in_loop() and not _inline.get()


def twin_call(name: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """The coroutine for ``method(*args, **kwargs)``: its twin's, or inline."""
    if _TWIN_MODULE not in sys.modules:  # the twins register as it loads
        importlib.import_module(_TWIN_MODULE)
    twin = TWINS.get(name)
    if twin is not None:
        return twin(*args, **kwargs)

    async def inline() -> Any:
        token = _inline.set(True)
        try:
            return method(*args, **kwargs)
        finally:
            _inline.reset(token)

    return inline()


def _dual(method: F, client_of: Callable[[Any], Any]) -> F:
    name = method.__qualname__

    @functools.wraps(method)
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        flag = kwargs.pop("asynchronous", None) if kwargs else None
        if flag is None:
            binding = getattr(client_of(self), "_aio", None)
            flag = binding is not None and binding.in_loop() and not _inline.get()
        if flag:
            return twin_call(name, method, self, *args, **kwargs)
        try:
            return method(self, *args, **kwargs)
        except BaseException as error:
            # Out of the caller's traceback (dask's short tracebacks): a bare
            # raise adds no entry for this frame.
            traceback = error.__traceback__
            if traceback is not None and traceback.tb_frame.f_code is code:
                error.__traceback__ = traceback.tb_next
            raise

    code = call.__code__  # type: ignore[attr-defined]  # (wraps hides it)

    return call  # type: ignore[return-value]


def dual(method: F) -> F:
    """Mark a ``Client`` method as ``@dual`` (see above). The method itself is
    left as it is: a client with an event loop becomes an instance of
    :func:`with_loop`'s subclass, whose methods decide, so a synchronous
    client pays nothing."""
    method.__dual__ = True  # type: ignore[attr-defined]
    return method


_with_loop: dict[type, type] = {}


def with_loop(cls: type) -> type:
    """``cls`` with its ``@dual`` methods deciding per call (same name, so
    ``repr`` and dask's checks of the type name see ``Client``)."""
    subclass = _with_loop.get(cls)
    if subclass is None:
        methods = {
            name: _dual(function, _self)
            for name in dir(cls)
            if getattr(function := getattr(cls, name), "__dual__", False)
        }
        methods["__module__"] = cls.__module__
        methods["__qualname__"] = cls.__qualname__
        methods["__doc__"] = cls.__doc__
        subclass = _with_loop[cls] = type(cls.__name__, (cls,), methods)
    return subclass


def dual_of_client(method: F) -> F:
    """``@dual`` for methods of objects with a ``client`` (locks, queues...)."""
    return _dual(method, _client_attribute)


def _self(obj: Any) -> Any:
    return obj


def _client_attribute(obj: Any) -> Any:
    return obj.client  # None for an unbound primitive: it has no _aio
