"""Fixtures shared by every test folder."""
import signal

import pytest


@pytest.fixture
def sigint_raises():
    """Ctrl-C raises KeyboardInterrupt during the test even when the suite was started with SIGINT ignored: a
    background job of a non-interactive shell inherits SIG_IGN, and Python then installs no handler."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)
