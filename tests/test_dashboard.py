"""
Tests for L{stickyproxy.admin._dashboard}: the dashboard page at C{/} of the
admin listener, rendered from the objects the JSON API returns.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from html.parser import HTMLParser
from importlib.resources import files
from typing import Any

import attrs

from twisted.internet.testing import StringTransport
from twisted.web.server import Site

from stickyproxy.admin._dashboard import (
    DashboardResource,
    Snapshot,
    page,
    render_page,
)
from stickyproxy.model import AdminState

from tests._base import TestCase
from tests.test_admin import TOKEN, AdminTestCase

#: The void elements of HTML: they have no end tag.
VOID = {"meta", "input", "br", "hr", "img", "link", "source", "wbr", "col"}


@attrs.define
class Element:
    """
    One element of a parsed page.
    """

    tag: str
    attrs: dict[str, str]
    children: list[Element | str] = attrs.field(factory=list)

    @property
    def text(self) -> str:
        return "".join(
            c if isinstance(c, str) else c.text for c in self.children
        ).strip()

    def walk(self) -> Iterator[Element]:
        yield self
        for child in self.children:
            if isinstance(child, Element):
                yield from child.walk()

    def find(self, **wanted: str) -> list[Element]:
        """
        The elements below (and including) this one with every attribute in
        C{wanted} (C{tag} for the tag name, C{data_x} for C{data-x}).
        """
        tag = wanted.pop("tag", None)
        wanted = {k.replace("_", "-"): v for k, v in wanted.items()}
        return [
            e
            for e in self.walk()
            if (tag is None or e.tag == tag)
            and all(e.attrs.get(k) == v for k, v in wanted.items())
        ]

    def one(self, **wanted: str) -> Element:
        found = self.find(**wanted)
        assert len(found) == 1, (wanted, found)
        return found[0]

    def field(self, name: str) -> str:
        return self.one(data_field=name).text


class _Parser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in VOID:
            self.stack.append(element)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID:
            return
        assert self.stack[-1].tag == tag, (tag, self.stack[-1].tag)
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html: bytes) -> Element:
    """
    Parse a page, checking that every element is closed where it opened.
    """
    parser = _Parser()
    parser.feed(html.decode("utf-8"))
    parser.close()
    assert parser.stack == [parser.root], parser.stack
    return parser.root


def backend(pool: str, name: str, **changes: Any) -> dict[str, Any]:
    """
    A backend's object as C{GET /api/backends} returns it.
    """
    found: dict[str, Any] = {
        "pool": pool,
        "name": name,
        "address": "127.0.0.1:8001",
        "state": "up",
        "health": {
            "state": "up",
            "probe": {"ok": True, "reason": "HTTP 200", "time": "2026-11-30T20:15:02Z"},
        },
        "admin_state": "ready",
        "weight": 1,
        "active": 3,
        "sessions": 12,
        "traffic": {
            "requests": 1234,
            "errors": 5,
            "connections": 40,
            "outcomes": {"hit": 1000, "new": 200, "redispatch": 30, "invalid": 4},
        },
    }
    found.update(changes)
    return found


def snapshot(**changes: Any) -> Snapshot:
    """
    Two frontends on two pools; one backend down, one draining, one in
    maint.
    """
    values: dict[str, Any] = {
        "frontends": [
            {
                "name": "www",
                "mode": "http",
                "listen": "tcp:8080",
                "pool": "web",
                "strategies": ["cookie"],
            },
            {
                "name": "db",
                "mode": "tcp",
                "listen": "tcp:5433",
                "pool": "sql",
                "strategies": [],
            },
        ],
        "pools": [
            {"name": "web", "balance": "roundrobin", "backends": ["b1", "b2", "b3"]},
            {"name": "sql", "balance": "leastconn", "backends": ["s1"]},
        ],
        "backends": [
            backend("web", "b1"),
            backend(
                "web",
                "b2",
                state="down",
                health={"state": "down", "probe": None},
            ),
            backend(
                "web",
                "b3",
                admin_state="drain",
                sessions=7,
                drain={"sessions_left": 7, "deadline": "2026-11-30T20:25:00Z"},
            ),
            backend("sql", "s1", admin_state="maint", weight=0),
        ],
    }
    values.update(changes)
    return Snapshot(**values)


class RenderPageTests(TestCase):
    """
    The page lists everything the API does, with its state, before any
    script runs.
    """

    def test_every_frontend(self) -> None:
        """
        Each frontend has a row with its mode, listener, pool and
        strategies.
        """
        root = parse(render_page(snapshot()))
        www = root.one(tag="tr", data_frontend="www")
        self.assertEqual(
            [www.field(f) for f in ("mode", "listen", "pool", "strategies")],
            ["http", "tcp:8080", "web", "cookie"],
        )
        db = root.one(tag="tr", data_frontend="db")
        self.assertEqual(db.field("strategies"), "none")

    def test_every_pool(self) -> None:
        """
        Each pool has a section, in the API's order, with its balancer, the
        frontends using it and a summary of its backends' states.
        """
        root = parse(render_page(snapshot()))
        sections = root.find(tag="section", **{"class": "pool"})
        self.assertEqual([s.attrs["data-pool"] for s in sections], ["web", "sql"])
        web = sections[0]
        self.assertEqual(web.field("balance"), "roundrobin")
        self.assertIn("used by www", web.one(tag="p", **{"class": "meta"}).text)
        self.assertEqual(web.field("summary"), "2 of 3 up, 1 draining")
        self.assertEqual(sections[1].field("summary"), "1 of 1 up, 1 in maint")

    def test_panic(self) -> None:
        """
        A pool routing in panic (health ignored) says so in its heading;
        the others hide the word.
        """
        pools = [
            {"name": "web", "balance": "roundrobin", "backends": [], "panic": True},
            {"name": "sql", "balance": "leastconn", "backends": [], "panic": False},
        ]
        root = parse(render_page(snapshot(pools=pools)))
        web, sql = (root.one(tag="section", data_pool=p) for p in ("web", "sql"))
        self.assertNotIn("hidden", web.one(data_field="panic").attrs)
        self.assertIn("hidden", sql.one(data_field="panic").attrs)

    def test_refused(self) -> None:
        """
        A pool whose frontends had requests that no backend could take says
        how many; the others hide the count.
        """
        pools = [
            {"name": "web", "balance": "roundrobin", "backends": [], "no_backend": 3},
            {"name": "sql", "balance": "leastconn", "backends": [], "no_backend": 0},
        ]
        root = parse(render_page(snapshot(pools=pools)))
        web, sql = (root.one(tag="section", data_pool=p) for p in ("web", "sql"))
        refused = web.one(data_field="no_backend")
        self.assertNotIn("hidden", refused.attrs)
        self.assertEqual(refused.text, "· 3 refused: no backend")
        self.assertIn("hidden", sql.one(data_field="no_backend").attrs)

    def test_links(self) -> None:
        """
        The page links to the JSON API and the metrics, on the same host.
        """
        root = parse(render_page(snapshot()))
        self.assertEqual(
            [a.attrs["href"] for a in root.find(tag="a")], ["api/backends", "metrics"]
        )

    def test_every_backend(self) -> None:
        """
        Each backend has a card in its pool's section showing its state,
        health, admin state, weight, connections, sessions and outcomes.
        """
        root = parse(render_page(snapshot()))
        cards = {
            (c.attrs["data-pool"], c.attrs["data-backend"]): c
            for c in root.find(tag="article")
        }
        self.assertEqual(
            list(cards), [("web", "b1"), ("web", "b2"), ("web", "b3"), ("sql", "s1")]
        )
        for (pool, _), card in cards.items():
            section = root.one(tag="section", data_pool=pool)
            self.assertIn(card, list(section.walk()))
        b1 = cards["web", "b1"]
        self.assertEqual(
            [
                b1.field(f)
                for f in (
                    "state",
                    "admin_state",
                    "health",
                    "probe",
                    "active",
                    "sessions",
                    "weight",
                )
            ],
            ["up", "ready", "up", "· HTTP 200", "3", "12", "1"],
        )
        self.assertEqual(
            [b1.field(o) for o in ("hit", "new", "redispatch", "invalid")],
            ["1000", "200", "30", "4"],
        )
        b2 = cards["web", "b2"]
        self.assertEqual((b2.attrs["data-state"], b2.field("state")), ("down", "down"))
        self.assertEqual(b2.field("probe"), "")
        s1 = cards["sql", "s1"]
        self.assertEqual(
            (s1.attrs["data-admin"], s1.field("admin_state"), s1.field("weight")),
            ("maint", "maint", "0"),
        )

    def test_drain(self) -> None:
        """
        A draining backend shows its drain box with the sessions left and
        its deadline; the others have theirs hidden.
        """
        root = parse(render_page(snapshot()))
        b3 = root.one(tag="article", data_backend="b3")
        drain = b3.one(data_field="drain")
        self.assertNotIn("hidden", drain.attrs)
        self.assertEqual(b3.field("drain_sessions"), "7")
        self.assertEqual(b3.field("drain_time"), "2026-11-30T20:25:00Z")
        self.assertEqual(len(drain.find(tag="progress")), 2)
        b1 = root.one(tag="article", data_backend="b1")
        self.assertIn("hidden", b1.one(data_field="drain").attrs)

    def test_drain_begun(self) -> None:
        """
        When the API says with how many sessions the drain began, the page
        shows the sessions left out of those, as text and as a bar.
        """
        drain = {
            "sessions_left": 7,
            "deadline": None,
            "started": "2026-11-30T20:15:00Z",
            "sessions_at_start": 12,
        }
        backends = [backend("web", "b1", admin_state="drain", drain=drain)]
        card = parse(render_page(snapshot(backends=backends))).one(tag="article")
        self.assertEqual(card.field("drain_sessions"), "7 of 12")
        bar = card.one(data_field="drain_sessions_bar")
        self.assertEqual((bar.attrs["value"], bar.attrs["max"]), ("7", "12"))
        self.assertEqual(card.field("drain_time"), "none: waits for the last session")

    def test_controls(self) -> None:
        """
        Each backend has real buttons to drain, put in maint, make ready and
        set the weight, named with the backend, and labelled inputs for the
        deadline and the weight (the latter holding the current weight).
        """
        root = parse(render_page(snapshot()))
        s1 = root.one(tag="article", data_backend="s1")
        buttons = s1.find(tag="button")
        self.assertEqual(
            [(b.attrs["data-action"], b.attrs["type"]) for b in buttons],
            [
                ("drain", "button"),
                ("maint", "button"),
                ("ready", "button"),
                ("weight", "button"),
            ],
        )
        self.assertEqual(buttons[0].attrs["aria-label"], "Drain sql/s1")
        labels = s1.find(tag="label")
        self.assertEqual(
            [(label.text, label.one(tag="input").attrs["name"]) for label in labels],
            [("Deadline (s)", "deadline"), ("Weight", "weight")],
        )
        self.assertEqual(s1.one(tag="input", name="weight").attrs["value"], "0")

    def test_empty_pool(self) -> None:
        """
        A pool without backends says so.
        """
        root = parse(render_page(snapshot(backends=[])))
        web = root.one(tag="section", data_pool="web")
        self.assertEqual(web.one(tag="p", **{"class": "empty"}).text, "No backends.")
        self.assertEqual(web.field("summary"), "0 of 0 up")

    def test_token(self) -> None:
        """
        The page tells its script whether changes need the admin token.
        """
        for required, value in ((False, ""), (True, "required")):
            root = parse(render_page(snapshot(token_required=required)))
            self.assertEqual(root.one(tag="body").attrs["data-token"], value)

    def test_escaping(self) -> None:
        """
        Names, addresses and probe reasons are text, never markup: a
        backend called C{<script>...} is shown (and found by the script) by
        that very name, and adds no element.
        """
        evil = '<script>alert("x")</script>&amp;\'"'
        hostile = snapshot(
            frontends=[
                {
                    "name": evil,
                    "mode": "http",
                    "listen": evil,
                    "pool": evil,
                    "strategies": [evil],
                }
            ],
            pools=[{"name": evil, "balance": evil, "backends": [evil]}],
            backends=[
                backend(
                    evil,
                    evil,
                    address=evil,
                    health={
                        "state": evil,
                        "probe": {"ok": False, "reason": evil, "time": evil},
                    },
                )
            ],
        )
        html = render_page(hostile)
        root = parse(html)
        clean = render_page(snapshot(frontends=[], pools=[], backends=[]))
        self.assertEqual(
            len(root.find(tag="script")), len(parse(clean).find(tag="script"))
        )
        card = root.one(tag="article")
        self.assertEqual(
            (card.attrs["data-pool"], card.attrs["data-backend"]), (evil, evil)
        )
        self.assertEqual(card.one(tag="h3").text, evil)
        self.assertEqual(card.one(tag="code").text, evil)
        self.assertEqual(card.field("probe"), f"· {evil}")
        self.assertEqual(root.one(tag="tr", data_frontend=evil).field("listen"), evil)
        self.assertNotIn(b"<script>alert", html)


class PageFilesTests(TestCase):
    """
    The page's files, as shipped: everything inline, nothing from
    elsewhere.
    """

    def test_no_external_assets(self) -> None:
        """
        No URL in the page, its style or its script points to another host
        (the proxy's host may have no internet): no C{http://},
        C{https://} or C{//host} anywhere, no C{src}, C{href} or C{url()}
        but relative ones, no C{@import}.
        """
        here = files("stickyproxy.admin")
        texts = {
            name: here.joinpath(name).read_text("utf-8")
            for name in ("dashboard.html", "dashboard.css", "dashboard.js")
        }
        texts["rendered page"] = render_page(snapshot()).decode("utf-8")
        for name, text in texts.items():
            for pattern in (
                r"https?:",
                r"""(?:src|href|action)\s*=\s*["']?\s*(?:[a-z]+:)?//""",
                r"url\(\s*[\"']?\s*(?!data:)",
                r"@import",
                r"""fetch\(\s*["'`](?:[a-z]+:)?//""",
            ):
                self.assertIsNone(
                    re.search(pattern, text, re.IGNORECASE), (name, pattern)
                )

    def test_inline(self) -> None:
        """
        The page holds its style and script inline, exactly once each, and
        loads no other file.
        """
        root = parse(render_page(snapshot()))
        (style,) = root.find(tag="style")
        (script,) = root.find(tag="script")
        self.assertEqual(style.text, page().style.strip())
        self.assertEqual(script.text, page().script.strip())
        self.assertNotIn("src", script.attrs)
        self.assertEqual(root.find(tag="link"), [])

    def test_policy_allows_the_inline_code(self) -> None:
        """
        The C{Content-Security-Policy} allows exactly the page's own
        inline script and style, by hash: the browser runs them, and
        nothing else.
        """
        html = render_page(snapshot()).decode("utf-8")
        policy = page().policy
        for tag, directive in (("script", "script-src"), ("style", "style-src")):
            (inline,) = re.findall(f"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
            digest = hashlib.sha256(inline.encode("utf-8")).digest()
            expected = f"{directive} 'sha256-{base64.b64encode(digest).decode()}';"
            self.assertIn(expected, policy)
        self.assertIn("default-src 'none'", policy)
        self.assertIn("connect-src 'self'", policy)

    def test_script_stays_inline(self) -> None:
        """
        Neither the script nor the style can end its element early.
        """
        self.assertNotIn("</script", page().script.lower())
        self.assertNotIn("</style", page().style.lower())

    def test_script_parses(self) -> None:
        """
        The script is valid JavaScript (checked by Node, when installed).
        """
        node = shutil.which("node") or shutil.which("nodejs")
        if node is None:
            self.skipTest("no node to check the script with")
        path = files("stickyproxy.admin").joinpath("dashboard.js")
        done = subprocess.run(
            [node, "--check", str(path)], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(done.returncode, 0, done.stderr)


def get(resource: DashboardResource, path: bytes = b"/") -> tuple[bytes, bytes]:
    """
    Request C{path} from a site over C{resource}.

    :returns: the response head and body.
    """
    site = Site(resource)
    protocol = site.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(
        b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    head, _, body = transport.value().partition(b"\r\n\r\n")
    return head, body


class DashboardResourceTests(TestCase):
    """
    L{DashboardResource} serves the page from a fresh snapshot at every
    request.
    """

    def test_page(self) -> None:
        """
        C{GET /} answers 200 with the page as UTF-8 HTML, not cached, not
        sniffed, under the page's content security policy.
        """
        head, body = get(DashboardResource(snapshot))
        lines = head.decode("latin-1").split("\r\n")
        self.assertEqual(lines[0], "HTTP/1.1 200 OK")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        self.assertEqual(headers["content-type"], "text/html; charset=utf-8")
        self.assertEqual(headers["cache-control"], "no-store")
        self.assertEqual(headers["x-content-type-options"], "nosniff")
        self.assertEqual(headers["content-security-policy"], page().policy.lower())
        self.assertEqual(body, render_page(snapshot()))

    def test_fresh(self) -> None:
        """
        Each request reads the state anew.
        """
        states = iter(["up", "down"])

        def read() -> Snapshot:
            state = next(states)
            return snapshot(backends=[backend("web", "b1", state=state)])

        resource = DashboardResource(read)
        for expected in ("up", "down"):
            root = parse(get(resource)[1])
            self.assertEqual(root.one(tag="article").field("state"), expected)

    def test_below(self) -> None:
        """
        Paths below the page are not the page.
        """
        head, body = get(DashboardResource(snapshot), b"/x/y")
        self.assertTrue(head.startswith(b"HTTP/1.1 404 "), head)
        self.assertNotIn(b"<html", body)


class ScriptDataTests(TestCase):
    """
    The page and its script agree on the names of what the script fills.
    """

    def test_fields_known_to_the_script(self) -> None:
        """
        Every C{data-field} of the page is one the script fills in or
        reads.
        """
        root = parse(render_page(snapshot()))
        script = page().script
        fields = {e.attrs["data-field"] for e in root.find() if "data-field" in e.attrs}
        outcomes = {"hit", "new", "redispatch", "invalid"}
        for name in fields - outcomes - {f"{o}_rate" for o in outcomes}:
            self.assertIn(json.dumps(name), script.replace("'", '"'), name)


class AdminDashboardTests(AdminTestCase):
    """
    The admin site serves the dashboard at C{/}, from the API's own lists.
    """

    def page(self) -> Element:
        code, headers, body = self.request("GET", "/")
        self.assertEqual(code, 200)
        return parse(body)

    def test_index(self) -> None:
        """
        C{/} is the dashboard, listing every frontend, pool and backend of
        the running proxy.
        """
        root = self.page()
        self.assertEqual(
            [r.attrs["data-frontend"] for r in root.find(tag="tr")[1:]], ["web", "db"]
        )
        self.assertEqual(
            [s.attrs["data-pool"] for s in root.find(tag="section")[1:]],
            ["app", "spare"],
        )
        self.assertEqual(
            [
                (c.attrs["data-pool"], c.attrs["data-backend"])
                for c in root.find(tag="article")
            ],
            [("app", "a"), ("app", "b"), ("spare", "s")],
        )
        self.assertEqual(root.one(tag="body").attrs["data-token"], "")

    def test_same_as_the_api(self) -> None:
        """
        The page is rendered from exactly what the API lists.
        """
        root = self.site.resource
        snapshot = root.snapshot()
        for name in ("frontends", "pools", "backends"):
            self.assertEqual(
                json.loads(json.dumps(getattr(snapshot, name))),
                self.get(f"/api/{name}"),
            )

    def test_live(self) -> None:
        """
        Every request reads the proxy's state anew.
        """
        self.pool.set_admin_state("a", AdminState.MAINT)
        card = self.page().one(tag="article", data_backend="a")
        self.assertEqual(card.field("admin_state"), "maint")
        self.pool.drain("a")
        card = self.page().one(tag="article", data_backend="a")
        self.assertEqual(card.field("admin_state"), "drain")
        self.assertNotIn("hidden", card.one(data_field="drain").attrs)


class TokenDashboardTests(AdminDashboardTests):
    """
    With an admin token, the page tells its script to ask for it.
    """

    admin = {"token": TOKEN}

    def test_index(self) -> None:
        """
        The page says that changes need the token, and does not hold it.
        """
        code, headers, body = self.request("GET", "/")
        self.assertEqual(parse(body).one(tag="body").attrs["data-token"], "required")
        self.assertNotIn(TOKEN.encode(), body)
