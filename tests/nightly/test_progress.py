import io

from core.nightly.progress import ProgressReporter
from core.nightly.summary import format_duration
from tests.fakes import FakeClock


def progress_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "fortuna.nightly" and "progress" in r.getMessage()]


def test_format_duration():
    assert format_duration(None) == "?"
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"


def test_non_tty_logs_a_line_every_interval_with_rate_eta_and_failures(batch_log):
    clock = FakeClock(1000.0)
    stream = io.StringIO()
    progress = ProgressReporter(total=1000, stream=stream, is_tty=False, interval=10.0, clock=clock)
    for second in range(1, 26):
        clock.now += 1
        progress.update(done=second * 10, failed=second // 10)
    lines = progress_lines(batch_log)
    # at t=10 s and t=20 s only, however often update() was called
    assert lines == [
        "fortune progress [fortunes]: 101/1000 (10.1%), 10.1/s, ETA 0:01:29, 1 failed",
        "fortune progress [fortunes]: 202/1000 (20.2%), 10.1/s, ETA 0:01:19, 2 failed",
    ]
    assert stream.getvalue() == ""  # nothing on the (non-terminal) stream: cron logs get log lines
    progress.close()
    assert progress_lines(batch_log)[-1] == (
        "fortune progress [fortunes] final: 252/1000 (25.2%), 10.1/s, ETA 0:01:14, 2 failed"
    )


def test_non_tty_close_always_logs_the_final_state_once(batch_log):
    clock = FakeClock(1000.0)
    progress = ProgressReporter(total=3, stream=io.StringIO(), is_tty=False, clock=clock, label="catch-up")
    clock.now += 2
    progress.update(done=3, failed=0)
    assert progress_lines(batch_log) == []  # before the first interval
    progress.close()
    progress.close()
    assert progress_lines(batch_log) == [
        "fortune progress [catch-up] final: 3/3 (100.0%), 1.5/s, ETA 0:00:00, 0 failed"
    ]


def test_tty_redraws_one_line_at_most_five_times_a_second(batch_log):
    clock = FakeClock(1000.0)
    stream = io.StringIO()
    progress = ProgressReporter(total=100, stream=stream, is_tty=True, clock=clock)
    for i in range(1, 101):
        clock.now += 0.01  # 100 updates over one second
        progress.update(done=i, failed=0)
    progress.close()
    out = stream.getvalue()
    draws = out.split("\r")[1:]
    assert 5 <= len(draws) <= 7  # ~5 a second plus the final one
    assert out.count("\n") == 1 and out.endswith("\n")  # a single line, ended once on close
    final = draws[-1].rstrip("\n")
    assert final.startswith("fortunes [" + "#" * 30 + "] 100/100 100.0%")
    assert "ETA 0:00:00" in final and "failed 0" in final
    assert progress_lines(batch_log) == []  # the bar replaces log lines on a terminal


def test_tty_pads_over_a_longer_previous_line():
    clock = FakeClock(1000.0)
    stream = io.StringIO()
    progress = ProgressReporter(total=10, stream=stream, is_tty=True, clock=clock)
    progress.update(done=0, failed=0)  # ETA unknown: "?"
    clock.now += 1
    progress.update(done=5, failed=0)
    first, second = stream.getvalue().split("\r")[1:]
    assert "ETA ?" in first
    assert len(second) >= len(first)


def test_failed_users_count_as_processed():
    clock = FakeClock(1000.0)
    stream = io.StringIO()
    progress = ProgressReporter(total=4, stream=stream, is_tty=True, clock=clock)
    clock.now += 1
    progress.close()
    progress.update(done=1, failed=3)  # after close: ignored
    assert "0/4" in stream.getvalue()

    stream = io.StringIO()
    progress = ProgressReporter(total=4, stream=stream, is_tty=True, clock=clock)
    clock.now += 1
    progress.update(done=1, failed=3)
    progress.close()
    assert "4/4 100.0%" in stream.getvalue() and "failed 3" in stream.getvalue()


def test_zero_total_does_not_divide_by_zero(batch_log):
    progress = ProgressReporter(total=0, stream=io.StringIO(), is_tty=False, clock=FakeClock(1000.0))
    progress.close()
    assert progress_lines(batch_log) == [
        "fortune progress [fortunes] final: 0/0 (100.0%), 0.0/s, ETA 0:00:00, 0 failed"
    ]
