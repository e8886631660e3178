"""Test doubles shared across modules."""


class FakeClock:
    """A monotonic clock under the test's control: read it (`clock()`), move it (`clock.now = …`),
    advance it on every read (`step`), or let the code under test sleep on it (`clock.sleep`)."""

    def __init__(self, now: float = 100.0, *, step: float = 0.0) -> None:
        self.now = now
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds
