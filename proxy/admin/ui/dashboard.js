// sluice dashboard: renders the frames of /v1/dashboard/stream (Server-Sent
// Events, one JSON frame a second and at each pool transition). Every value
// from the server is shown with textContent: names and errors come from
// Consul and are untrusted.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const setText = (e, t) => { if (e.textContent !== t) e.textContent = t; };
  const setClass = (e, c) => { if (e.className !== c) e.className = c; };
  const dash = "—";

  const fmtRate = (v) => v == null ? dash : v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
  const fmtPct = (v) => v == null ? dash : (v * 100).toFixed(v > 0 && v < 0.001 ? 3 : 1) + "%";
  const fmtLat = (s) => s == null ? dash : s < 1 ? (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms" : s.toFixed(2) + " s";
  const fmtAge = (s) => {
    if (s == null) return dash;
    s = Math.max(0, Math.round(s));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  };
  const fmtClock = (iso) => {
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleTimeString([], { hour12: false });
  };
  const fmtWeight = (w) => Number.isInteger(w) ? String(w) : w.toFixed(1);

  let last = null;        // the last frame
  let lastAt = 0;         // browser time it arrived
  const services = new Map(); // name -> {section, tbody, rows: Map(id -> row)}
  let sectionSeq = 0;         // for unique heading IDs

  // ---- connection ---------------------------------------------------------
  const conn = $("conn");
  function setConn(state, text) {
    setClass(conn, "pill pill-" + state);
    setText(conn, text);
  }
  // EventSource reconnects by itself after a network error (the server's
  // "retry: 1000"), but gives up for good on an answer other than 200
  // (503 while every stream is taken, an error from a proxy in between):
  // then the page opens a new one, after 1 s doubling up to 10 s.
  let backoff = 1000;
  function connect() {
    const es = new EventSource("/v1/dashboard/stream");
    es.onopen = () => setConn("live", "live");
    es.onmessage = (m) => {
      let f;
      try { f = JSON.parse(m.data); } catch (e) { return; }
      last = f;
      lastAt = Date.now();
      backoff = 1000;
      setConn("live", "live");
      render(f);
    };
    es.onerror = () => {
      setConn("down", "reconnecting…");
      if (es.readyState === EventSource.CLOSED) {
        es.close();
        setTimeout(connect, backoff);
        backoff = Math.min(backoff * 2, 10000);
      }
    };
  }
  // Client-side only: marks a stream that went quiet.
  setInterval(() => {
    if (last && Date.now() - lastAt > 3000 && conn.textContent === "live") setConn("wait", "stale");
  }, 1000);

  // ---- filters ------------------------------------------------------------
  const filter = $("filter"), problems = $("problems");
  filter.addEventListener("input", () => last && renderServices(last));
  problems.addEventListener("change", () => last && renderServices(last));
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement !== filter && !e.ctrlKey && !e.metaKey && !e.altKey) {
      e.preventDefault();
      filter.focus();
    } else if (e.key === "Escape" && document.activeElement === filter) {
      filter.value = "";
      last && renderServices(last);
    }
  });

  // ---- rendering ----------------------------------------------------------
  function render(f) {
    renderSummary(f);
    renderTraffic(f);
    renderServices(f);
    renderEvents(f);
  }

  function card(id, cls) { setClass($(id), "card" + (cls ? " " + cls : "")); }

  function renderSummary(f) {
    const st = f.status || {};
    setText($("version"), st.version ? "version " + st.version : "");
    let total = 0, eligible = 0, consulErrs = 0, waiting = 0;
    for (const s of f.services) {
      total += s.instances.length;
      eligible += s.instances.filter((i) => i.eligible).length;
      if (s.consul_error) consulErrs++;
      if (!s.synced) waiting++;
    }
    const out = total - eligible;
    const emptySvc = f.services.filter((s) => s.synced && !s.instances.some((i) => i.eligible)).length;
    let health = "OK", hcls = "good";
    if (emptySvc > 0) { health = emptySvc + " service" + (emptySvc > 1 ? "s" : "") + " down"; hcls = "bad"; }
    else if (out > 0 || consulErrs > 0 || waiting > 0) { health = "degraded"; hcls = "warn"; }
    setText($("health"), f.services.length ? health : "no services");
    card("sum-health", hcls);
    setText($("eligible"), eligible + " / " + total);
    card("sum-eligible", total && eligible === total ? "good" : eligible === 0 && total ? "bad" : "");
    setText($("out"), String(out));
    card("sum-out", out ? "bad" : "good");
    setText($("consulerr"), String(consulErrs));
    card("sum-consul", consulErrs ? "bad" : "");

    let rps = null, errs = 0, reqs = 0;
    for (const l of f.listeners) for (const r of l.routes) {
      if (r.rps != null) {
        rps = (rps || 0) + r.rps;
        reqs += r.rps;
        if (r.error_rate != null) errs += r.error_rate * r.rps;
      }
    }
    setText($("rps"), fmtRate(rps));
    setText($("win"), f.window_seconds > 0 ? "(" + Math.round(f.window_seconds) + " s)" : "");
    const share = reqs > 0 ? errs / reqs : null;
    setText($("err"), fmtPct(share));
    card("sum-5xx", share > 0.01 ? "bad" : share > 0 ? "warn" : "");

    const lr = st.last_reload;
    let reload = st.generation ? "generation " + st.generation : dash;
    let rcls = "";
    if (lr) {
      reload += " · last reload " + lr.result + " at " + fmtClock(lr.at);
      if (lr.result !== "success") rcls = "bad";
    }
    setText($("reload"), reload);
    $("reload").title = lr && lr.diagnostics && lr.diagnostics.length ? lr.diagnostics.join("\n") : "";
    card("sum-reload", rcls);
  }

  function renderTraffic(f) {
    const tbody = $("traffic").tBodies[0];
    const rows = [];
    for (const l of f.listeners) {
      const routes = l.routes.length ? l.routes : [{ route: "", service: "" }];
      routes.forEach((r, i) => {
        const tr = el("tr");
        const name = el("td", "", i === 0 ? l.name : "");
        if (i === 0 && l.protocol === "tcp") name.append(el("span", "muted small", " tcp"));
        tr.append(name,
          el("td", "mono", r.route === "none" && r.service === "" ? "(no route)" : r.route || (l.protocol === "tcp" ? "(all)" : dash)),
          el("td", "", r.service || dash),
          el("td", "num", fmtRate(r.rps)),
          el("td", "num" + (r.error_rate > 0 ? " st-no" : ""), fmtPct(r.error_rate)),
          el("td", "num", fmtLat(r.p50)),
          el("td", "num", fmtLat(r.p99)),
          el("td", "num", i === 0 ? String(l.open_connections) : ""));
        rows.push(tr);
      });
    }
    if (!rows.length) {
      const tr = el("tr"), td = el("td", "empty", "no listeners");
      td.colSpan = 8;
      tr.append(td);
      rows.push(tr);
    }
    tbody.replaceChildren(...rows);
  }

  const columns = ["id", "addr", "weight", "consul", "probe", "ejected", "eligible", "inflight", "rps", "errors"];

  function serviceView(name) {
    let v = services.get(name);
    if (v) return v;
    const section = el("section", "service");
    section.dataset.service = name;
    const head = el("div", "svc-head");
    const h = el("h2", "", name);
    h.id = "svc-" + (++sectionSeq);
    section.setAttribute("aria-labelledby", h.id);
    const count = el("span", "count");
    const meta = el("span", "tag");
    head.append(h, count, meta);
    const alert = el("div", "alert");
    alert.setAttribute("role", "alert");
    alert.hidden = true;
    const scroll = el("div", "scroll");
    scroll.tabIndex = 0;
    scroll.setAttribute("role", "region");
    scroll.setAttribute("aria-label", "Instances of " + name);
    const table = el("table", "instances");
    const thead = el("thead"), hr = el("tr");
    for (const [t, num] of [["Instance"], ["Address"], ["Weight", 1], ["Consul"], ["Probe"], ["Ejected"], ["Eligible"],
      ["In-flight", 1], ["Req/s", 1], ["Errors 1m", 1]]) {
      const th = el("th", num ? "num" : "", t);
      th.scope = "col";
      hr.append(th);
    }
    thead.append(hr);
    const tbody = el("tbody");
    table.append(thead, tbody);
    scroll.append(table);
    const empty = el("p", "muted", "No instances in Consul.");
    empty.hidden = true;
    section.append(head, alert, scroll, empty);
    v = { section, count, meta, alert, tbody, empty, rows: new Map() };
    services.set(name, v);
    return v;
  }

  function metaTag(label, value) {
    const s = el("span", "tag");
    s.append(label + " ", el("b", "", value));
    return s;
  }

  function renderServices(f) {
    const root = $("services");
    const q = filter.value.trim().toLowerCase();
    const onlyOut = problems.checked;
    const seen = new Set();
    const order = [];
    for (const s of f.services) {
      seen.add(s.name);
      const v = serviceView(s.name);
      order.push(v.section);
      const elig = s.instances.filter((i) => i.eligible).length;
      setText(v.count, elig + "/" + s.instances.length + " eligible");
      setClass(v.count, "count" + (elig < s.instances.length ? " bad" : ""));
      const meta = [metaTag("strategy", s.strategy), metaTag("sticky", s.sticky || "off"),
        metaTag("consul index", String(s.consul_index)),
        metaTag("last answer", s.synced ? fmtAge(s.consul_age_seconds) + " ago" : "waiting")];
      const key = meta.map((m) => m.textContent).join("|");
      if (v.meta.dataset.key !== key) {
        v.meta.dataset.key = key;
        v.meta.replaceChildren(...meta.flatMap((m, i) => i ? [" · ", m] : [m]));
      }
      v.alert.hidden = !s.consul_error;
      setText(v.alert, s.consul_error ? "Consul error: " + s.consul_error +
        (s.synced ? " — serving the last good answer" : " — no answer from Consul yet") : "");
      v.empty.hidden = s.instances.length > 0;

      const ids = new Set();
      let prev = null;
      for (const i of s.instances) {
        ids.add(i.id);
        let r = v.rows.get(i.id);
        if (!r) {
          const tr = el("tr");
          tr.dataset.id = i.id;
          const cells = {};
          for (const c of columns) {
            const td = el(c === "id" ? "th" : "td", "c-" + c);
            if (c === "id") td.scope = "row";
            cells[c] = td;
            tr.append(td);
          }
          r = { tr, cells };
          v.rows.set(i.id, r);
        }
        updateRow(r, i, f);
        const hide = (onlyOut && i.eligible) ||
          (q !== "" && !i.id.toLowerCase().includes(q) && !i.address.toLowerCase().includes(q));
        if (r.tr.hidden !== hide) r.tr.hidden = hide;
        // Keep DOM order equal to the frame's (sorted by ID).
        const want = prev ? prev.nextSibling : v.tbody.firstChild;
        if (want !== r.tr) v.tbody.insertBefore(r.tr, want);
        prev = r.tr;
      }
      for (const [id, r] of v.rows) {
        if (!ids.has(id)) { r.tr.remove(); v.rows.delete(id); }
      }
    }
    for (const [name, v] of services) {
      if (!seen.has(name)) { v.section.remove(); services.delete(name); }
    }
    order.forEach((sec, i) => { if (root.children[i] !== sec) root.insertBefore(sec, root.children[i] || null); });
  }

  function updateRow(r, i, f) {
    const c = r.cells;
    setClass(r.tr, i.eligible ? "" : "out");
    r.tr.dataset.eligible = String(i.eligible);
    // The ID cell: the ID, then (shown on narrow screens) why it is out.
    if (!r.idText) {
      r.idText = document.createTextNode("");
      r.why = el("span", "why");
      c.id.append(r.idText, r.why);
    }
    if (r.idText.data !== i.id) r.idText.data = i.id;
    setText(r.why, i.eligible ? "" : "out: " + i.reason);
    setText(c.addr, i.address || dash);
    setClass(c.addr, "c-addr addr");
    let w = String(i.weight);
    if (i.eligible && Math.abs(i.effective_weight - i.weight) > 0.05) w = fmtWeight(i.effective_weight) + " of " + i.weight + " (slow start)";
    setText(c.weight, w);
    setClass(c.weight, "c-weight num" + (w.includes("slow") ? " slow" : ""));
    setText(c.consul, i.consul);
    setClass(c.consul, "c-consul st st-" + i.consul);
    setText(c.probe, i.probe);
    setClass(c.probe, "c-probe st st-" + i.probe);
    let ej = "no";
    if (i.ejected) {
      ej = "yes";
      if (i.ejected_until) {
        const left = (Date.parse(i.ejected_until) - Date.parse(f.time)) / 1000;
        ej = "until " + fmtClock(i.ejected_until) + " (" + fmtAge(left) + ")";
      }
    }
    setText(c.ejected, ej);
    setClass(c.ejected, "c-ejected" + (i.ejected ? " st st-ejected" : " muted"));
    // Eligibility: the reason is spelled out, not shown by colour alone.
    const elig = i.eligible ? "yes" : "no — " + i.reason;
    setText(c.eligible, elig);
    setClass(c.eligible, "c-eligible " + (i.eligible ? "st st-yes" : "reason"));
    setText(c.inflight, String(i.inflight));
    setClass(c.inflight, "c-inflight num");
    setText(c.rps, fmtRate(i.rps));
    setClass(c.rps, "c-rps num");
    setText(c.errors, i.window_errors == null ? dash : String(Math.round(i.window_errors)));
    setClass(c.errors, "c-errors num" + (i.window_errors > 0 ? " st st-no" : ""));
  }

  const kindClass = {
    ineligible: "bad", removed: "warn", ejected: "bad", consul_error: "bad",
    eligible: "good", added: "good", ejection_ended: "good", consul_recovered: "good",
    probe: "warn", reload: "",
  };
  // The newest event shown, by Seq and time: a restarted sluice counts Seq
  // from 1 again, so Seq alone may repeat with other events.
  let lastKey = null;
  function renderEvents(f) {
    const list = $("events");
    const top = f.events[f.events.length - 1];
    const newest = top ? top.seq + "@" + top.time : "";
    if (newest === lastKey && list.children.length) {
      // Same events: only refresh the relative times.
      for (const li of list.children) {
        const t = li.querySelector("time");
        if (t) setText(t.querySelector(".ago"), ago(t.dateTime, f));
      }
      return;
    }
    lastKey = newest;
    const items = [];
    for (let k = f.events.length - 1; k >= 0; k--) {
      const e = f.events[k];
      const li = el("li");
      li.dataset.kind = e.kind;
      li.dataset.seq = String(e.seq);
      if (e.service) li.dataset.service = e.service;
      if (e.instance) li.dataset.instance = e.instance;
      const t = el("time");
      t.dateTime = e.time;
      t.title = e.time;
      t.append(fmtClock(e.time), el("br"), el("span", "ago", ago(e.time, f)));
      const what = el("div", "what");
      what.append(el("span", "kind " + (kindClass[e.kind] || ""), e.kind.replace("_", " ")));
      const subject = e.instance ? e.instance : e.service ? "service " + e.service : "sluice";
      what.append(el("span", "mono", subject));
      if (e.instance && e.service) what.append(el("span", "muted small", " in " + e.service));
      li.append(t, what);
      if (e.detail) li.append(el("div", "detail", e.detail));
      items.push(li);
    }
    if (!items.length) items.push(el("li", "empty", "No events yet."));
    list.replaceChildren(...items);
  }
  function ago(iso, f) { return fmtAge((Date.parse(f.time) - Date.parse(iso)) / 1000) + " ago"; }

  connect();
})();
