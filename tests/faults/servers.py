"""Servers a fault test owns: its own PostgreSQL cluster, its own redis-server, its own RabbitMQ vhost.

A fault test restarts, pauses or kills the server it talks to. It must never do that to the machine's
shared instances (CI and every other test use them), so each fault starts its own on a free port in a
temp dir and stops it by pid. PostgreSQL refuses to run as root: as root the cluster runs as the
``postgres`` system user (``runuser``), in a temp dir that user owns.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PG_BIN_MISSING = (
    "PostgreSQL's server binaries (initdb, pg_ctl) were not found under /usr/lib/postgresql/*/bin or on PATH."
)
REDIS_MISSING = "redis-server is not on PATH."
SERVER_NOT_READY = "{what} did not accept connections on port {port} within {seconds} s. Its log:\n{log}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int, *, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _wait_port(port: int, *, what: str, log: Path, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if port_open(port):
            return
        time.sleep(0.05)
    text = log.read_text(errors="replace") if log.exists() else ""
    raise RuntimeError(SERVER_NOT_READY.format(what=what, port=port, seconds=seconds, log=text[-4000:]))


def pg_bin_dir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _as_cluster_owner() -> list[str]:
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _owned_temp_dir(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    return root


_templates: dict[tuple[Path, str], Path] = {}


def _template_cluster(bin_dir: Path, user: str) -> Path:
    """A fresh, never started cluster made by initdb once per session, for each test to copy."""
    key = (bin_dir, user)
    if key not in _templates:
        root = _owned_temp_dir("fortuna-pg-template-")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        data = root / "data"
        subprocess.run(
            [*_as_cluster_owner(), str(bin_dir / "initdb"), "-D", str(data), "-U", user, "-A", "trust",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, cwd=root,
        )
        _templates[key] = data
    return _templates[key]


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in a temp dir, trust auth, listening on 127.0.0.1:port."""

    port: int
    root: Path
    bin_dir: Path
    user: str = "postgres"
    _started: bool = field(default=False, repr=False)

    @classmethod
    def create(cls) -> PostgresServer:
        bin_dir = pg_bin_dir()
        if bin_dir is None:
            raise RuntimeError(PG_BIN_MISSING)
        root = _owned_temp_dir("fortuna-pg-")
        user = "postgres" if os.geteuid() == 0 else os.environ.get("USER", "postgres")
        server = cls(port=free_port(), root=root, bin_dir=bin_dir, user=user)
        # initdb takes seconds; a copy of one cluster made once per session takes a fraction of that.
        server._run("cp", "-a", str(_template_cluster(bin_dir, user)), str(server.data_dir))
        with open(server.data_dir / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nport = {server.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 60\n"
            )
        return server

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def settings_dict(self, dbname: str = "postgres") -> dict:
        return {"NAME": dbname, "USER": self.user, "HOST": "127.0.0.1", "PORT": str(self.port)}

    def _run(self, *argv: str) -> None:
        subprocess.run([*_as_cluster_owner(), *argv], check=True, capture_output=True, cwd=self.root)

    def _pg_ctl(self, *args: str) -> None:
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-l", str(self.log_path), "-w", *args)

    def start(self) -> PostgresServer:
        self._pg_ctl("start")
        _wait_port(self.port, what="PostgreSQL", log=self.log_path)
        self._started = True
        return self

    def restart(self, *, mode: str = "fast") -> None:
        """What an operator's ``pg_ctl restart -m fast`` does: every backend is terminated, then it comes back."""
        self._pg_ctl("restart", "-m", mode)
        _wait_port(self.port, what="PostgreSQL", log=self.log_path)

    def stop_server(self, *, mode: str = "fast") -> None:
        self._pg_ctl("stop", "-m", mode)

    def pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def psql(self, sql: str, *, dbname: str = "postgres") -> str:
        out = subprocess.run(
            [str(self.bin_dir / "psql"), "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", self.user, "-d", dbname, "-c", sql],
            check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()

    def stop(self) -> None:
        """Stop by pid (fast shutdown), then remove the temp dir."""
        if self._started:
            try:
                pid = self.pid()
                os.kill(pid, signal.SIGINT)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    os.kill(pid, 0)
                    time.sleep(0.05)
            except (FileNotFoundError, ProcessLookupError, ValueError):
                pass
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class RedisServer:
    """Its own redis-server (no persistence), on a free port, that a test may kill, pause or restart."""

    port: int
    root: Path
    process: subprocess.Popen | None = None

    @classmethod
    def create(cls) -> RedisServer:
        if shutil.which("redis-server") is None:
            raise RuntimeError(REDIS_MISSING)
        return cls(port=free_port(), root=Path(tempfile.mkdtemp(prefix="fortuna-redis-")))

    @property
    def log_path(self) -> Path:
        return self.root / "redis.log"

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root), "--logfile", str(self.log_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait_port(self.port, what="redis-server", log=self.log_path)
        return self

    def pause(self) -> None:
        """A Redis that still accepts connections (the kernel does) but never answers."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Killed and started again on the same port: empty, as a Redis without persistence comes back."""
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@dataclass
class RabbitVhost:
    """A vhost of its own on the shared RabbitMQ: its connections can be closed without touching anyone else's."""

    name: str
    host: str = "127.0.0.1"
    port: int = 5672

    @classmethod
    def create(cls) -> RabbitVhost:
        vhost = cls(name=f"fortuna-fault-{os.getpid()}-{time.monotonic_ns()}")
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost.name], check=True, capture_output=True)
        subprocess.run(["rabbitmqctl", "-q", "set_permissions", "-p", vhost.name, "guest", ".*", ".*", ".*"],
                       check=True, capture_output=True)
        return vhost

    def url(self) -> str:
        return f"amqp://guest:guest@{self.host}:{self.port}/{self.name}"

    def close_connections(self) -> None:
        subprocess.run(["rabbitmqctl", "-q", "close_all_connections", "-p", self.name, "fault test"],
                       check=True, capture_output=True)

    def stop(self) -> None:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.name], capture_output=True)
