"""The night as a real process against a PostgreSQL cluster of the test's own (tests/faults/servers.py).

`Night.create(server, stub, receiver, users=N)` makes a Fortuna database in `server` with N demo users (migrated
and seeded once per session, then restored from that database's dump: far quicker than a migrate and
a seed process per cluster), and `start()` runs `manage.py generate_daily_fortunes` against it with
the stub as its model and `receiver` (the `webhook_receiver` fixture) as its Slack webhook.
`Night.sql()` reads the database from the test (psycopg2, a short connection each time, so a server
restart never leaves the test holding a broken one). `Night.check()` makes the assertions every fault
test makes: every eligible user stored, no duplicate, no run left `running`, LLM requests bounded by
the distinct inputs plus what was in flight, and every run's report sent.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import psycopg2

from tests.faults.reports import assert_reported, slack_env
from tests.faults.servers import PostgresServer
from tests.nightly.helpers import BASE, TARGET
from tests.waiting import wait_for
from tests.webhook_receiver import WebhookReceiver

ROOT = Path(__file__).resolve().parents[2]
DBNAME = "fortuna"
USERS = 60  # demo users of every fault night (one dump serves them all); about 50 are eligible
WAIT = 60.0  # upper bound of the polling loops; they normally finish far sooner
MANAGE_TIMEOUT = 120.0

_dumps: dict[tuple[str, int, int], Path] = {}  # (PostgreSQL bin dir, users, seed) -> pg_dump of that database


def _manage(*args: str, env: dict[str, str], timeout: float = MANAGE_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@dataclass
class Night:
    server: PostgresServer
    stub: object  # tests.stub_openai.server.StubClient
    receiver: WebhookReceiver  # the night's Slack webhook; the test's fixture stops it
    dbname: str = DBNAME

    @classmethod
    def create(cls, server: PostgresServer, stub, receiver: WebhookReceiver, *, users: int = USERS,
               seed: int = 7) -> Night:
        night = cls(server=server, stub=stub, receiver=receiver)
        server.psql(f"CREATE DATABASE {night.dbname}")
        night._load(users=users, seed=seed)
        return night

    def _load(self, *, users: int, seed: int) -> None:
        key = (str(self.server.bin_dir), users, seed)
        dump = _dumps.get(key)
        if dump is None:
            for args in (("migrate", "--noinput"), ("seed_demo_users", "--count", str(users), "--seed", str(seed))):
                done = _manage(*args, env=self.env())
                assert done.returncode == 0, done.stderr
            folder = tempfile.mkdtemp(prefix="fortuna-dump-")
            atexit.register(shutil.rmtree, folder, ignore_errors=True)
            dump = Path(folder) / "fortuna.sql"
            subprocess.run([str(self.server.bin_dir / "pg_dump"), "--no-owner", "-h", "127.0.0.1", "-p",
                            str(self.server.port), "-U", self.server.user, "-f", str(dump), self.dbname],
                           check=True, capture_output=True)
            _dumps[key] = dump
            return
        subprocess.run([str(self.server.bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                        "-p", str(self.server.port), "-U", self.server.user, "-d", self.dbname, "-f", str(dump)],
                       check=True, capture_output=True)

    @property
    def url(self) -> str:
        return self.server.url(self.dbname)

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.stub.env(), "DATABASE_URL": self.url, "DJANGO_SETTINGS_MODULE": "tests.settings",
                "PYTHONUNBUFFERED": "1", "REDIS_URL": "", **slack_env(self.receiver), **extra}

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """generate_daily_fortunes for BASE (fortunes for TARGET) with args, as its own process."""
        argv = [sys.executable, "manage.py", "generate_daily_fortunes", "--date", BASE.isoformat(), *args]
        return subprocess.Popen(argv, cwd=ROOT, env=self.env(**(env or {})), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    def finish(self, proc: subprocess.Popen, *, timeout: float = WAIT) -> tuple[int, str, str]:
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    # --- reading the database from the test ------------------------------------------------------
    def sql(self, query: str, params: tuple = ()) -> list[tuple]:
        conn = psycopg2.connect(self.url, connect_timeout=5)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(query, params)
                return cursor.fetchall() if cursor.description else []
        finally:
            conn.close()

    def value(self, query: str, params: tuple = ()):
        return self.sql(query, params)[0][0]

    def stored(self) -> int:
        """Result rows for TARGET, or -1 while the server does not answer (a restart)."""
        try:
            return self.value("SELECT count(*) FROM core_fortuneresult WHERE for_date = %s", (TARGET,))
        except psycopg2.Error:
            return -1

    def eligible(self) -> int:
        return self.value("SELECT count(*) FROM core_user WHERE is_active AND birth_date_solar IS NOT NULL")

    def missing(self) -> list[int]:
        return [row[0] for row in self.sql(
            "SELECT u.id FROM core_user u WHERE u.is_active AND u.birth_date_solar IS NOT NULL AND NOT EXISTS "
            "(SELECT 1 FROM core_fortuneresult r WHERE r.user_id = u.id AND r.for_date = %s) ORDER BY u.id",
            (TARGET,))]

    def runs(self) -> list[tuple]:
        """(status, stop_reason, generated, failure_sample) of every NightlyRun, oldest first."""
        return self.sql("SELECT status, stop_reason, generated, failure_sample FROM core_nightlyrun ORDER BY id")

    def reported_runs(self) -> list[SimpleNamespace]:
        """Every NightlyRun, oldest first, with what its report must carry (tests/faults/reports.py)."""
        columns = ("status", "stop_reason", "base_date", "target_date", "catch_up", "eligible", "generated", "failed",
                   "failure_sample")
        rows = self.sql(f"SELECT {', '.join(columns)} FROM core_nightlyrun ORDER BY id")
        return [SimpleNamespace(**dict(zip(columns, row, strict=True))) for row in rows]

    def requested_not_stored(self) -> int:
        """After a run that stopped: the LLM requests it made whose generation it never stored (in
        flight, or generated but not yet flushed). A rerun may ask for those again, and only those."""
        return self.stub.counters()["requests"] - self.value("SELECT count(*) FROM core_fortunegeneration")

    def wait_for(self, predicate, *, what: str, timeout: float = WAIT) -> None:
        wait_for(predicate, what=what, timeout=timeout)

    def check(self, *, in_flight: int) -> None:
        """What every fault test asserts once its night (and any rerun) is over."""
        assert self.missing() == []
        total, distinct_users = self.sql(
            "SELECT count(*), count(DISTINCT user_id) FROM core_fortuneresult WHERE for_date = %s", (TARGET,))[0]
        assert total == distinct_users == self.eligible()
        assert self.value("SELECT count(*) - count(DISTINCT input_hash) FROM core_fortunegeneration") == 0
        assert [run for run in self.runs() if run[0] == "running"] == []
        counters = self.stub.counters()
        assert counters["requests"] <= counters["distinct_inputs"] + in_flight, counters
        assert_reported(self.receiver, self.reported_runs())
