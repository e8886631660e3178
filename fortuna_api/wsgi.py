import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fortuna_api.settings")
application = get_wsgi_application()

from core.fortunes.providers import provider_warm_up  # noqa: E402  (needs the app registry)

provider_warm_up()
# Everything loaded so far lives as long as the process: keep the cyclic GC from rescanning it on
# every collection during requests (a source of latency spikes in long-lived web workers).
gc.freeze()
