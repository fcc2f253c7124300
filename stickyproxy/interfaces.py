"""
The seams of stickyproxy.

A frontend (L4 or L7) builds an L{IRoutingContext} for each connection or
request and hands it to the router.  The router asks the frontend's
L{IPersistenceStrategy} chain which backend the client is bound to, falls
back to the pool's L{IBalancer}, and afterwards lets each strategy record
the binding.  Strategies are made by L{IPersistenceStrategyFactory}
providers, found by name through Twisted's plugin system, so a third party
adds one by shipping a module under C{twisted/plugins/}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IReactorTime

    from stickyproxy.core._cookies import SetCookie
    from stickyproxy.model import (
        Backend,
        ConnectionClosed,
        ConnectionOpened,
        ProbeRan,
        RequestFinished,
        StateChange,
        TableEntry,
    )


class IRoutingContext(Interface):
    """
    What the router knows about one client connection or request.

    Protocols fill it in; strategies read it.  It is deliberately small: an
    L4 frontend knows only addresses, an L7 frontend adds the request head.
    """

    mode = Attribute("str: the frontend's mode, C{'tcp'} or C{'http'}")
    frontend = Attribute("str: the name of the frontend that accepted the client")
    client_host = Attribute(
        "str: the client's IP address, already corrected by the PROXY protocol "
        "or trusted forwarding headers"
    )
    client_port = Attribute("int: the client's source port (0 when unknown)")
    tried = Attribute(
        "list[Backend]: backends that already failed this client (refused or "
        "timed out) in this attempt; a stateless strategy (a hash) skips them, "
        "so a retry goes where the hash will send the client once they are "
        "marked down, and the client moves only once"
    )
    invalid = Attribute(
        "str | None: C{None}, until a strategy's C{lookup} finds a binding on "
        "the client that it cannot honour (a forged, garbled or expired "
        "cookie; a cookie or route naming no backend of the pool): it then "
        "sets its own name here, and the router reports the client, balanced "
        "afresh, as C{invalid} rather than C{new} in events"
    )


class IHTTPRoutingContext(IRoutingContext):
    """
    An L{IRoutingContext} for one HTTP request (and, in C{persist}, its
    response).
    """

    secure = Attribute(
        "bool: the client reached us over TLS (or a trusted proxy in front "
        "says it did, with X-Forwarded-Proto: https)"
    )
    peer_host = Attribute(
        "str: the address of the TCP peer (a proxy in front, if any), where "
        "client_host is the client behind it"
    )
    method = Attribute("bytes: the request method")
    target = Attribute("bytes: the request-target as received (path and query)")
    status = Attribute("int | None: the response status, once the response head is in")

    def header(name: bytes) -> bytes | None:
        """
        :param name: a lowercase header name.
        :returns: the request header's first value, or C{None}.
        """

    def header_values(name: bytes) -> list[bytes]:
        """
        :returns: every value of a request header, comma-separated lists
            split, in order.
        """

    def cookie(name: str) -> str | None:
        """
        :returns: the value of the request cookie C{name} (the first one)
            as the client sent it, whatever strategies changed for the
            forwarded request; or C{None}.
        """

    def remove_cookie(name: str) -> None:
        """
        Take cookie C{name} off the request before it is forwarded.
        """

    def replace_cookie(name: str, value: str) -> None:
        """
        Forward the request with every cookie C{name} set to C{value}
        instead.
        """

    def response_cookies(name: str) -> list[SetCookie]:
        """
        :returns: the response's C{Set-Cookie} headers for cookie C{name}.
        """

    def replace_response_cookie(old: SetCookie, new: SetCookie) -> None:
        """
        Send C{new} in place of the response cookie C{old}.
        """

    def add_response_header(name: bytes, value: bytes) -> None:
        """
        Add a header to the response (e.g. C{Set-Cookie}).
        """

    def response_header(name: bytes) -> bytes | None:
        """
        :returns: the response header's first value, or C{None}.
        """

    def response_header_values(name: bytes) -> list[bytes]:
        """
        :returns: every value of a response header, in order.
        """

    def set_response_header(name: bytes, value: bytes) -> None:
        """
        Replace every value of a response header with C{value}.
        """


class IBackendPool(Interface):
    """
    A named group of backends that share a balancer and connect settings.
    """

    name = Attribute("str: the pool's name in the configuration")
    backends = Attribute(
        "tuple[Backend, ...]: every backend, in config order (then in the "
        "order added); a new tuple whenever one is added or removed, so an "
        "identity check tells a cache it is stale"
    )

    def get(name: str) -> Backend | None:
        """
        Find a backend by name.

        :param name: the backend's configured name.
        :returns: the backend, or C{None} when the pool has no such backend.
        """

    def serves_bound(backend: Backend) -> bool:
        """
        :returns: whether clients bound to C{backend} may stay there: it is
            not in maintenance, and up (or the pool fails open).
        """

    def serving_bound() -> Sequence[Backend]:
        """
        The backends that may keep serving clients already bound to them.

        :returns: backends that are up and not in maintenance (draining ones
            included), in config order.
        """

    def accepting_new() -> Sequence[Backend]:
        """
        The backends that may take clients with no binding yet.

        :returns: backends that are up and ready, in config order.
        """

    def sessions(name: str) -> int:
        """
        :returns: how many sticky sessions the named backend holds.
        :raises KeyError: no backend has that name.
        """

    def add_session_source(source: Callable[[str], int]) -> None:
        """
        Make the pool count, in L{sessions}, the bindings a strategy holds:
        C{source(backend_name)} returns how many it has for that backend.
        """

    def count_sessions(name: str, table: IStickTable, timeout: float) -> IStickTable:
        """
        Make the pool count the bindings of a strategy's stick table as
        sessions, like L{add_session_source} with C{table.count}, and, when
        several proxies share a store, count them across all of them.

        :param name: the table's name in the configuration (its key path):
            the same on every proxy.
        :param timeout: how long a binding lasts unused, in seconds.
        :returns: the table the strategy is to use from now on (C{table},
            or one that wraps it).
        """

    def observe(observer: Callable[[StateChange], None]) -> None:
        """
        Call C{observer} with each change of a backend's state, and of the
        set of backends: C{"added"}, C{"removed"} and C{"weight"}.
        """

    def add(backend: Backend, reason: str = "operator") -> None:
        """
        Add a backend, announced as an C{"added"} change.

        :raises ValueError: the pool already has a backend of that name.
        """

    def remove(name: str, reason: str = "operator") -> Backend:
        """
        Remove a backend in maintenance or with no sessions, announced as a
        C{"removed"} change.  What is open to it finishes; clients bound to
        it are balanced again.

        :returns: the removed backend.
        :raises KeyError: no backend has that name.
        :raises stickyproxy.BackendInUse: it holds sessions and is not in
            maintenance (drain it first).
        """

    def set_weight(name: str, weight: int, reason: str = "operator") -> None:
        """
        Change a backend's weight, announced as a C{"weight"} change (when
        it differs).  Weight 0 keeps its bound clients and gives it no new
        ones.

        :raises KeyError: no backend has that name.
        :raises ValueError: C{weight} is not an integer >= 0.
        """


class IBalancer(Interface):
    """
    Picks a backend for a client that has no binding (or lost it).
    """

    name = Attribute("str: the balancer's configured name, e.g. C{'roundrobin'}")

    def choose(candidates: Sequence[Backend], key: bytes) -> Backend | None:
        """
        Pick one backend.

        :param candidates: the backends allowed for this pick, without
            duplicates; may be empty.
        :param key: bytes identifying the client (its address for L4), used
            by hashing balancers and ignored by the others.
        :returns: one of C{candidates}, or C{None} when it is empty.
        """

    def backend_changed(change: StateChange) -> None:
        """
        Follow a change in the pool (the pool calls this before its other
        observers): a balancer that keeps something per backend drops or
        resets it when a backend is C{"added"}, C{"removed"} or changes
        C{"weight"}.
        """


class IStickTable(Interface):
    """
    Learned bindings from a key to a backend name, with idle expiry and a
    size bound.  A binding that is I{held} (it has open connections) does
    not expire; its idle time starts when the last hold is released.

    A table may keep its bindings in another process (a shared store, for
    several proxies).  It must never block the reactor: writes return at
    once and reach the store in the background (kept locally, and written
    back later, while the store is away), and L{get} answers from what the
    table knows locally whenever it can, returning a L{Deferred} only when
    it must ask the store.
    """

    def get(key: bytes) -> str | None | Deferred[str | None]:
        """
        Look a key up, refreshing its idle time.

        :returns: the backend name bound to C{key}, or C{None} when unknown
            or expired: at once when the table knows (an in-memory table
            always does), else a L{Deferred} that fires with it when the
            store answers.  The caller may cancel that L{Deferred} (it
            stopped waiting, or the client left); it may fail (the store
            was lost meanwhile), which the caller takes as "unknown".
        """

    def bind(key: bytes, backend: str) -> None:
        """
        Bind C{key} to C{backend} (replacing any earlier binding) and hold it
        once.  May evict the least recently used binding to stay in bounds.
        """

    def refresh(key: bytes, backend: str) -> None:
        """
        If C{key} is bound, bind it to C{backend} (it may have moved) and
        restart its idle time, without taking a hold.  An unknown key stays
        unknown: a shared table decides this in the store, not on what it
        happens to know locally.
        """

    def release(key: bytes) -> None:
        """
        Drop one hold taken by L{bind}; the idle clock starts at zero holds.
        Releasing an unknown key does nothing.
        """

    def forget(key: bytes) -> None:
        """
        Remove the binding of C{key} now (its session ended), held or not.
        Forgetting an unknown key does nothing.
        """

    def count(backend: str) -> int:
        """
        :returns: how many live bindings name C{backend} (its sticky
            sessions, as far as this table knows: a shared table may answer
            with the count it last read from its store).
        """

    def __len__() -> int:
        """
        :returns: how many bindings are stored (expired ones may linger
            until the next sweep; for a shared table, those it holds
            locally).
        """


class ISharedStore(Interface):
    """
    The proxy's one connection to a store it shares with other proxies
    (Redis): learned bindings, admin states and session counts go through
    it.  It reconnects by itself; while it is down, every call fails at
    once, so nothing ever waits on a store that is not there.
    """

    up = Attribute("bool: whether the store is connected now")
    timeout = Attribute(
        "float: the longest a request may wait on the store, in seconds; "
        "who asks it on a request's path bounds the wait with this"
    )

    def key(*parts: str) -> str:
        """
        :returns: C{parts} joined with C{":"} under the store's prefix: the
            name of a key or channel of this proxy's configuration.
        """

    def call(command: str, *args: object) -> Deferred[Any]:
        """
        Send one command (C{"GET"}, C{"SET"}, ...).

        :returns: a L{Deferred} with the reply (bulk strings as C{bytes},
            integers as C{int}, C{None} for nil); failing at once with
            L{stickyproxy.store.StoreUnavailable} while the store is down,
            later with the server's error or the connection's loss.
        """

    def subscribe(channel: str, receive: Callable[[bytes], None]) -> None:
        """
        Call C{receive} with each message published on C{channel}, across
        reconnections (what is published while the store is down is lost:
        read the state again in a L{when_up} callback).
        """

    def publish(channel: str, message: bytes) -> Deferred[int]:
        """
        Publish C{message} on C{channel}.

        :returns: a L{Deferred} with how many subscribers got it, failing
            as L{call} does.
        """

    def when_up(callback: Callable[[], None]) -> None:
        """
        Call C{callback} each time the store is connected: the first time
        and after each loss (read the state, write back what was kept
        meanwhile); at once too if it is up now.
        """


class IPersistenceStrategy(Interface):
    """
    Decides which backend a client is already bound to, and records the
    binding once a backend has served it.
    """

    name = Attribute("str: the registry name of the strategy that made this")

    def lookup(
        context: IRoutingContext,
    ) -> Backend | None | Deferred[Backend | None]:
        """
        Find the backend the client is bound to.

        It may return a backend that is down or in maintenance: the router,
        not the strategy, decides whether the binding is honoured.  Every
        strategy of a chain is asked, even after an earlier one knew the
        client, because an HTTP strategy also takes its own data off the
        request here (its cookie, a route prefix) before it is forwarded:
        whatever it changes on the context, it changes before returning.

        :returns: the bound backend, or C{None} when the client is not
            bound; or, only when the answer is in a store that must be
            asked (an L{IStickTable} that returned a L{Deferred}), a
            L{Deferred} firing with one of those.  The router waits for it
            a bounded time (the frontend's C{persistence_timeout}), then
            cancels it and routes as if it had answered C{None}; a failure
            counts as C{None} too.
        """

    def persist(context: IRoutingContext, backend: Backend) -> None:
        """
        Record that C{backend} now serves the client (write a table entry,
        set a cookie).  Called once per connection (L4, once connected) or
        request (L7, once the response head arrived: an HTTP context then
        carries the response, whose headers may be changed here).
        """

    def release(context: IRoutingContext, backend: Backend) -> None:
        """
        The connection or request recorded by L{persist} has ended (called
        only after L{persist}).
        """


class IListableStickTable(IStickTable):
    """
    An L{IStickTable} that can show and drop all its bindings: what the
    admin API needs to list a frontend's table and clear it.  Optional: a
    table without it is simply not listed.
    """

    def entries() -> Iterator[TableEntry]:
        """
        :returns: the live bindings (none expired), least recently used
            first.  For a shared table, those it knows locally.
        """

    def clear() -> None:
        """
        Forget every binding now, held or not (their clients are balanced
        afresh on their next request).
        """


class IStickTableStrategy(IPersistenceStrategy):
    """
    A strategy that learns its bindings in a stick table, and shows it, so
    that operators can list and clear it (C{GET} and C{DELETE}
    C{/api/frontends/NAME/table}).  Optional: strategies without a table
    (cookies, hashes) do not provide it.
    """

    table = Attribute("IStickTable: where the strategy keeps its bindings")

    def key_text(key: bytes) -> str:
        """
        :returns: a key of the table as an operator reads it (an address,
            a session id).
        """

    def key_bytes(text: str) -> bytes:
        """
        The key an operator wrote, as the table holds it: the inverse of
        L{key_text}.

        :raises ValueError: C{text} cannot be a key of this strategy.
        """


class IPersistenceStrategyFactory(Interface):
    """
    A named maker of L{IPersistenceStrategy} providers: what a plugin ships.

    Providers must also provide L{twisted.plugin.IPlugin} and live in a
    module under C{twisted/plugins/}.
    """

    name = Attribute(
        "str: the unique, lowercase name configs use (C{strategy = 'name'})"
    )
    modes = Attribute(
        "frozenset[str]: the frontend modes it fits, from C{'tcp'} and C{'http'}"
    )
    description = Attribute("str: one line that says what it keys on")

    def build(
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
    ) -> IPersistenceStrategy:
        """
        Make a strategy for one frontend.

        :param options: the strategy's table from the config, without the
            C{strategy} key.
        :param pool: the pool the frontend sends clients to.
        :param reactor: the clock all expiry must use.
        :param path: the config key path of C{options}, for error messages.
        :raises stickyproxy.ConfigError: an option is unknown or invalid
            (L{stickyproxy.OptionReader} produces these).
        :returns: a new strategy.
        """


class IStickTableStore(Interface):
    """
    Where one frontend's strategies keep stick tables that several proxies
    share (C{store = "redis"} on a table): a binding one proxy learns is
    honoured by the others.
    """

    def table(name: str, timeout: float, size: int) -> IListableStickTable:
        """
        A shared table for the strategy called C{name} (its keys are this
        frontend's and this name's), whose bindings expire after C{timeout}
        idle seconds, and of which at most C{size} are kept locally.
        """


class IProxySecrets(Interface):
    """
    The proxy's own secret, from which strategies derive the keys they
    sign with when the configuration gives them none.

    L{stickyproxy.service.ProxyService} keeps it in a state file, made once
    and read on every later start, so that values signed with it survive
    restarts, and every proxy that shares the file agrees.
    """

    location = Attribute("str: where the secret is kept, for messages")

    def key(purpose: bytes) -> bytes:
        """
        A key for one purpose (a strategy and its cookie, say
        C{b"cookie\0STICKY"}): the same for the same purpose on every
        start and every proxy sharing the secret; unrelated to the key of
        any other purpose, so two strategies never share a signing key.

        :returns: 32 bytes.
        :raises stickyproxy.ConfigError: the secret cannot be read or made
            (the error names its file and what was expected).
        """


class IKeyedStrategyFactory(IPersistenceStrategyFactory):
    """
    An L{IPersistenceStrategyFactory} whose strategies sign or key what
    they issue, and so need a secret even when their options give none.

    L{stickyproxy.service.ProxyService} calls L{build_keyed} instead of
    C{build} on factories that provide this; C{build} stays, for callers
    that have no proxy secrets (its values then last one process).
    """

    def build_keyed(
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
        secrets: IProxySecrets,
    ) -> IPersistenceStrategy:
        """
        Like C{build}, with the proxy's secrets to derive keys from when the
        options configure none.
        """


class IStoreStrategyFactory(IKeyedStrategyFactory):
    """
    An L{IKeyedStrategyFactory} whose strategies may keep what they learn
    in the store the proxy shares with others (C{store = "redis"}).

    L{stickyproxy.service.ProxyService} calls L{build_stored} instead of
    C{build_keyed} on factories that provide this.
    """

    def build_stored(
        options: Mapping[str, object],
        pool: IBackendPool,
        reactor: IReactorTime,
        path: str,
        secrets: IProxySecrets,
        tables: IStickTableStore | None,
    ) -> IPersistenceStrategy:
        """
        Like C{build_keyed}, with where the frontend's shared tables are
        kept, or C{None} when the proxy has no store (C{[store]}): a table
        that asks for one is then a L{stickyproxy.ConfigError}.
        """


class IPassiveHealth(Interface):
    """
    What a pool tells health tracking about live traffic.
    """

    def connect_failed(backend: Backend, reason: str) -> None:
        """
        A connection to C{backend} could not be made (refused, timed out).
        """

    def connect_succeeded(backend: Backend) -> None:
        """
        A connection to C{backend} was made.
        """

    def response_status(backend: Backend, status: int) -> None:
        """
        C{backend} answered an HTTP request with C{status}.
        """


class IHealthProbe(Interface):
    """
    Checks whether one backend is alive right now.
    """

    def check(backend: Backend) -> Deferred[None]:
        """
        Probe C{backend} once.

        :returns: a Deferred that fires with C{None} when the backend
            passes, or fails (with L{ProbeFailed} or a connection error)
            when it does not.  Cancelling it abandons the probe.
        """


class IResponseReceiver(Interface):
    """
    What a backend connection reports to the exchange it is serving.
    """

    def response_head(
        status: int, headers: list[tuple[bytes, bytes]], body: str
    ) -> None:
        """
        The head of a response (C{status} may be 1xx: an interim one), its
        hop-by-hop headers (and those named in C{Connection}) removed.

        :param body: how the body is framed: C{"none"}, C{"length"},
            C{"chunked"} or C{"close"} (read until the connection closes).
        """

    def response_body(data: bytes) -> None:
        """
        Some of the response body, unframed.
        """

    def response_complete() -> None:
        """
        The response is over.
        """

    def response_failed(reason: str) -> None:
        """
        The backend broke off or sent something that is not HTTP, before
        the response was complete.
        """

    def response_upgraded(rest: bytes) -> None:
        """
        The backend switched protocols (101); C{rest} is what followed.
        """


class IProxyEvents(Interface):
    """
    Everything that happens in the proxy, published once: the access log,
    metrics and dashboards subscribe to it; no protocol knows them.

    Subscribers are called synchronously, on the reactor thread, and must
    not block.  One that raises is logged and does not stop the others.
    """

    def request_finished(event: RequestFinished) -> None:
        """
        An HTTP request is over (served, refused or abandoned).
        """

    def connection_opened(event: ConnectionOpened) -> None:
        """
        An L4 client connection was spliced to its backend.
        """

    def connection_closed(event: ConnectionClosed) -> None:
        """
        An L4 connection opened before is over.
        """

    def backend_changed(change: StateChange) -> None:
        """
        A backend's state changed (health, admin state, and runtime
        changes to its pool).
        """

    def probe_ran(event: ProbeRan) -> None:
        """
        An active health probe finished.
        """
