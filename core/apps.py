from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core import checks  # noqa: F401  (registers the system checks)
        from core.services import token_cache  # noqa: F401  (connects its receivers; needs the models loaded)
