"""
The proxy's own secret (L{IProxySecrets}): kept in a state file when the
configuration gives strategies no C{keys}, so their cookies survive
restarts and proxies that share the file agree.

The file holds one line: 32 random bytes in base64url, without padding
(43 characters).  It is made once, with mode 0600, by writing a temporary
file and linking it into place, so two proxies starting together in one
state directory end up with the same secret.  A file that cannot be read,
or does not hold such a line, stops the proxy: making a new secret would
silently log every user out.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Mapping

import attrs
from zope.interface import implementer

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from stickyproxy.config._options import ConfigError, describe_error
from stickyproxy.interfaces import (
    IBackendPool,
    IPersistenceStrategy,
    IProxySecrets,
    IStickTableStore,
)
from stickyproxy.persistence._signing import b64decode, b64encode

log = Logger()

#: The name of the secret's file in the state directory.
KEY_FILE = "stickyproxy.key"
SECRET_SIZE = 32
_EXPECTED = (
    f"one line of {len(b64encode(bytes(SECRET_SIZE)))} base64url characters "
    f"({SECRET_SIZE} random bytes), as stickyproxy writes it"
)


def _reason(error: OSError) -> str:
    """
    :returns: why a file operation failed, without the (temporary) name.
    """
    return error.strerror or describe_error(error)


def derive(secret: bytes, purpose: bytes) -> bytes:
    """
    :returns: the key for C{purpose}: HMAC-SHA256 of it under C{secret}.
    """
    return hmac.new(secret, b"stickyproxy key\0" + purpose, hashlib.sha256).digest()


@implementer(IProxySecrets)
@attrs.define(eq=False)
class FileSecrets:
    """
    The secret kept in the file at C{path}: read, or made, the first time a
    key is asked for (so a proxy whose strategies sign nothing never writes
    it), and logged once with where it lives.

    :ivar create: whether a missing file is made; when not (for
        C{twistd stickyproxy --check}, which must leave no trace), only
        checked that it could be, and a secret of this process is used.
    """

    path: str
    create: bool = True
    _secret: bytes | None = attrs.field(init=False, default=None, repr=False)

    @property
    def location(self) -> str:
        return self.path

    def key(self, purpose: bytes) -> bytes:
        if self._secret is None:
            self._secret = self._load()
        return derive(self._secret, purpose)

    def _load(self) -> bytes:
        secret = self._read()
        if secret is None and not self.create:
            self._check_creatable()
            return os.urandom(SECRET_SIZE)
        if secret is None:
            secret = self._create()
            if secret is not None:
                log.info(
                    "cookie keys: made a new secret and kept it in {path}; "
                    "cookies survive restarts while this file does",
                    path=self.path,
                )
                return secret
            secret = self._read()  # another proxy made it first
            if secret is None:
                raise self._error("it exists but cannot be opened (a broken link?)")
        log.info("cookie keys: using the secret kept in {path}", path=self.path)
        return secret

    def _error(self, what: str) -> ConfigError:
        return ConfigError(self.path, f"expected {_EXPECTED}; {what}")

    def _read(self) -> bytes | None:
        """
        :returns: the secret in the file, or C{None} when there is no file.
        :raises ConfigError: the file cannot be read or is malformed.
        """
        try:
            # Non-blocking: a FIFO in its place must not hang the start.
            descriptor = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                mode = os.fstat(descriptor).st_mode
                data = os.read(descriptor, 4096) if stat.S_ISREG(mode) else b""
            finally:
                os.close(descriptor)
        except FileNotFoundError:
            return None
        except OSError as error:
            raise self._error(f"cannot read it ({_reason(error)})") from None
        if not stat.S_ISREG(mode):
            raise self._error("it is not a regular file")
        try:
            text = data.decode("ascii").strip()
        except UnicodeDecodeError:
            text = ""
        secret = b64decode(text) if text else None
        if secret is None or len(secret) != SECRET_SIZE:
            raise self._error(
                f"it holds {len(data)} bytes of something else (remove it to "
                "make a new secret, and every cookie signed with the old one "
                "is lost)"
            )
        if mode & 0o077:
            log.warn(
                "cookie keys: {path} may be read by other users (mode "
                "{mode:o}); chmod 600 it",
                path=self.path,
                mode=stat.S_IMODE(mode),
            )
        return secret

    def _cannot_create(self, reason: str) -> ConfigError:
        return ConfigError(
            self.path,
            "expected a state directory the proxy can write its cookie "
            f"secret in; cannot make the file ({reason})",
        )

    def _check_creatable(self) -> None:
        """
        :raises ConfigError: L{_create} would fail for want of a writable
            directory.
        """
        directory = os.path.dirname(self.path) or "."
        if not os.path.isdir(directory):
            raise self._cannot_create(f"no directory {directory}")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise self._cannot_create(f"{directory} is not writable")

    def _create(self) -> bytes | None:
        """
        Make the file, unless another proxy makes it first.

        :returns: the new secret, or C{None} when the file appeared first.
        :raises ConfigError: the file cannot be made.
        """
        secret = os.urandom(SECRET_SIZE)
        temporary = f"{self.path}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(descriptor, (b64encode(secret) + "\n").encode("ascii"))
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                return None
        except OSError as error:
            raise self._cannot_create(_reason(error)) from None
        finally:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        return secret


class KeyedFactory:
    """
    The C{build} of an L{IKeyedStrategyFactory}: C{build_keyed} with a
    secret of this process only (L{RandomSecrets}), for callers that have
    no proxy secrets.
    """

    def build(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
    ) -> IPersistenceStrategy:
        return self.build_keyed(options, pool, reactor, path, RandomSecrets(path))

    def build_keyed(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
        secrets: IProxySecrets,
    ) -> IPersistenceStrategy:
        raise NotImplementedError


class StoreFactory(KeyedFactory):
    """
    The C{build_keyed} of an L{IStoreStrategyFactory}: C{build_stored}
    without a store (its tables are kept in memory).
    """

    def build_keyed(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
        secrets: IProxySecrets,
    ) -> IPersistenceStrategy:
        return self.build_stored(options, pool, reactor, path, secrets, None)

    def build_stored(
        self,
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
        secrets: IProxySecrets,
        tables: IStickTableStore | None,
    ) -> IPersistenceStrategy:
        raise NotImplementedError


@implementer(IProxySecrets)
@attrs.define(eq=False)
class RandomSecrets:
    """
    A secret made at random for this process only, for strategies built
    without the proxy's secrets (C{build} rather than C{build_keyed}):
    their values are lost when the process ends, so this warns once.

    :ivar path: the config key path of who uses it, for the warning.
    """

    path: str
    _secret: bytes | None = attrs.field(init=False, default=None, repr=False)

    @property
    def location(self) -> str:
        return "this process's memory"

    def key(self, purpose: bytes) -> bytes:
        if self._secret is None:
            self._secret = os.urandom(SECRET_SIZE)
            log.warn(
                "{path} has no keys, and no state file to keep one in: a "
                "random key was generated, so its cookies are lost when the "
                "proxy restarts and several proxies do not recognise each "
                "other's; set keys = [...], or build it in a ProxyService, "
                "which keeps its key in the state directory",
                path=self.path,
            )
        return derive(self._secret, purpose)
