"""Crash injection at the Batch API's step boundaries, for tests only.

A process dies between two steps of core/nightly/executors/openai_batch; the steps are told apart at its two
boundaries: the SDK client (the real one, its HTTP call made through the stub server, then the
crash before the answer reaches the service) and the ResultWriter (the crash after a flush is
written, or before the writer exists).

    uploaded     files.create answered; the row is still "planned"
    created      batches.create answered; the row is still "uploaded"
    downloaded   a collect pass has every file downloaded; nothing is stored yet
    stored_page  a collect pass has written one page of fortunes

crash_patches() returns (target, attribute, value) triples: apply them with pytest's monkeypatch in
process, or with setattr in a child process that is about to be killed.
"""

from collections.abc import Callable

from core.nightly.executors.openai_batch import cancel, client, collect, resume, submit

POINTS = ("uploaded", "created", "downloaded", "stored_page")
_CLIENT_CALLS = {"uploaded": ("files", "create"), "created": ("batches", "create")}


class _Once:
    def __init__(self, crash: Callable[[], None], times: int) -> None:
        self.crash, self.left = crash, times

    def __call__(self) -> None:
        if self.left > 0:
            self.left -= 1
            self.crash()


class _Resource:
    """An SDK resource whose one method crashes after its real call answered."""

    def __init__(self, resource, method: str, after: _Once) -> None:
        self._resource, self._method, self._after = resource, method, after

    def __getattr__(self, name: str):
        attr = getattr(self._resource, name)
        if name != self._method:
            return attr

        def call(*args, **kwargs):
            answer = attr(*args, **kwargs)
            self._after()
            return answer
        return call


class _Client:
    def __init__(self, client, resource: str, method: str, after: _Once) -> None:
        self._client, self._resource, self._wrapped = client, resource, _Resource(getattr(client, resource), method,
                                                                                   after)

    def __getattr__(self, name: str):
        return self._wrapped if name == self._resource else getattr(self._client, name)


def crash_patches(point: str, crash: Callable[[], None], *, times: int = 1) -> list[tuple[object, str, object]]:
    """The patches that call crash() at point (the first `times` times it is reached)."""
    if point not in POINTS:
        raise ValueError(f"unknown crash point {point!r}; one of {POINTS}")
    once = _Once(crash, times)
    if point in _CLIENT_CALLS:
        real_client = client.openai_batch_client
        resource, method = _CLIENT_CALLS[point]
        # Every module of the package that makes a client, so the step crashes whichever makes the call.
        return [(module, "openai_batch_client", lambda: _Client(real_client(), resource, method, once))
                for module in (submit, resume, collect, cancel)]

    class CrashingWriter(collect.ResultWriter):
        def __init__(self, **kwargs) -> None:
            if point == "downloaded":
                once()
            super().__init__(**kwargs)

        def done(self, *, wait: bool = False):
            flushes = super().done(wait=wait)
            if flushes and point == "stored_page":
                once()
            return flushes

    return [(collect, "ResultWriter", CrashingWriter)]
