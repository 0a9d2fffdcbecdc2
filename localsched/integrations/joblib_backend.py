"""The ``"localsched"`` joblib backend: ``Parallel`` on the active client.

>>> import joblib  # doctest: +SKIP
>>> with joblib.parallel_config(backend="localsched"):  # doctest: +SKIP
...     joblib.Parallel()(joblib.delayed(pow)(i, 2) for i in range(10))

Registered lazily by :mod:`localsched.integrations.joblib_hook` (``import localsched``);
this module imports joblib. Calls run through the client's executor
(``client.get_executor``), in batches sized by joblib's own auto-batching
(about 0.2 s to 2 s of work per task), so short calls do not pay a task each.
The client is the one given as ``client=`` to ``parallel_config``, else the
client of an ``as_current`` block, else the default client.
"""

from __future__ import annotations

from typing import Any

from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase

__all__ = ["LocalschedBackend"]


class LocalschedBackend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's backend protocol over a localsched ``Client``.

    Parameters
    ----------
    client
        The client to run on (default: the current client).
    **submit_kwargs
        Passed to every ``submit``: ``workers``, ``resources``, ``retries``,
        ``priority``.
    """

    supports_retrieve_callback = True
    supports_timeout = True
    default_n_jobs = -1

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        client: Any = None,
        **submit_kwargs: Any,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads
        )
        self._client = client
        self._submit_kwargs = submit_kwargs
        self._executor: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            from localsched.client.dask_collections import current_client

            self._client = current_client()
        return self._client

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """The cluster's threads: the cluster, not ``n_jobs``, bounds parallelism
        (as joblib's dask backend)."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        return max(1, sum(self.client.nthreads().values()))

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        self.parallel = parallel
        self._executor = self.client.get_executor(**self._submit_kwargs)
        return self.effective_n_jobs(n_jobs)

    def submit(self, func: Any, callback: Any = None) -> Any:
        future = self._executor.submit(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Any) -> Any:
        return future.result()

    def retrieve_result(self, out: Any, timeout: float | None = None) -> Any:
        return out.result(timeout=timeout)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel what has not run (joblib will not read those results)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

    def terminate(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        self.reset_batch_stats()
