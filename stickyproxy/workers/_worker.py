"""
The worker's side: who it is and which sockets it inherited (from its
environment), and its end of the control channel, whose closing means the
parent is gone.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any, cast

import attrs
from zope.interface import implementer

from twisted.application.service import Service
from twisted.internet.interfaces import IFileDescriptorReceiver, IProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from stickyproxy.workers._supervisor import CONTROL_FD, SOCKETS_ENV, WORKER_ENV


@attrs.frozen
class WorkerIdentity:
    """
    What a worker's parent told it: its id, and its inherited listening
    sockets by frontend name.
    """

    worker: int
    sockets: Mapping[str, int]


def worker_identity(environment: Mapping[str, str]) -> WorkerIdentity | None:
    """
    :returns: who this process is as a worker, or C{None}: it is not one.
    :raises ValueError: the environment is not what a parent sets.
    """
    worker = environment.get(WORKER_ENV)
    if worker is None:
        return None
    sockets = json.loads(environment.get(SOCKETS_ENV, "{}"))
    if not isinstance(sockets, dict) or not all(
        isinstance(name, str) and isinstance(fd, int) for name, fd in sockets.items()
    ):
        raise ValueError(f"{SOCKETS_ENV}: expected a JSON object of descriptors")
    return WorkerIdentity(int(worker), sockets)


@implementer(IFileDescriptorReceiver)
class _LinkProtocol(ProtocolWrapper):
    """
    The control protocol's connection, passing on the descriptors it
    receives (the parent sends listening sockets).
    """

    def fileDescriptorReceived(self, descriptor: int) -> None:
        cast(IFileDescriptorReceiver, self.wrappedProtocol).fileDescriptorReceived(
            descriptor
        )


class _Link(WrappingFactory):
    """
    Makes the control protocol, and says when its connection is lost.
    """

    protocol = _LinkProtocol
    noisy = False

    def __init__(self, control: IProtocol, lost: Callable[[], object]) -> None:
        super().__init__(Factory.forProtocol(lambda: control))
        self._lost = lost

    def unregisterProtocol(self, protocol: Protocol) -> None:
        super().unregisterProtocol(protocol)
        self._lost()


class ParentLink(Service):
    """
    A worker's end of its control channel (descriptor C{CONTROL_FD}),
    spoken by C{control}; when the channel closes, the parent is gone (it
    was killed), and C{gone} is called, once, to stop the worker.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        control: IProtocol,
        gone: Callable[[], object],
        descriptor: int = CONTROL_FD,
    ) -> None:
        self.reactor = reactor
        self.control = control
        self.gone = gone
        self.descriptor = descriptor
        self._adopted = False

    def startService(self) -> None:
        super().startService()
        if self._adopted:
            return
        self._adopted = True
        self.reactor.adoptStreamConnection(
            self.descriptor, socket.AF_UNIX, _Link(self.control, self._lost)
        )
        os.close(self.descriptor)  # the reactor holds a copy

    def _lost(self) -> None:
        if self.running:
            self.log.warn("the parent process is gone: stopping")
            self.gone()
