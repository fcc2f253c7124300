"""
The dashboard at C{/} of the admin listener: one page, its style and script
inline (the proxy's host may have no internet, and the page needs none).

The first response already lists every frontend, pool and backend with its
state, rendered here from the objects the JSON API returns; the script then
polls the API and updates the page in place.  When the set of frontends,
pools or backends changes (a reload, a backend added or removed) the script
fetches this page again and takes its new body, so the markup is made in
one place only: here.
"""

from __future__ import annotations

import base64
import hashlib
import string
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from importlib.resources import files
from typing import Any

import attrs

from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.template import Flattenable, Tag, flattenString, tags

#: One object of C{GET /api/frontends}, C{/api/pools} or C{/api/backends}.
APIObject = Mapping[str, Any]

#: The persistence outcomes, in the order the page shows them.
OUTCOMES = ("hit", "new", "redispatch", "invalid")

#: The administrative states, each with its button's label.
ACTIONS = (("drain", "Drain"), ("maint", "Maint"), ("ready", "Ready"))

#: The deadline the drain button proposes, in seconds.
DEFAULT_DEADLINE = 600


@attrs.frozen
class Snapshot:
    """
    What the page shows, as the API reports it at the moment of the request.

    :ivar frontends: the objects of C{GET /api/frontends}.
    :ivar pools: the objects of C{GET /api/pools}.
    :ivar backends: the objects of C{GET /api/backends}.
    :ivar token_required: whether changes need the C{[admin] token}, so
        that the page asks for it before the first one.
    """

    frontends: Sequence[APIObject]
    pools: Sequence[APIObject]
    backends: Sequence[APIObject]
    token_required: bool = False


@attrs.frozen
class Page:
    """
    The page's three files, read once from the package.

    :ivar shell: the HTML, with C{$style}, C{$script}, C{$body} and C{$token}
        to fill in.
    """

    shell: string.Template
    style: str
    script: str

    @property
    def policy(self) -> str:
        """
        :returns: the C{Content-Security-Policy}: the page runs its own
            inline script and style (by their hashes) and talks only to the
            host it came from, so even markup that escaped escaping could
            neither run nor send anything anywhere.
        """
        return (
            "default-src 'none'; "
            f"script-src '{_sha256(self.script)}'; "
            f"style-src '{_sha256(self.style)}'; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'"
        )


