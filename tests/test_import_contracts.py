"""
Tests for L{tests.import_contracts}, the contract type that keeps the
global reactor and private Twisted modules out: a contract that can never
break guards nothing.
"""

import importlib
import os
import sys

from tests._base import TestCase
from tests.import_contracts import ExternalImportsContract

_MODULES = {
    "__init__.py": "",
    "clean.py": "from twisted.internet.interfaces import IReactorTime\n",
    "entry.py": "from twisted.internet import reactor\n",
    "global_reactor.py": "import twisted.internet.reactor\n",
    "private.py": "from twisted.protocols.haproxy._v1parser import V1Parser\n",
    "private_name.py": "from twisted.web.client import _HTTP11ClientFactory\n",
}


class ExternalImportsContractTests(TestCase):
    def package(self) -> str:
        """
        A package on C{sys.path} whose modules import what L{_MODULES} says.
        """
        root = self.mktemp()
        name = f"contractcheck_{self._testMethodName}"
        os.makedirs(os.path.join(root, name))
        for module, source in _MODULES.items():
            with open(os.path.join(root, name, module), "w") as f:
                f.write(source)
        sys.path.insert(0, root)
        self.addCleanup(sys.path.remove, root)
        importlib.invalidate_caches()
        return name

    def contract(self, **options: list[str]) -> ExternalImportsContract:
        """
        A contract with these options, as C{.importlinter} would make it.

        Not through C{Contract.__init__}: once C{zope.interface.common} is
        imported (the test run imports it), C{abc.ABC} has a C{__provides__}
        that raises on reading, and import-linter's option parsing reads
        every class attribute.  C{lint-imports} never imports it.
        """
        contract = ExternalImportsContract.__new__(ExternalImportsContract)
        contract.name = "test"
        contract.forbidden_modules = []
        contract.forbid_private_of = []
        contract.allowed = []
        for name, value in options.items():
            setattr(contract, name, value)
        return contract

    def check(self, package: str, **options: list[str]) -> list[str]:
        contract = self.contract(source_modules=[package], **options)
        return contract.check(graph=None, verbose=False).metadata["found"]

    def test_global_reactor(self) -> None:
        """
        Both ways of importing the global reactor are found, with their
        module and line; a module in C{allowed} may do it.
        """
        package = self.package()
        found = self.check(
            package,
            forbidden_modules=["twisted.internet.reactor"],
            allowed=[f"{package}.entry"],
        )
        self.assertEqual(
            found,
            [f"{package}.global_reactor:1 imports twisted.internet.reactor"],
        )

    def test_private_twisted(self) -> None:
        """
        A private Twisted module, and a private name imported from a public
        one, are both found; public imports are not.
        """
        package = self.package()
        found = self.check(package, forbid_private_of=["twisted"])
        self.assertEqual(
            found,
            [
                f"{package}.private:1 imports private "
                "twisted.protocols.haproxy._v1parser",
                f"{package}.private_name:1 imports private "
                "twisted.web.client._HTTP11ClientFactory",
            ],
        )

    def test_kept(self) -> None:
        """
        A package with nothing forbidden keeps the contract.
        """
        package = self.package()
        contract = self.contract(
            source_modules=[f"{package}.clean"],
            forbidden_modules=["twisted.internet.reactor"],
            forbid_private_of=["twisted"],
        )
        self.assertTrue(contract.check(graph=None, verbose=False).kept)
