"""
The shared base TestCase.
"""

from zope.interface import Interface

from twisted.trial.unittest import SynchronousTestCase

from stickyproxy.testing import assert_provides


class TestCase(SynchronousTestCase):
    """
    A synchronous TestCase with an interface check.
    """

    def assertProvides(self, interface: type[Interface], obj: object) -> None:
        """
        Fail unless C{obj} fully provides C{interface}.
        """
        try:
            assert_provides(interface, obj)
        except Exception as error:
            self.fail(f"{obj!r} does not provide {interface.__name__}: {error}")
