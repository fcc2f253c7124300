"""
stickyproxy's tests: unit tests with Twisted's fakes here, end-to-end tests
against the real C{twistd} process in L{tests.e2e}.
"""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "twisted",
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("twisted")
