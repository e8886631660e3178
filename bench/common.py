"""What the bench/ scripts share. Every script imports from here; no script imports another.

Nothing here sets Django up on import: the API scripts run Django with bench/settings.py in child
processes (production's settings, plus the reference view /api/ping), the batch scripts in their own
process (batch_django_setup()). Helpers that need models import them when called.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.deploy.server import production_env  # noqa: E402


def cpu_ticks(pid: int | str) -> int:
    """A process's user + system CPU in clock ticks (/proc); 0 once it has ended."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15 of stat)


# --- trees side by side (--against REV) ----------------------------------------------------------


def tree_export(*, revision: str, into: Path) -> Path:
    """The files of a git revision (git archive), to run beside this tree."""
    into.mkdir()
    archive = subprocess.run(["git", "archive", revision], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def settings_module_for(tree: Path) -> str:
    """The settings that serve /api/ping in a tree: bench.settings, or production's in trees older
    than bench/settings.py (they routed /api/ping in production)."""
    return "bench.settings" if (tree / "bench" / "settings.py").exists() else "fortuna_api.settings"


# --- the API benchmarks: one PostgreSQL database, production settings plus /api/ping -------------

BENCH_DB = "fortuna_bench_api"
PG_SERVER = "postgres://postgres@127.0.0.1:5432"
PING_PATH = "/api/ping"
FORTUNE_PATH = "/fortune/today"
DRF_PATH = "/api/fortune-drf"  # the idiomatic DRF reference for FORTUNE_PATH (bench/views.py)
API_PATHS = (PING_PATH, FORTUNE_PATH)
GUNICORN_BENCH_CONFIG = ROOT / "bench" / "gunicorn.conf.py"  # gunicorn.conf.py with the balanced worker


def api_env(database_url: str, *, tree: Path = ROOT) -> dict[str, str]:
    """A Railway web deployment's variables, with the settings that route /api/ping in `tree`."""
    return production_env(database_url=database_url, port=0,
                          extra={"DJANGO_SETTINGS_MODULE": settings_module_for(tree)})


def database_prepare(*, database_url: str | None) -> str:
    if database_url:
        return database_url
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", BENCH_DB], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", BENCH_DB], check=True)
    return f"{PG_SERVER}/{BENCH_DB}"


def database_migrate(*, database_url: str) -> None:
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=api_env(database_url),
        check=True,
    )


def data_seed(*, database_url: str, users: int) -> list[str]:
    """Users with tokens and today's fortunes, bulk-inserted. Returns the tokens."""
    os.environ.update(api_env(database_url))
    import django

    django.setup()
    from django.db import connections, transaction
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from core.fortunes.inputs import GenerationInput
    from core.fortunes.schema import Categories, GeneratedPart, Lucky, ScoredText
    from core.models import FortuneGeneration, FortuneResult, User
    from core.services.demo import demo_users_create

    demo_users_create(count=users, seed=2026)
    eligible = list(User.objects.filter(is_active=True, birth_date_solar__isnull=False))
    today = timezone.localdate()
    rng = random.Random(7)
    generations: dict[str, FortuneGeneration] = {}
    pairs = []
    for user in eligible:
        inp = GenerationInput.for_user(user=user, for_date=today, generator="local")
        if inp.hash not in generations:
            score = rng.randrange(30, 95)
            scored = ScoredText(score=score, text="오늘은 주변 사람들과의 관계가 부드럽게 풀리는 날입니다. " * 3)
            part = GeneratedPart(
                summary="차분하게 하루를 정리하면 좋은 결과가 따릅니다.",
                overall=scored,
                categories=Categories(love=scored, money=scored, work=scored, health=scored),
                lucky=Lucky(color="파랑", number=rng.randrange(100), direction="동"),
                advice="서두르지 말고 한 가지씩 마무리하세요. " * 2,
            )
            generations[inp.hash] = FortuneGeneration(
                input_hash=inp.hash, for_date=today, content=inp.compose(part).as_json(), provider="local"
            )
        pairs.append((user, inp.hash))
    with transaction.atomic():
        FortuneGeneration.objects.bulk_create(generations.values(), batch_size=1000)
        saved = dict(FortuneGeneration.objects.filter(for_date=today).values_list("input_hash", "pk"))
        FortuneResult.objects.bulk_create(
            [FortuneResult(user=user, for_date=today, generation_id=saved[h], source="batch") for user, h in pairs],
            batch_size=1000,
        )
        tokens = [Token(user=user, key=Token.generate_key()) for user, _ in pairs]
        Token.objects.bulk_create(tokens, batch_size=1000)
    connections.close_all()
    return [token.key for token in tokens]


