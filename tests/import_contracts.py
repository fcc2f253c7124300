"""
An import-linter contract type for the rules its graph cannot see.

import-linter keeps only the root of an external package in its graph
(C{twisted}, not C{twisted.internet.reactor}), so "nothing imports the
global reactor" and "no private Twisted module" are checked here, on each
module's own import statements.  C{.importlinter} uses it as
C{external_imports}.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

from importlinter import Contract, ContractCheck, fields, output


def _imported_names(tree: ast.AST) -> list[tuple[int, str]]:
    """
    Every module an import statement names, with its line: C{from a.b import
    c} names both C{a.b} and C{a.b.c} (C{c} may be a module).
    """
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append((node.lineno, node.module))
            names += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return names


def _source_files(package: str) -> list[tuple[str, Path]]:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ValueError(f"cannot find {package}")
    root = Path(spec.origin)
    if root.name != "__init__.py":
        return [(package, root)]
    files = []
    for path in sorted(root.parent.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files.append((".".join((package, *parts)), path))
    return files


class ExternalImportsContract(Contract):
    """
    Source modules must not import the named external modules, nor any
    private module (a dotted part starting with one underscore) of the
    named external packages.

    Options: C{source_modules}; C{forbidden_modules} (external dotted
    names); C{forbid_private_of} (external package roots); C{allowed}
    (source modules exempt from C{forbidden_modules}).
    """

    type_name = "external_imports"

    source_modules = fields.ListField(subfield=fields.StringField())
    forbidden_modules = fields.ListField(subfield=fields.StringField(), required=False)
    forbid_private_of = fields.ListField(subfield=fields.StringField(), required=False)
    allowed = fields.ListField(subfield=fields.StringField(), required=False)

    def check(self, graph: object, verbose: bool) -> ContractCheck:
        forbidden = self.forbidden_modules or []
        private_roots = self.forbid_private_of or []
        allowed = set(self.allowed or [])
        found = []
        for package in self.source_modules:
            for module, path in _source_files(package):
                tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
                reported = set()
                for line, name in _imported_names(tree):
                    parts = name.split(".")
                    if line in reported:
                        continue
                    if module not in allowed and any(
                        name == f or name.startswith(f + ".") for f in forbidden
                    ):
                        found.append(f"{module}:{line} imports {name}")
                    elif parts[0] in private_roots and any(
                        p.startswith("_") and not p.startswith("__") for p in parts
                    ):
                        found.append(f"{module}:{line} imports private {name}")
                    else:
                        continue
                    reported.add(line)
        return ContractCheck(kept=not found, metadata={"found": found})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["found"]:
            output.print_error(line)
