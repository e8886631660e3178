from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from core.nightly.dates import database_today
from core.nightly.retention import MAX_RETENTION_DAYS, fortunes_prune, fortunes_prune_count

DAYS_TOO_SMALL = "--days must be at least 1 (got {days}): it is how many days of fortunes to keep."
DAYS_TOO_LARGE = f"--days must be at most {MAX_RETENTION_DAYS} (a century), got {{days}}."
BATCH_SIZE_TOO_SMALL = "--batch-size must be at least 1 (got {batch_size})."


class Command(BaseCommand):
    help = ("Delete fortunes older than the retention window (FORTUNE_RETENTION_DAYS) before today in Korea "
            "by the database's clock, in batches.")

    def add_arguments(self, parser):
        parser.add_argument(
            "--days", type=int, default=settings.FORTUNE_RETENTION_DAYS,
            help="Keep this many days of fortunes before today (Asia/Seoul, the database's clock). "
                 "Default: FORTUNE_RETENTION_DAYS.",
        )
        parser.add_argument("--batch-size", type=int, default=5000, help="Rows deleted per transaction.")
        parser.add_argument("--dry-run", action="store_true", help="Print what would be deleted; delete nothing.")

    def handle(self, *args, **options):
        days, batch_size = options["days"], options["batch_size"]
        if days < 1:
            raise CommandError(DAYS_TOO_SMALL.format(days=days))
        if days > MAX_RETENTION_DAYS:
            raise CommandError(DAYS_TOO_LARGE.format(days=days))
        if batch_size < 1:
            raise CommandError(BATCH_SIZE_TOO_SMALL.format(batch_size=batch_size))
        today = database_today()
        if options["dry_run"]:
            counts = fortunes_prune_count(today=today, retention_days=days)
            self.stdout.write(
                f"Dry run: would delete {counts.results} fortune results and {counts.generations} generations "
                f"dated before {counts.cutoff.isoformat()} (keeping {days} days)."
            )
            return
        deleted = fortunes_prune(today=today, retention_days=days, batch_size=batch_size)
        self.stdout.write(self.style.SUCCESS(f"Deleted {deleted} fortune results older than {days} days."))