def tokens_read(*, database_url: str) -> list[str]:
    os.environ.update(api_env(database_url))
    import django

    django.setup()
    from django.db import connections
    from rest_framework.authtoken.models import Token

    tokens = list(Token.objects.values_list("key", flat=True))
    connections.close_all()
    return tokens


def wsgi_get(application, *, path: str, token: str) -> int:
    """One GET through a WSGI application as gunicorn makes it (behind Railway's proxy); returns the status."""
    status = []
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "", "SCRIPT_NAME": "",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1", "HTTP_X_FORWARDED_PROTO": "https", "HTTP_AUTHORIZATION": f"Token {token}",
        "REMOTE_ADDR": "127.0.0.1", "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http", "wsgi.version": (1, 0), "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    result = application(environ, lambda s, headers, exc_info=None: status.append(s))
    try:
        b"".join(result)
    finally:
        result.close()  # request_finished, as gunicorn does
    return int(status[0].split()[0])


def wsgi_application_of(source_dir: Path):
    """A tree's WSGI application, imported as gunicorn does (it sets Django up), in this process."""
    sys.path.insert(0, str(source_dir))
    os.chdir(source_dir)
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module_for(source_dir)
    from fortuna_api.wsgi import application

    return application


# --- the batch benchmarks: a database whose name contains "bench", wiped -------------------------

BASE = dt.date(2030, 3, 10)
TARGET = BASE + dt.timedelta(days=1)
INELIGIBLE_SHARE = 0.1  # extra users on top of N: inactive or without a birth date


def batch_django_setup() -> None:
    """Django for a batch benchmark's own process (it only seeds; the command gets its own env)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fortuna_api.settings")
    os.environ.setdefault("DEBUG", "1")
    os.environ.setdefault("SECRET_KEY", "bench-only-secret-key")
    os.environ["FORTUNE_PROVIDER"] = "local"
    import django

    django.setup()


def openai_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """The batch-api scenario's flags (bench/nightly.py and bench/openai_batch.py; --users and --workers are shared)."""
    parser.add_argument("--completion-delay", type=float, default=2.0, help="batch-api: seconds until the stub "
                        "completes")
    parser.add_argument("--fail-share", type=float, default=0.0, help="batch-api: share of lines answered 5xx")


def wipe() -> None:
    from django.db import connection

    from core.models import FortuneGeneration, FortuneResult, NightlyRun, User

    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            tables = [m._meta.db_table for m in (FortuneResult, FortuneGeneration, NightlyRun)]
            cursor.execute(f"TRUNCATE {', '.join(tables)}, {User._meta.db_table} CASCADE")
        else:
            for model in (FortuneResult, FortuneGeneration, NightlyRun):
                model.objects.all().delete()
            User.objects.all().delete()


def _birth_date(rng: random.Random) -> dt.date:
    # Users aged mostly 20-45, a tail to 75: a triangular distribution of birth years 1950-2010.
    year = int(rng.triangular(1950, 2010, 1992))
    return dt.date(year, 1, 1) + dt.timedelta(days=rng.randrange(365))


