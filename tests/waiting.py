"""One way for a test to wait for something another process does: poll until it holds, fail saying
what was awaited (and, when a process was given, why it ended first)."""

import subprocess
import time

WAIT = 30.0  # a generous upper bound; the waits normally end far sooner


def wait_for(predicate, *, what: str, timeout: float = WAIT, proc: subprocess.Popen | None = None,
             interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process exited ({proc.returncode}) before {what}: "
                                 f"{proc.communicate()[1][-2000:]}")
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")
