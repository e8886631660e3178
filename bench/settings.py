"""The production settings, serving the benchmark's reference view too (bench/urls.py: /api/ping).

bench/api.py and friends serve with DJANGO_SETTINGS_MODULE=bench.settings; production never routes
/api/ping.
"""

from fortuna_api.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
