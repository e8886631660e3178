"""/ops/ in headless Chromium (Playwright for Python driving Debian's chromium): log in through the
admin, start a real batch against the stub, and watch the live counter rise without a reload.

Screenshots of every page go to the test's tmp dir, and also to OPS_SCREENSHOT_DIR when it is set
(`make ops-screenshots` sets it to docs/img/).
"""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection
from django.utils import timezone

from core.models import FortuneResult, NightlyRun
from tests.commands.test_generate_daily_fortunes_process import _database_url
from tests.factories import user_create, users_create_many
from tests.ops.helpers import fortunes_create, history_create

pytestmark = [pytest.mark.subprocess, pytest.mark.django_db(transaction=True)]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
WAIT_MS = 30_000
PASSWORD = "ops-browser-pass-1234"


@pytest.fixture
def page(monkeypatch):
    try:
        from playwright.sync_api import Error, sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (it is in requirements.txt)")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install -y chromium; .ci/run does it)")
    # Playwright's sync API keeps an asyncio loop on this thread; the test's own ORM calls are still
    # plain synchronous calls (Playwright's and pytest-django's documented workaround).
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        except Error as exc:
            pytest.skip(f"Chromium at {CHROMIUM} could not start: {str(exc).splitlines()[0]}")
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 900})
        finally:
            browser.close()


def _shoot(page, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0
    target = os.environ.get("OPS_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)


def _start_batch(stub, *args: str) -> subprocess.Popen:
    env = {**os.environ, **stub.env(), "DATABASE_URL": _database_url(), "DJANGO_SETTINGS_MODULE": "tests.settings",
           "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "manage.py", "generate_daily_fortunes", "--date", timezone.localdate().isoformat(), *args]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ops_pages_live_counter_rises_without_a_reload(page, live_server, stub_openai, tmp_path, settings):
    # The live server speaks plain HTTP; secure-only cookies would never come back from the browser.
    settings.SESSION_COOKIE_SECURE = settings.CSRF_COOKIE_SECURE = False
    stub_openai.configure(latency_ms=300)
    user_create(username="operator", password=PASSWORD, is_staff=True, birth_date_solar=None)
    users = users_create_many(count=120, seed=11)
    today = timezone.localdate()
    history_create(nights=29, end=today, eligible=120)
    # Today's fortunes (a couple missing, a few made by the web) and some on-demand nights, so the
    # coverage and on-demand views show real figures.
    fortunes_create(users=users[:112], for_date=today)
    fortunes_create(users=users[112:117], for_date=today, source=FortuneResult.Source.ON_DEMAND)
    for n in range(1, 29, 3):
        fortunes_create(users=users[: n % 7 + 1], for_date=today - timezone.timedelta(days=n),
                        source=FortuneResult.Source.ON_DEMAND)

    page.goto(f"{live_server.url}/ops/")
    assert "/admin/login/" in page.url
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")
    page.wait_for_url(f"{live_server.url}/ops/")
    assert page.is_visible("#no-running")
    page.evaluate("window.__opsNotReloaded = true")

    proc = _start_batch(stub_openai, "--workers", "2", "--retry-cooldown", "0")
    try:
        counter = "#running [data-run-id] .done"
        page.wait_for_selector(counter, timeout=WAIT_MS)
        first = int(page.text_content(counter))
        page.wait_for_function(
            "n => { const el = document.querySelector('#running [data-run-id] .done');"
            " return el !== null && Number(el.textContent) > n; }",
            arg=first, timeout=WAIT_MS,
        )
        assert page.evaluate("window.__opsNotReloaded") is True
        assert page.is_hidden("#no-running")
        tomorrow = (timezone.localdate() + timezone.timedelta(days=1)).isoformat()
        assert int(page.text_content(f'[data-coverage="{tomorrow}"] [data-field="with_fortune"]')) > 0
        _shoot(page, tmp_path, "ops-now")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=WAIT_MS / 1000)

    run = NightlyRun.objects.order_by("-pk").first()
    assert run.status in {"interrupted", "succeeded"}
    page.wait_for_function("() => document.querySelector('#running [data-run-id]') === null", timeout=WAIT_MS)
    for name, path in [("ops-run", f"/ops/runs/{run.pk}/"), ("ops-coverage", "/ops/coverage/"),
                       ("ops-history", "/ops/history/")]:
        response = page.goto(f"{live_server.url}{path}")
        assert response.status == 200, path
        _shoot(page, tmp_path, name)
    assert page.locator("svg.chart").count() == 6
    # Under Playwright's sync API the test body runs in a context of its own, so its database
    # connection is not the one pytest-django closes; left open it blocks dropping the test database.
    connection.close()
