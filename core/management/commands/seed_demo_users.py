from django.core.management.base import BaseCommand, CommandError

from core.models import User
from core.services.demo import demo_users_create

MAX_COUNT = 5_000_000


class Command(BaseCommand):
    help = "Create realistic demo users (bulk; births 1950–2010, some lunar, some inactive or without birth data)."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=1000, help="How many users to create (default 1000).")
        parser.add_argument("--seed", type=int, default=2026, help="Random seed, for reproducible data.")
        parser.add_argument("--if-empty", action="store_true", help="Do nothing if any user exists already.")

    def handle(self, *args, **options):
        count = options["count"]
        if not 1 <= count <= MAX_COUNT:
            raise CommandError(f"--count must be between 1 and {MAX_COUNT:,}, got {count}.")
        if options["if_empty"] and User.objects.exists():
            self.stdout.write(f"Users exist already ({User.objects.count()}); no demo users created.")
            return
        created = demo_users_create(count=count, seed=options["seed"])
        self.stdout.write(self.style.SUCCESS(f"Created {created} demo users."))
