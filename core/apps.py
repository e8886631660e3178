from django.apps import AppConfig


class CoreConfig(AppConfig):
    name = "core"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from core.services import token_cache  # noqa: F401  (connects its receivers; needs the models loaded)
