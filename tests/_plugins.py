"""
Throw-away third-party strategy plugins, as module sources: the unit and
end-to-end tests write them under a C{twisted/plugins/} directory of their
own, as another distribution would install them.
"""

ALWAYS_FIRST = '''
"""
A throw-away third-party strategy: every client is bound to the pool's
first backend.
"""

from zope.interface import implementer

from twisted.plugin import IPlugin

from stickyproxy import OptionReader
from stickyproxy.interfaces import IPersistenceStrategy, IPersistenceStrategyFactory


@implementer(IPersistenceStrategy)
class AlwaysFirst:
    name = "always-first"

    def __init__(self, pool):
        self.pool = pool

    def lookup(self, context):
        return self.pool.backends[0]

    def persist(self, context, backend):
        pass

    def release(self, context, backend):
        pass


@implementer(IPlugin, IPersistenceStrategyFactory)
class AlwaysFirstFactory:
    name = "always-first"
    modes = frozenset({"tcp"})
    description = "every client goes to the first backend"

    def build(self, options, pool, reactor, path):
        OptionReader(options, path).finish()
        return AlwaysFirst(pool)


alwaysFirst = AlwaysFirstFactory()
'''

RAISES_ON_IMPORT = """
raise RuntimeError("this throw-away plugin is broken on purpose")
"""