def _sha256(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "sha256-" + base64.b64encode(digest).decode("ascii")


@cache
def page() -> Page:
    """
    :returns: the page's files, shipped as package data beside this module.
    """
    here = files(__package__ or "stickyproxy.admin")

    def read(name: str) -> str:
        return here.joinpath(name).read_text(encoding="utf-8")

    return Page(
        shell=string.Template(read("dashboard.html")),
        style=read("dashboard.css"),
        script=read("dashboard.js"),
    )


def render_page(snapshot: Snapshot) -> bytes:
    """
    The whole dashboard page for C{snapshot}, every value from it escaped.
    """
    html = page().shell.substitute(
        style=page().style,
        script=page().script,
        body=_flatten(_body(snapshot)).decode("utf-8"),
        token="required" if snapshot.token_required else "",
    )
    return html.encode("utf-8")


def _flatten(root: Flattenable) -> bytes:
    """
    Flatten markup that holds no Deferred, which Twisted does at once.
    """
    done: list[bytes | Failure] = []
    flattenString(None, root).addBoth(done.append)
    (result,) = done
    if isinstance(result, Failure):
        result.raiseException()
    assert isinstance(result, bytes)
    return result


def _field(
    name: str, *children: Flattenable, tag: str = "span", **attributes: str
) -> Tag:
    """
    An element the script fills in: it finds it by C{data-field}.
    """
    return Tag(tag)(*children, **{"data-field": name}, **attributes)


def _body(snapshot: Snapshot) -> list[Tag]:
    by_pool: dict[str, list[APIObject]] = {}
    for backend in snapshot.backends:
        by_pool.setdefault(backend["pool"], []).append(backend)
    return [
        _frontends(snapshot.frontends),
        *(
            _pool(n, pool, by_pool.get(pool["name"], []), snapshot.frontends)
            for n, pool in enumerate(snapshot.pools)
        ),
    ]


def _frontends(frontends: Sequence[APIObject]) -> Tag:
    head = tags.tr(
        *(
            tags.th(title, scope="col")
            for title in ("Frontend", "Mode", "Listens on", "Pool", "Persistence")
        )
    )
    rows = [
        tags.tr(**{"data-frontend": frontend["name"]})(
            tags.th(frontend["name"], scope="row"),
            tags.td(_field("mode", frontend["mode"])),
            tags.td(_field("listen", frontend["listen"], tag="code")),
            tags.td(_field("pool", frontend["pool"])),
            tags.td(_field("strategies", ", ".join(frontend["strategies"]) or "none")),
        )
        for frontend in frontends
    ]
    return tags.section(class_="frontends", **{"aria-labelledby": "frontends"})(
        tags.h2("Frontends", id="frontends"),
        tags.div(class_="scroll")(tags.table(tags.thead(head), tags.tbody(*rows))),
    )


def _pool(
    number: int,
    pool: APIObject,
    backends: Sequence[APIObject],
    frontends: Iterable[APIObject],
) -> Tag:
    heading = f"pool-{number}"
    users = [f["name"] for f in frontends if f["pool"] == pool["name"]]
    return tags.section(
        class_="pool", **{"data-pool": pool["name"], "aria-labelledby": heading}
    )(
        tags.h2(id=heading)(
            "Pool ",
            tags.q(pool["name"]),
            _field(
                "panic",
                "panic",
                class_="badge panic",
                title="no backend is up: health is ignored (fail_open, passive_panic)",
                **({} if pool.get("panic") else {"hidden": ""}),
            ),
        ),
        tags.p(class_="meta")(
            "balance ",
            _field("balance", pool["balance"]),
            " · used by ",
            ", ".join(users) or "no frontend",
            " · ",
            _field("summary", summary(backends)),
            _field(
                "no_backend",
                refused(pool.get("no_backend", 0)),
                class_="refused",
                **({} if pool.get("no_backend") else {"hidden": ""}),
            ),
        ),
        tags.div(class_="backends")(
            *(_backend(f"{heading}-{n}", b) for n, b in enumerate(backends))
        )
        if backends
        else tags.p("No backends.", class_="empty"),
    )


def refused(count: int) -> str:
    """
    How many requests of a pool's frontends got no backend, in words.
    """
    return f" · {count} refused: no backend"


def summary(backends: Sequence[APIObject]) -> str:
    """
    A pool's state in a few words, e.g. C{"2 of 3 up, 1 draining"}.
    """
    up = sum(b["state"] == "up" for b in backends)
    words = [f"{up} of {len(backends)} up"]
    for state, word in (("drain", "draining"), ("maint", "in maint")):
        count = sum(b["admin_state"] == state for b in backends)
        if count:
            words.append(f"{count} {word}")
    return ", ".join(words)


def _backend(ident: str, backend: APIObject) -> Tag:
    name, pool = backend["name"], backend["pool"]
    who = f"{pool}/{name}"
    health = backend["health"]
    probe = health.get("probe")
    traffic = backend["traffic"]
    drain = backend.get("drain")
    return tags.article(
        class_="backend",
        **{
            "data-pool": pool,
            "data-backend": name,
            "data-state": backend["state"],
            "data-admin": backend["admin_state"],
            "aria-labelledby": ident,
        },
    )(
        tags.header(
            tags.h3(name, id=ident),
            tags.code(backend["address"], class_="address"),
        ),
        tags.p(class_="badges")(
            _field("state", backend["state"], class_="badge state"),
            " ",
            _field("admin_state", backend["admin_state"], class_="badge admin"),
        ),
        tags.p(class_="health")(
            "health ",
            _field("health", health["state"]),
            _field(
                "probe",
                "" if probe is None else f" · {probe['reason']}",
                title="" if probe is None else f"last probe: {probe['time']}",
            ),
        ),
        tags.dl(class_="numbers")(
            _number("Requests", _field("request_rate", "–"), "/s"),
            _number("Errors", _field("error_rate", "–"), "/s"),
            _number("Open conns", _field("active", str(backend["active"]))),
            _number("Sessions", _field("sessions", str(backend["sessions"]))),
            _number("Weight", _field("weight", str(backend["weight"]))),
        ),
        _outcomes(traffic["outcomes"]),
        _drain(who, drain),
        _controls(who, backend),
        _field("error", tag="p", class_="error", role="alert"),
    )


def _number(title: str, value: Tag, unit: str = "") -> Tag:
    return tags.div(tags.dt(title), tags.dd(value, unit))


def _outcomes(outcomes: Mapping[str, int]) -> Tag:
    return tags.div(class_="outcomes")(
        tags.p("Persistence", class_="label"),
        tags.div(class_="stack", **{"aria-hidden": "true"})(
            *(
                tags.span(class_=outcome, **{"data-bar": outcome})
                for outcome in OUTCOMES
            )
        ),
        tags.ul(class_="legend")(
            *(
                tags.li(class_=outcome)(
                    outcome,
                    " ",
                    _field(outcome, str(outcomes.get(outcome, 0))),
                    _field(f"{outcome}_rate", "", class_="rate"),
                )
                for outcome in OUTCOMES
            )
        ),
    )


def _drain(who: str, drain: APIObject | None) -> Tag:
    """
    A backend's drain progress, hidden when it does not drain.  The sessions
    bar is filled here when the API says how the drain began; the time bar
    needs the browser's clock, so the script fills it.
    """
    left = None if drain is None else drain["sessions_left"]
    at_start = None if drain is None else drain.get("sessions_at_start")
    sessions = "" if left is None else str(left)
    bar = {"max": "1"}
    if left is not None and at_start is not None:
        top = max(at_start, left)
        sessions = f"{left} of {top}" if top else sessions
        bar = {"value": str(left), "max": str(max(top, 1))}
    deadline = None if drain is None else drain["deadline"]
    section = tags.div(class_="draining", **{"data-field": "drain"})(
        tags.p(class_="label")("Draining"),
        tags.div(class_="progress")(
            tags.span("Sessions left ", _field("drain_sessions", sessions)),
            _field(
                "drain_sessions_bar",
                tag="progress",
                **bar,
                **{"aria-label": f"sessions left on {who}"},
            ),
        ),
        tags.div(class_="progress")(
            tags.span(
                "Deadline ",
                _field("drain_time", deadline or "none: waits for the last session"),
            ),
            _field(
                "drain_time_bar",
                tag="progress",
                max="1",
                **{"aria-label": f"time to the drain deadline of {who}"},
            ),
        ),
    )
    if drain is None:
        section.attributes["hidden"] = ""
    return section


def _controls(who: str, backend: APIObject) -> Tag:
    def button(action: str, label: str) -> Tag:
        return tags.button(
            label,
            type="button",
            class_=f"action {action}",
            **{"data-action": action, "aria-label": f"{label} {who}"},
        )

    def number(label: str, name: str, value: object, **more: str) -> Tag:
        return tags.label(
            f"{label} ",
            tags.input(type="number", name=name, min="0", step="1", value=str(value))(
                **more
            ),
        )

    return tags.div(class_="controls")(
        tags.div(class_="row")(
            number("Deadline (s)", "deadline", DEFAULT_DEADLINE, placeholder="none"),
            button(*ACTIONS[0]),
        ),
        tags.div(class_="row")(*(button(*action) for action in ACTIONS[1:])),
        tags.div(class_="row")(
            number("Weight", "weight", backend["weight"]),
            button("weight", "Set weight"),
        ),
    )


class DashboardResource(Resource):
    """
    Serves the dashboard page, from a fresh snapshot at every request.
    """

    isLeaf = True

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        """
        :param snapshot: reads the proxy's live state, as the API reports it.
        """
        super().__init__()
        self._snapshot = snapshot

    def render_GET(self, request: Request) -> bytes:
        if request.postpath not in ([], [b""]):
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"Not found.\n"
        body = render_page(self._snapshot())
        for name, value in (
            ("content-type", "text/html; charset=utf-8"),
            ("content-security-policy", page().policy),
            ("cache-control", "no-store"),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
        ):
            request.setHeader(name, value)
        return body
