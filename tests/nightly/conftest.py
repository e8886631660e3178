import logging

import pytest


@pytest.fixture
def batch_log(caplog):
    # The "fortuna" logger does not propagate to the root logger caplog listens on.
    logger = logging.getLogger("fortuna")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="fortuna.nightly")
    yield caplog
    logger.removeHandler(caplog.handler)
