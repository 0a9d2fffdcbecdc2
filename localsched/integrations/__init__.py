"""Bridges to other libraries: joblib's ``"localsched"``/``"dask"`` backends and
the hand-over to ``distributed.Client`` for a scheduler address."""
