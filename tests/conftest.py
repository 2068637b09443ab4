import os, sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def redis():
    """A real redis-server on a free port for the module's tests
    (`tests.redisserver`): never the system's service."""
    from tests.redisserver import redis_server

    with redis_server() as server:
        yield server
