// stickyproxy dashboard: follows the admin API and updates the page the
// server rendered, in place.  Plain script, no library: the page must work
// where the proxy runs, with no internet.
"use strict";
(() => {
  const POLL_MS = 1000;
  // Rates are taken over this much history, so that one quiet second does
  // not make them flicker.
  const RATE_WINDOW_MS = 10000;
  const OUTCOMES = ["hit", "new", "redispatch", "invalid"];
  const TOKEN_KEY = "stickyproxy.token";
  const DRAIN_KEY = "stickyproxy.drain.";

  const main = document.getElementById("dashboard");
  const status = document.getElementById("status");
  const updated = document.getElementById("updated");
  const dialog = document.getElementById("token-dialog");
  let tokenRequired = document.body.dataset.token === "required";
  // Traffic totals seen per backend: [{at, traffic}], oldest first.
  const samples = new Map();
  // The server's clock minus ours (from the Date header), so that drain
  // deadlines count down right even when this machine's clock is off.
  let clockOffset = 0;
  let lastUpdate = null;
  let timer = null;
  let polling = false;

  const key = (pool, name) => JSON.stringify([pool, name]);
  const serverNow = () => Date.now() + clockOffset;
  const field = (root, name) => root.querySelector(`[data-field="${name}"]`);

  function setText(root, name, text) {
    const element = field(root, name);
    if (element && element.textContent !== text) element.textContent = text;
  }

  function formatRate(rate) {
    if (rate === null) return "–";
    return rate >= 10 ? String(Math.round(rate)) : rate.toFixed(1);
  }

  function formatSeconds(seconds) {
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${String(s % 60).padStart(2, "0")} s`;
    return `${Math.floor(m / 60)} h ${String(m % 60).padStart(2, "0")} min`;
  }

  function cards() {
    const found = new Map();
    for (const card of main.querySelectorAll("article[data-backend]")) {
      found.set(key(card.dataset.pool, card.dataset.backend), card);
    }
    return found;
  }

  // What the page lists, to tell when the API lists something else.
  function structure(frontends, pools, backends) {
    return JSON.stringify([
      frontends.map(([name, pool]) => `${name}\u0000${pool}`).sort(),
      pools.slice().sort(),
      backends.slice().sort(),
    ]);
  }

  function shownStructure() {
    const all = (selector) => Array.from(main.querySelectorAll(selector));
    return structure(
      all("tr[data-frontend]").map((r) => [r.dataset.frontend, field(r, "pool").textContent]),
      all("section[data-pool]").map((s) => s.dataset.pool),
      all("article[data-backend]").map((c) => key(c.dataset.pool, c.dataset.backend)),
    );
  }

  // Take the body of a freshly rendered page: the one place markup is made.
  async function reloadBody() {
    const response = await fetch("./", { cache: "no-store" });
    if (!response.ok) throw new Error(`the page: ${response.status} ${response.statusText}`);
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("dashboard");
    if (!fresh) throw new Error("the page has no dashboard");
    tokenRequired = page.body.dataset.token === "required";
    main.replaceChildren(...Array.from(fresh.childNodes, (n) => document.adoptNode(n)));
  }

  function noteClock(response) {
    const date = Date.parse(response.headers.get("Date") || "");
    if (Number.isNaN(date)) return;
    // The header has whole seconds: the server's time is in [date, date + 1 s).
    const offset = date + 500 - Date.now();
    clockOffset = Math.abs(offset) < 1500 ? 0 : offset;
  }

  async function getJSON(path) {
    const response = await fetch(path, {
      cache: "no-store",
      headers: { Accept: "application/json" },
    });
    if (!response.ok) throw new Error(`${path}: ${response.status} ${response.statusText}`);
    noteClock(response);
    return response.json();
  }

  // Rates per second over the window, or null until there are two samples.
  function rates(id, traffic, now) {
    let history = samples.get(id) || [];
    const last = history[history.length - 1];
    // Totals that went down mean a new count (a restarted proxy): start over.
    if (last && traffic.requests < last.traffic.requests) history = [];
    history.push({ at: now, traffic });
    while (history.length > 2 && now - history[1].at >= RATE_WINDOW_MS) history.shift();
    samples.set(id, history);
    const first = history[0];
    const seconds = (now - first.at) / 1000;
    if (history.length < 2 || seconds <= 0) return null;
    const per = (a, b) => Math.max(0, a - b) / seconds;
    const result = {
      requests: per(traffic.requests, first.traffic.requests),
      errors: per(traffic.errors, first.traffic.errors),
      outcomes: {},
    };
    for (const outcome of OUTCOMES) {
      result.outcomes[outcome] = per(
        traffic.outcomes[outcome] || 0,
        first.traffic.outcomes[outcome] || 0,
      );
    }
    return result;
  }

  function showOutcomes(card, traffic, rate) {
    const recent = rate && OUTCOMES.some((o) => rate.outcomes[o] > 0);
    const shares = recent ? rate.outcomes : traffic.outcomes;
    const total = OUTCOMES.reduce((sum, o) => sum + (shares[o] || 0), 0);
    const stack = card.querySelector(".stack");
    stack.title = recent ? "persistence outcomes, last seconds" : "persistence outcomes, since start";
    for (const outcome of OUTCOMES) {
      const share = total ? (100 * (shares[outcome] || 0)) / total : 0;
      stack.querySelector(`[data-bar="${outcome}"]`).style.width = `${share}%`;
      setText(card, outcome, String(traffic.outcomes[outcome] || 0));
      const perSecond = rate ? rate.outcomes[outcome] : 0;
      setText(card, `${outcome}_rate`, perSecond > 0 ? ` · ${formatRate(perSecond)}/s` : "");
    }
  }

  // When (server time) and with how many sessions a drain began: from the
  // API, or, for a backend configured in drain (the API cannot say), as
  // this tab first saw it (kept across reloads of the page).
  function drainStart(id, drain, sessions) {
    if (drain.started != null && drain.sessions_at_start != null) {
      return { at: Date.parse(drain.started), sessions: drain.sessions_at_start };
    }
    const stored = sessionStorage.getItem(DRAIN_KEY + id);
    let begun = stored ? JSON.parse(stored) : null;
    if (!begun || begun.deadline !== drain.deadline) {
      begun = { at: serverNow(), sessions, deadline: drain.deadline };
      sessionStorage.setItem(DRAIN_KEY + id, JSON.stringify(begun));
    }
    return begun;
  }

  function showDrain(card, id, backend) {
    const box = field(card, "drain");
    const drain = backend.drain;
    if (!drain) {
      box.hidden = true;
      sessionStorage.removeItem(DRAIN_KEY + id);
      return;
    }
    box.hidden = false;
    const left = drain.sessions_left;
    const begun = drainStart(id, drain, left);
    const atStart = Math.max(begun.sessions, left);
    setText(card, "drain_sessions", atStart ? `${left} of ${atStart}` : String(left));
    const sessionsBar = field(card, "drain_sessions_bar");
    sessionsBar.max = Math.max(atStart, 1);
    sessionsBar.value = left;
    const timeBar = field(card, "drain_time_bar");
    if (drain.deadline === null) {
      setText(card, "drain_time", "none: waits for the last session");
      timeBar.hidden = true;
      return;
    }
    const deadline = Date.parse(drain.deadline);
    const remaining = (deadline - serverNow()) / 1000;
    const total = Math.max((deadline - begun.at) / 1000, 1);
    setText(
      card,
      "drain_time",
      remaining > 0 ? `${formatSeconds(remaining)} left of ${formatSeconds(total)}` : "reached",
    );
    timeBar.hidden = false;
    timeBar.max = total;
    timeBar.value = Math.min(total, Math.max(0, total - remaining));
  }

  function showBackend(card, backend, now) {
    const id = key(backend.pool, backend.name);
    card.dataset.state = backend.state;
    card.dataset.admin = backend.admin_state;
    card.classList.toggle("going", backend.health.state.startsWith("going"));
    setText(card, "state", backend.state);
    setText(card, "admin_state", backend.admin_state);
    setText(card, "health", backend.health.state);
    const probe = backend.health.probe;
    setText(card, "probe", probe ? ` · ${probe.reason}` : "");
    field(card, "probe").title = probe
      ? `last probe ${probe.ok ? "passed" : "failed"} at ${probe.time}`
      : "";
    setText(card, "active", String(backend.active));
    setText(card, "sessions", String(backend.sessions));
    setText(card, "weight", String(backend.weight));
    const weight = card.querySelector('input[name="weight"]');
    if (document.activeElement !== weight && weight.value === weight.defaultValue) {
      weight.defaultValue = weight.value = String(backend.weight);
    }
    const rate = rates(id, backend.traffic, now);
    setText(card, "request_rate", formatRate(rate && rate.requests));
    setText(card, "error_rate", formatRate(rate && rate.errors));
    card.classList.toggle("erring", Boolean(rate && rate.errors > 0));
    showOutcomes(card, backend.traffic, rate);
    showDrain(card, id, backend);
    for (const button of card.querySelectorAll("button[data-action]")) {
      const action = button.dataset.action;
      button.disabled =
        card.classList.contains("busy") ||
        ((action === "ready" || action === "maint") && action === backend.admin_state);
    }
  }

  function summary(backends) {
    const up = backends.filter((b) => b.state === "up").length;
    const words = [`${up} of ${backends.length} up`];
    for (const [state, word] of [["drain", "draining"], ["maint", "in maint"]]) {
      const count = backends.filter((b) => b.admin_state === state).length;
      if (count) words.push(`${count} ${word}`);
    }
    return words.join(", ");
  }

  function show(frontends, pools, backends) {
    const now = Date.now();
    for (const frontend of frontends) {
      const row = Array.from(main.querySelectorAll("tr[data-frontend]")).find(
        (r) => r.dataset.frontend === frontend.name,
      );
      if (!row) continue;
      setText(row, "mode", frontend.mode);
      setText(row, "listen", frontend.listen);
      setText(row, "strategies", frontend.strategies.join(", ") || "none");
    }
    for (const section of main.querySelectorAll("section[data-pool]")) {
      const pool = pools.find((p) => p.name === section.dataset.pool);
      if (pool) {
        setText(section, "balance", pool.balance);
        field(section, "panic").hidden = !pool.panic;
        field(section, "no_backend").hidden = !pool.no_backend;
        setText(section, "no_backend", ` · ${pool.no_backend} refused: no backend`);
      }
      setText(section, "summary", summary(backends.filter((b) => b.pool === section.dataset.pool)));
    }
    const shown = cards();
    for (const backend of backends) {
      const card = shown.get(key(backend.pool, backend.name));
      if (card) showBackend(card, backend, now);
    }
  }

  // The status is announced (role="status") only when it changes; the
  // time of the last update beside it is not.
  function setStatus(error) {
    const text = error ? `Not live: ${error.message}` : "Live";
    if (status.textContent !== text) status.textContent = text;
    status.className = error ? "stale" : "live";
    updated.textContent = lastUpdate
      ? `· ${error ? "last updated" : "updated"} ${lastUpdate.toLocaleTimeString()}`
      : "";
  }

  async function poll() {
    if (polling) return;
    polling = true;
    clearTimeout(timer);
    try {
      const [frontends, pools, backends] = await Promise.all(
        ["api/frontends", "api/pools", "api/backends"].map(getJSON),
      );
      const listed = structure(
        frontends.map((f) => [f.name, f.pool]),
        pools.map((p) => p.name),
        backends.map((b) => key(b.pool, b.name)),
      );
      if (listed !== shownStructure()) await reloadBody();
      show(frontends, pools, backends);
      lastUpdate = new Date();
      setStatus(null);
    } catch (error) {
      setStatus(error);
    } finally {
      polling = false;
      timer = setTimeout(poll, POLL_MS);
    }
  }

  // Changes

  function askToken() {
    return new Promise((resolve, reject) => {
      const input = dialog.querySelector('input[name="token"]');
      input.value = "";
      dialog.returnValue = "";
      dialog.addEventListener(
        "close",
        () => {
          if (dialog.returnValue === "ok" && input.value) {
            sessionStorage.setItem(TOKEN_KEY, input.value);
            resolve(input.value);
          } else {
            reject(new Error("this change needs the admin token"));
          }
        },
        { once: true },
      );
      dialog.showModal();
      input.focus();
    });
  }

  async function put(pool, name, body, retry = true) {
    let token = sessionStorage.getItem(TOKEN_KEY);
    if (tokenRequired && !token) token = await askToken();
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const path = `api/pools/${encodeURIComponent(pool)}/backends/${encodeURIComponent(name)}`;
    const response = await fetch(path, { method: "PUT", headers, body: JSON.stringify(body) });
    if (response.status === 401 && retry) {
      // No token, or a wrong one: ask (once more) and try again.
      sessionStorage.removeItem(TOKEN_KEY);
      tokenRequired = true;
      await askToken();
      return put(pool, name, body, false);
    }
    const answer = await response.json().catch(() => null);
    if (!response.ok) {
      const why = answer && answer.error ? answer.error : response.statusText;
      throw new Error(`${response.status}: ${why}`);
    }
    return answer;
  }

  // What a button asks of the API; the API judges the values.
  function change(card, action) {
    const value = (name) => {
      const input = card.querySelector(`input[name="${name}"]`);
      if (input.validity.badInput) throw new Error(`${name}: not a number`);
      return input.value.trim();
    };
    if (action === "weight") {
      const weight = value("weight");
      return { weight: weight === "" ? null : Number(weight) };
    }
    if (action === "drain") {
      const deadline = value("deadline");
      return deadline === "" ? { admin_state: "drain" } : { admin_state: "drain", deadline: Number(deadline) };
    }
    return { admin_state: action };
  }

  async function act(card, action) {
    const error = field(card, "error");
    error.textContent = "";
    card.classList.add("busy");
    for (const button of card.querySelectorAll("button")) button.disabled = true;
    try {
      const body = change(card, action);
      const backend = await put(card.dataset.pool, card.dataset.backend, body);
      if (action === "weight") {
        const input = card.querySelector('input[name="weight"]');
        input.defaultValue = input.value;
      }
      card.classList.remove("busy");
      showBackend(card, backend, Date.now());
    } catch (problem) {
      error.textContent = `Could not ${action === "weight" ? "set the weight" : action}: ${problem.message}`;
      for (const button of card.querySelectorAll("button")) button.disabled = false;
    } finally {
      card.classList.remove("busy");
      poll();
    }
  }

  main.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    const card = button && button.closest("article[data-backend]");
    if (card) act(card, button.dataset.action);
  });

  poll();
})();