def users_seed(*, count: int, distinct: bool, seed: int = 1) -> int:
    """count eligible users (+10% ineligible) by bulk_create, natal pillars filled; returns eligible."""
    from django.db import connection

    from core.models import User
    from core.services.natal import natal_fields, users_refresh_natal

    rng = random.Random(seed)
    natal_cache: dict[tuple, dict] = {}
    started = time.perf_counter()
    batch: list[User] = []
    total = int(count * (1 + INELIGIBLE_SHARE))
    for n in range(total):
        eligible = n < count
        if distinct:
            # Every input different: one birth day per user (unknown time), across more than 60 years is
            # not needed — (year, month, day) pillars repeat only after 60 years.
            birth = dt.date(1950, 1, 1) + dt.timedelta(days=n % 21900)
            birth_time, gender = None, "MF"[(n // 21900) % 2]
        else:
            birth = _birth_date(rng)
            birth_time = dt.time(rng.randrange(24), rng.randrange(60)) if rng.random() < 0.5 else None
            gender = rng.choice("MF")
        user = User(username=f"bench{n}", password="!", email="", gender=gender, is_active=True,
                    birth_date_solar=birth, birth_time=birth_time)
        if not eligible:
            if rng.random() < 0.5:
                user.is_active = False
            else:
                user.birth_date_solar = None
        key = (user.birth_date_solar, birth_time)
        if key not in natal_cache:
            natal_cache[key] = natal_fields(birth_date=user.birth_date_solar, birth_time=birth_time)
        for name, value in natal_cache[key].items():
            setattr(user, name, value)
        batch.append(user)
        if len(batch) >= 5000:
            User.objects.bulk_create(batch, batch_size=5000)
            batch = []
    User.objects.bulk_create(batch, batch_size=5000)
    stale = users_refresh_natal()
    print(f"  seeded {total:,} users ({count:,} eligible, distinct inputs={distinct}) in "
          f"{time.perf_counter() - started:.1f} s; natal refresh found {stale} stale")
    if connection.vendor == "postgresql":
        settle()
    return count


def settle() -> None:
    """Let PostgreSQL finish the seeding's after-effects before a measured run: VACUUM (else
    autovacuum's insert-triggered pass over the fresh users runs during the batch) and a CHECKPOINT
    (else the seeding's dirty buffers are written out during it)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
        try:
            cursor.execute("CHECKPOINT")
        except Exception as exc:  # noqa: BLE001 - needs superuser or pg_checkpoint; optional
            print(f"  (no CHECKPOINT before the run: {exc})")


def vm_hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def command_run(*, env: dict, args: list[str]) -> dict:
    """Run the command as a subprocess; wall time and that child's own peak RSS.

    Peak RSS is the child's VmHWM (/proc, polled every 20 ms; monotonic, so only a spike in the last
    20 ms could be missed). Not wait4's ru_maxrss: Linux carries the parent's high-water mark across
    the spawn (vfork + exec), so ru_maxrss reported this seeding process's own size (134-700 MB).
    """
    from core.models import NightlyRun

    argv = [sys.executable, "manage.py", "generate_daily_fortunes", "--date", BASE.isoformat(), *args]
    started = time.perf_counter()
    out_file = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: nobody reads while we poll
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out_file, stderr=subprocess.DEVNULL, text=True)
    peak_kb = 0
    while proc.poll() is None:
        peak_kb = max(peak_kb, vm_hwm_kb(proc.pid))
        time.sleep(0.02)
    wall = time.perf_counter() - started
    out_file.seek(0)
    out = out_file.read()
    out_file.close()
    run = NightlyRun.objects.order_by("-pk").first()
    return {"wall": wall, "rss_mb": peak_kb / 1024, "code": proc.returncode, "run": run,
            "summary": out.strip().splitlines()[-1] if out.strip() else ""}


def command_env(**extra: str) -> dict:
    """The command's environment: DEBUG off as in production (with DEBUG on, Django keeps the last
    9,000 SQL statements in memory), this process's database."""
    from django.conf import settings

    env = {**os.environ, "DATABASE_URL": settings.DATABASE_URL, "LOG_LEVEL": "warning", "DEBUG": "0", **extra}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env
