// The dashboard's panels. Every number comes from the public read API, called
// with the session cookie (and the CSRF token on POSTs); the view, the range,
// the time zone and the filters live in the URL, so any view can be bookmarked.
"use strict";

(() => {
  const body = document.body;
  const CSRF = body.dataset.csrf;
  const PRODUCT = body.dataset.product;
  const IS_ADMIN = body.dataset.admin === "true";
  // The deployment's path prefix (behind a proxy that serves us below a path): "" at /.
  const BASE = body.dataset.base || "";
  const main = document.getElementById("view");
  const controls = document.getElementById("controls");
  const DB_DOWN =
    "Reads need PostgreSQL, which is unavailable right now. Events are still accepted " +
    "and queued; they appear here once it is back.";

  // --- state in the URL

  function readState() {
    const p = new URLSearchParams(location.search);
    let tz = p.get("tz");
    if (!tz) {
      try {
        tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
      } catch (e) {
        tz = "UTC";
      }
    }
    return {
      params: p,
      view: p.get("view") || "overview",
      range: p.get("range") || "7d",
      from: p.get("from") || "",
      to: p.get("to") || "",
      tz,
      event: p.get("event") || "",
      fkey: p.get("fkey") || "",
      fval: p.get("fval") || "",
    };
  }

  function setParams(changes, { replace = false } = {}) {
    const p = new URLSearchParams(location.search);
    for (const [name, value] of Object.entries(changes)) {
      p.delete(name);
      for (const one of Array.isArray(value) ? value : [value]) {
        if (one !== null && one !== undefined && one !== "") p.append(name, one);
      }
    }
    const url = `${location.pathname}?${p.toString()}`;
    if (replace) history.replaceState(null, "", url);
    else history.pushState(null, "", url);
    render();
  }

  // A view's own form: on submit its fields (read by toParams) go into the URL,
  // and the view renders again from there.
  function paramForm(className, toParams, ...children) {
    return el(
      "form",
      {
        class: className,
        onsubmit: (event) => {
          event.preventDefault();
          setParams(toParams(new FormData(event.target)));
        },
      },
      ...children
    );
  }

  const text = (data, name) => String(data.get(name) || "").trim();

  function dateRange(s) {
    return s.range === "custom" && s.from && s.to ? [s.from, s.to] : s.range === "custom" ? "7d" : s.range;
  }

  function filters(s, { withEvent = true } = {}) {
    const list = [];
    if (withEvent && s.event) list.push(["is", "name", [s.event]]);
    if (s.fkey) list.push(["is", `prop:${s.fkey}`, [s.fval]]);
    return list;
  }

  function granularity(s) {
    if (s.range === "today" || s.range === "yesterday") return "hour";
    if (s.range === "year" || s.range === "all") return "month";
    if (s.range === "90d") return "week";
    if (s.range === "custom" && s.from && s.to) {
      const days = (Date.parse(s.to) - Date.parse(s.from)) / 86400000;
      if (days <= 2) return "hour";
      if (days > 120) return "week";
    }
    return "day";
  }

  // --- the API

  class ApiError extends Error {
    constructor(status, payload) {
      super((payload && payload.message) || `HTTP ${status}`);
      this.status = status;
      this.code = payload && payload.error;
      this.details = (payload && payload.details) || [];
    }
  }

  async function api(path, { body, method } = {}) {
    const init = { headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined || (method && method !== "GET")) {
      init.method = method || "POST";
      init.headers["X-CSRF-Token"] = CSRF;
      if (body !== undefined) {
        init.headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
      }
    }
    let response = await fetch(BASE + path, init);
    // Past the key's query rate (a burst of panels, quick clicks): wait as told, then retry.
    for (let attempt = 0; response.status === 429 && attempt < 3; attempt++) {
      const seconds = Math.min(5, Number(response.headers.get("Retry-After")) || 1);
      await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
      response = await fetch(BASE + path, init);
    }
    const text = await response.text();
    let payload = null;
    if (text) {
      try {
        payload = JSON.parse(text);
      } catch (e) {
        payload = { message: text.slice(0, 200) };
      }
    }
    if (!response.ok) throw new ApiError(response.status, payload);
    return payload;
  }

  // Identical queries within one render are asked once (the active-users panel's
  // 7 or 30 days is often the range the overview shows already).
  let asked = new Map();
  function ask(body) {
    const key = JSON.stringify(body);
    if (!asked.has(key)) asked.set(key, api("/v1/query", { body }));
    return asked.get(key);
  }

  function query(s, extra) {
    return ask({ date_range: dateRange(s), timezone: s.tz, filters: filters(s), ...extra });
  }

  function explain(error) {
    if (error.status === 401) return "Your session has ended. Reload the page to sign in again.";
    if (error.code === "database_unavailable") return DB_DOWN;
    if (error.status === 429) return "Too many queries at once for this key; reload in a few seconds.";
    const where = error.details
      .map((d) => (d.field ? `${d.field}: ${d.message}` : d.message))
      .filter(Boolean)
      .join("; ");
    return where ? `${error.message} (${where})` : error.message;
  }

  // --- building blocks

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === false || value === null || value === undefined) continue;
      if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined && child !== false) {
        node.append(child instanceof Node ? child : document.createTextNode(String(child)));
      }
    }
    return node;
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs = {}) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
    return node;
  }

  function fmt(value, digits = 1) {
    if (value === null || value === undefined) return "–";
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits });
  }

  function percent(value) {
    return value === null || value === undefined || !Number.isFinite(value)
      ? "–"
      : `${value.toLocaleString("en-US", { maximumFractionDigits: 1 })}%`;
  }

  // A panel: a titled section with a state the browser tests (and people) can
  // see, and a CSV of exactly the rows it shows.
  class Panel {
    constructor(id, title, { description } = {}) {
      this.id = id;
      this.csv = null;
      this.body = el("div", { class: "panel-body" });
      this.download = el("button", {
        type: "button",
        class: "csv",
        text: "Download CSV",
        disabled: true,
        "aria-label": `Download ${title} as CSV`,
        onclick: () => this.saveCsv(),
      });
      this.node = el(
        "section",
        { class: "panel", id: `panel-${id}`, "data-state": "loading", "aria-labelledby": `h-${id}` },
        el("div", { class: "panel-head" }, el("h2", { id: `h-${id}`, text: title }), this.download),
        description ? el("p", { class: "hint", text: description }) : null,
        this.body
      );
      this.body.append(el("p", { class: "loading", text: "Loading…" }));
    }

    show(state, ...children) {
      this.node.dataset.state = state;
      this.body.replaceChildren(...children.flat().filter(Boolean));
    }

    fail(error) {
      this.csv = null;
      this.download.disabled = true;
      this.show("error", el("p", { class: "error", role: "alert", text: explain(error) }));
    }

    setCsv(headers, rows) {
      this.csv = { headers, rows };
      this.download.disabled = rows.length === 0;
    }

    saveCsv() {
      if (!this.csv) return;
      const cell = (value) => {
        if (value === null || value === undefined) return "";
        let text = typeof value === "object" ? JSON.stringify(value) : String(value);
        // A spreadsheet would run a cell starting with these as a formula.
        if (typeof value === "string" && /^[=+\-@\t\r]/.test(text)) text = `'${text}`;
        return /[",\n\r]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
      };
      const lines = [this.csv.headers, ...this.csv.rows].map((row) => row.map(cell).join(","));
      const blob = new Blob([lines.join("\r\n") + "\r\n"], { type: "text/csv" });
      const link = el("a", {
        href: URL.createObjectURL(blob),
        download: `${PRODUCT}-${this.id}.csv`,
      });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 1000);
    }
  }

  function table(headers, rows, { numeric = [], caption } = {}) {
    const wrap = el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption || "Table" });
    const head = el("tr", {}, headers.map((h, i) => el("th", { scope: "col", class: numeric.includes(i) ? "num" : null, text: h })));
    const lines = rows.map((row) =>
      el(
        "tr",
        {},
        row.map((value, i) =>
          i === 0
            ? el("th", { scope: "row", text: value === null ? "(none)" : String(value) })
            : el("td", {
                class: numeric.includes(i) ? "num" : null,
                "data-value": typeof value === "number" ? String(value) : null,
                text: typeof value === "number" ? fmt(value) : value === null ? "–" : String(value),
              })
        )
      )
    );
    wrap.append(el("table", {}, caption ? el("caption", { class: "sr-only", text: caption }) : null, el("thead", {}, head), el("tbody", {}, lines)));
    return wrap;
  }

  function kpi(name, label, value, { change, format = fmt } = {}) {
    return el(
      "div",
      { class: "kpi", "data-kpi": name },
      el("span", { class: "kpi-label", text: label }),
      el("span", { class: "kpi-value", "data-value": value === null || value === undefined ? "" : String(value), text: format(value) }),
      change === undefined
        ? null
        : el("span", {
            class: `kpi-change ${change > 0 ? "up" : change < 0 ? "down" : ""}`,
            "data-change": change === null ? "" : String(change),
            text: change === null ? "no previous data" : `${change > 0 ? "+" : ""}${percent(change)} vs previous period`,
          })
    );
  }

  // A line chart of one or more series over the same buckets, in SVG.
  function lineChart(labels, series, { label }) {
    const width = 640;
    const height = 200;
    const pad = { left: 48, right: 12, top: 12, bottom: 28 };
    const values = series.flatMap((s) => s.values.filter((v) => v !== null));
    const max = Math.max(1, ...values);
    const x = (i) => pad.left + (labels.length <= 1 ? 0 : (i * (width - pad.left - pad.right)) / (labels.length - 1));
    const y = (v) => pad.top + (height - pad.top - pad.bottom) * (1 - v / max);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label, class: "chart" });
    for (const fraction of [0, 0.5, 1]) {
      const value = max * fraction;
      chart.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y(value), y2: y(value), class: "grid" }));
      const tick = svg("text", { x: pad.left - 6, y: y(value) + 4, "text-anchor": "end", class: "tick" });
      tick.textContent = fmt(Math.round(value));
      chart.append(tick);
    }
    const ends = labels.length ? [0, labels.length - 1] : [];
    for (const i of ends) {
      const tick = svg("text", { x: x(i), y: height - 8, "text-anchor": i === 0 ? "start" : "end", class: "tick" });
      tick.textContent = labels[i];
      chart.append(tick);
    }
    series.forEach((s, n) => {
      const points = s.values.map((v, i) => (v === null ? null : `${x(i)},${y(v)}`)).filter(Boolean);
      chart.append(svg("polyline", { points: points.join(" "), class: `series s${n}${s.dashed ? " dashed" : ""}` }));
    });
    const legend = el(
      "ul",
      { class: "legend" },
      series.map((s, n) => el("li", { class: `s${n}${s.dashed ? " dashed" : ""}`, text: s.name }))
    );
    return el("figure", { class: "chart-figure" }, chart, legend);
  }

  // Local calendar dates as day numbers (days since 1970-01-01), and back.
  const dayNumber = (iso) => Date.UTC(+iso.slice(0, 4), +iso.slice(5, 7) - 1, +iso.slice(8, 10)) / 86400000;
  const isoDay = (n) => new Date(n * 86400000).toISOString().slice(0, 10);

  // The range's first and last local day, as the API reads it: calendar words
  // are whole local days ending today (in the view's time zone).
  function localDays(s) {
    if (s.range === "custom" && s.from && s.to) return [dayNumber(s.from), dayNumber(s.to)];
    const today = dayNumber(new Intl.DateTimeFormat("en-CA", { timeZone: s.tz }).format(new Date()));
    const iso = isoDay(today);
    const days = /^(\d+)d$/.exec(s.range);
    if (s.range === "today") return [today, today];
    if (s.range === "yesterday") return [today - 1, today - 1];
    if (days) return [today - Number(days[1]) + 1, today];
    if (s.range === "month") return [dayNumber(`${iso.slice(0, 7)}-01`), today];
    if (s.range === "year") return [dayNumber(`${iso.slice(0, 4)}-01-01`), today];
    return null; // `all`: nothing before it
  }

  // The period just before the range, as long as it: asked at the same time as
  // the range itself, not after it.
  function previousRange(s) {
    let days = null;
    try {
      days = localDays(s);
    } catch (e) {
      return null; // a time zone the browser does not know: the API says what is wrong
    }
    if (!days) return null;
    const [first, last] = days;
    const length = last - first + 1;
    return [isoDay(first - length), isoDay(first - 1)];
  }

  function change(current, previous) {
    if (previous === null || previous === undefined || previous === 0) return null;
    return ((current - previous) / previous) * 100;
  }

  function emptyHint() {
    const curl =
      `curl -X POST ${location.origin}${BASE}/v1/events \\\n` +
      `  -H "Authorization: Bearer $LABS_API_KEY" -H "Content-Type: application/json" \\\n` +
      `  -d '{"name": "page.view", "user": "u_1", "properties": {"path": "/"}}'`;
    return [
      el("p", { text: `No events for ${PRODUCT} in this range yet. Send one with an ingest key:` }),
      el("pre", { class: "code" }, el("code", { text: curl })),
    ];
  }

  // --- views

  async function overview(s) {
    const g = granularity(s);
    const trend = new Panel("overview", "Events and users", {
      description: "This range against the one before it (dashed).",
    });
    const active = new Panel("active-users", "Active users", {
      description: "Distinct users today, in the last 7 days and in the last 30 days (all events).",
    });
    const top = new Panel("top-events", "Top events");
    const values = new Panel("top-values", "Top property values");
    main.append(trend.node, active.node, top.node, values.node);

    const jobs = [];
    jobs.push(
      (async () => {
        const previous = previousRange(s);
        const earlier = { date_range: previous, timezone: s.tz, filters: filters(s) };
        // Events and users per period asked apart: users alone by day, week or
        // month are read from the distinct users the rollups keep per period.
        const [series, userSeries, totals, before] = await Promise.all([
          query(s, { metrics: ["events"], dimensions: [`time:${g}`], limit: 1000 }),
          query(s, { metrics: ["users"], dimensions: [`time:${g}`], limit: 1000 }),
          query(s, { metrics: ["events", "users"] }),
          previous
            ? Promise.all([
                ask({ ...earlier, metrics: ["events"], dimensions: [`time:${g}`], limit: 1000 }),
                ask({ ...earlier, metrics: ["events", "users"] }),
              ])
            : null,
        ]);
        const [events, users] = totals.results.length ? totals.results[0].metrics : [0, 0];
        const labels = series.results.map((r) => r.dimensions[0]);
        const usersAt = new Map(userSeries.results.map((r) => [r.dimensions[0], r.metrics[0]]));
        const rows = series.results.map((r) => [r.dimensions[0], r.metrics[0], usersAt.get(r.dimensions[0]) || 0]);
        trend.setCsv([`time:${g}`, "events", "users"], rows);
        if (events === 0 && (!before || before[1].results.length === 0 || before[1].results[0].metrics[0] === 0)) {
          trend.show("empty", kpi("events", "Events", 0), kpi("users", "Users", 0), emptyHint());
          return;
        }
        const [prevEvents, prevUsers] = before && before[1].results.length ? before[1].results[0].metrics : [null, null];
        const chartSeries = [{ name: "Events", values: series.results.map((r) => r.metrics[0]) }];
        if (before) {
          const prevValues = before[0].results.map((r) => r.metrics[0]);
          chartSeries.push({ name: "Events, previous period", values: labels.map((_, i) => (i < prevValues.length ? prevValues[i] : null)), dashed: true });
        }
        chartSeries.push({ name: "Users", values: rows.map((r) => r[2]) });
        trend.show(
          "ready",
          el(
            "div",
            { class: "kpis" },
            kpi("events", "Events", events, before ? { change: change(events, prevEvents) } : {}),
            kpi("users", "Users", users, before ? { change: change(users, prevUsers) } : {})
          ),
          lineChart(labels, chartSeries, { label: `Events and users per ${g}` })
        );
      })().catch((e) => trend.fail(e))
    );

    jobs.push(
      (async () => {
        const ranges = [["dau", "Daily (today)", "today"], ["wau", "Weekly (7 days)", "7d"], ["mau", "Monthly (30 days)", "30d"]];
        // The same body as the overview's totals (events too, no filters), so a
        // 7- or 30-day view without filters asks it once.
        const answers = await Promise.all(
          ranges.map(([, , range]) => ask({ date_range: range, timezone: s.tz, filters: [], metrics: ["events", "users"] }))
        );
        const counts = answers.map((a) => (a.results.length ? a.results[0].metrics[1] : 0));
        active.setCsv(["period", "users"], ranges.map(([name], i) => [name, counts[i]]));
        active.show("ready", el("div", { class: "kpis" }, ranges.map(([name, label], i) => kpi(name, label, counts[i]))));
      })().catch((e) => active.fail(e))
    );

    jobs.push(
      (async () => {
        const answer = await query(s, { metrics: ["events", "users"], dimensions: ["name"], order_by: [["events", "desc"]], limit: 10 });
        const rows = answer.results.map((r) => [r.dimensions[0], r.metrics[0], r.metrics[1]]);
        top.setCsv(["name", "events", "users"], rows);
        if (!rows.length) return top.show("empty", el("p", { text: "No events in this range." }));
        top.show("ready", table(["Event", "Events", "Users"], rows, { numeric: [1, 2], caption: "Top events" }));
      })().catch((e) => top.fail(e))
    );

    jobs.push(topValues(s, values));
    await Promise.all(jobs);
  }

  async function topValues(s, panel) {
    const prop = s.params.get("prop") || "";
    const form = paramForm(
      "inline",
      (data) => ({ prop: text(data, "prop") }),
      el("label", {}, "Property ", el("input", { name: "prop", value: prop, maxlength: "200", placeholder: "e.g. club", size: "14" })),
      el("button", { type: "submit", text: "Show" })
    );
    if (!prop) {
      panel.show("empty", form, el("p", { class: "hint", text: "Choose a property (a key of the events' properties) to see its most frequent values." }));
      return;
    }
    try {
      const answer = await query(s, { metrics: ["events", "users"], dimensions: [`prop:${prop}`], order_by: [["events", "desc"]], limit: 10 });
      const rows = answer.results.map((r) => [r.dimensions[0], r.metrics[0], r.metrics[1]]);
      panel.setCsv([prop, "events", "users"], rows);
      panel.show(rows.length ? "ready" : "empty", form, rows.length ? table([prop, "Events", "Users"], rows, { numeric: [1, 2], caption: `Top values of ${prop}` }) : el("p", { text: `No events with ${prop} in this range.` }));
    } catch (e) {
      panel.fail(e);
      panel.body.prepend(form);
    }
  }

  async function apiHealth(s) {
    const g = granularity(s);
    const summary = new Panel("api-summary", "API health", {
      description: "From the SDK's http.request events: requests, server errors (status ≥ 500) and latency in ms.",
    });
    const routes = new Panel("api-routes", "Routes");
    const slowest = new Panel("api-slowest", "Slowest routes (p95)");
    const overTime = new Panel("api-time", "Over time");
    main.append(summary.node, routes.node, slowest.node, overTime.node);
    const base = { date_range: dateRange(s), timezone: s.tz };
    const requests = [["is", "name", ["http.request"]], ...filters(s, { withEvent: false })];
    const errors = [...requests, ["gte", "prop:status_code", [500]]];
    const latency = ["p50:duration_ms", "p95:duration_ms", "p99:duration_ms"];
    const askHere = (body) => ask({ ...base, ...body });
    try {
      const [all, failed, byRoute, failedByRoute, series, failedSeries] = await Promise.all([
        askHere({ metrics: ["events", ...latency], filters: requests }),
        askHere({ metrics: ["events"], filters: errors }),
        askHere({ metrics: ["events", ...latency], dimensions: ["prop:route"], filters: requests, order_by: [["events", "desc"]], limit: 100 }),
        askHere({ metrics: ["events"], dimensions: ["prop:route"], filters: errors, limit: 1000 }),
        askHere({ metrics: ["events", "p95:duration_ms"], dimensions: [`time:${g}`], filters: requests, limit: 1000 }),
        askHere({ metrics: ["events"], dimensions: [`time:${g}`], filters: errors, limit: 1000 }),
      ]);
      const [total, p50, p95, p99] = all.results.length ? all.results[0].metrics : [0, null, null, null];
      const errorCount = failed.results.length ? failed.results[0].metrics[0] : 0;
      if (total === 0) {
        const hint = el("p", { text: "No http.request events in this range. The SDK's middleware (or timed()) sends one per request it sees." });
        for (const p of [summary, routes, slowest, overTime]) p.show("empty", hint.cloneNode(true));
        return;
      }
      const rate = (count, of) => (of ? (count / of) * 100 : null);
      summary.setCsv(["requests", "errors", "error_rate_percent", "p50_ms", "p95_ms", "p99_ms"], [[total, errorCount, rate(errorCount, total), p50, p95, p99]]);
      summary.show(
        "ready",
        el(
          "div",
          { class: "kpis" },
          kpi("requests", "Requests", total),
          kpi("errors", "Errors", errorCount),
          kpi("error-rate", "Error rate", rate(errorCount, total), { format: percent }),
          kpi("p50", "p50 (ms)", p50),
          kpi("p95", "p95 (ms)", p95),
          kpi("p99", "p99 (ms)", p99)
        )
      );
      const errorsByRoute = new Map(failedByRoute.results.map((r) => [r.dimensions[0], r.metrics[0]]));
      const rows = byRoute.results.map((r) => {
        const count = errorsByRoute.get(r.dimensions[0]) || 0;
        return [r.dimensions[0], r.metrics[0], count, rate(count, r.metrics[0]), r.metrics[1], r.metrics[2], r.metrics[3]];
      });
      const headers = ["Route", "Requests", "Errors", "Error rate (%)", "p50 (ms)", "p95 (ms)", "p99 (ms)"];
      routes.setCsv(["route", "requests", "errors", "error_rate_percent", "p50_ms", "p95_ms", "p99_ms"], rows);
      routes.show("ready", table(headers, rows, { numeric: [1, 2, 3, 4, 5, 6], caption: "Routes" }));
      const slow = [...rows].sort((a, b) => (b[5] ?? -1) - (a[5] ?? -1)).slice(0, 5);
      slowest.setCsv(["route", "requests", "errors", "error_rate_percent", "p50_ms", "p95_ms", "p99_ms"], slow);
      slowest.show("ready", table(headers, slow, { numeric: [1, 2, 3, 4, 5, 6], caption: "Slowest routes" }));
      const errorsAt = new Map(failedSeries.results.map((r) => [r.dimensions[0], r.metrics[0]]));
      const labels = series.results.map((r) => r.dimensions[0]);
      const timeRows = series.results.map((r) => [r.dimensions[0], r.metrics[0], errorsAt.get(r.dimensions[0]) || 0, r.metrics[1]]);
      overTime.setCsv([`time:${g}`, "requests", "errors", "p95_ms"], timeRows);
      overTime.show(
        "ready",
        lineChart(labels, [{ name: "Requests", values: timeRows.map((r) => r[1]) }, { name: "Errors", values: timeRows.map((r) => r[2]) }], { label: `Requests and errors per ${g}` }),
        lineChart(labels, [{ name: "p95 latency (ms)", values: timeRows.map((r) => r[3]) }], { label: `p95 latency per ${g}` })
      );
    } catch (e) {
      for (const p of [summary, routes, slowest, overTime]) p.fail(e);
    }
  }

  async function funnel(s) {
    const panel = new Panel("funnel", "Funnel", {
      description: "Users through ordered steps, each within the window of the first (exact).",
    });
    main.append(panel.node);
    const steps = s.params.getAll("step").filter(Boolean);
    const windowValue = s.params.get("window") || "7d";
    const form = paramForm(
      "stacked",
      (data) => ({
        step: text(data, "steps").split("\n").map((x) => x.trim()).filter(Boolean),
        window: text(data, "window") || "7d",
      }),
      el("label", { for: "funnel-steps", text: "Steps, one event name per line" }),
      el("textarea", { id: "funnel-steps", name: "steps", rows: "4", text: steps.join("\n"), placeholder: "club.view\nclub.apply" }),
      el("label", { for: "funnel-window", text: "Window (e.g. 1h, 7d)" }),
      el("input", { id: "funnel-window", name: "window", value: windowValue, maxlength: "10", size: "6" }),
      el("button", { type: "submit", text: "Run funnel" })
    );
    if (steps.length < 2) {
      panel.show("empty", form, el("p", { class: "hint", text: "Name at least two steps." }));
      return;
    }
    try {
      const answer = await api("/v1/funnels", {
        body: { steps: steps.map((name) => ({ name })), window: windowValue, date_range: dateRange(s), timezone: s.tz },
      });
      const rows = answer.steps.map((st) => [st.name, st.users, st.conversion_from_first === null ? null : st.conversion_from_first * 100, st.conversion_from_previous === null ? null : st.conversion_from_previous * 100, st.median_seconds_from_previous]);
      panel.setCsv(["step", "users", "conversion_from_first_percent", "conversion_from_previous_percent", "median_seconds_from_previous"], rows);
      const max = Math.max(1, ...rows.map((r) => r[1]));
      const bars = el(
        "ol",
        { class: "funnel-bars" },
        rows.map((r) => el("li", {}, el("span", { class: "bar", style: null, "data-width": String(Math.round((r[1] / max) * 100)) }), `${r[0]}: ${fmt(r[1])} users`))
      );
      panel.show("ready", form, table(["Step", "Users", "From step 1 (%)", "From previous (%)", "Median seconds"], rows, { numeric: [1, 2, 3, 4], caption: "Funnel steps" }), bars);
      sizeBars(panel.node);
    } catch (e) {
      panel.fail(e);
      panel.body.prepend(form);
    }
  }

  // Widths are set from script, not style attributes: the page's CSP forbids inline styles.
  function sizeBars(root) {
    for (const bar of root.querySelectorAll(".bar[data-width]")) bar.style.width = `${bar.dataset.width}%`;
  }

  async function retention(s) {
    const panel = new Panel("retention", "Retention", {
      description: "Cohorts by a user's first start event; who came back in each later period.",
    });
    main.append(panel.node);
    const start = s.params.get("start") || "";
    const back = s.params.get("return") || "";
    const period = s.params.get("period") || "week";
    const form = paramForm(
      "inline",
      (data) => ({ start: text(data, "start"), return: text(data, "return"), period: text(data, "period") }),
      el("label", {}, "Start event ", el("input", { name: "start", value: start, required: true, maxlength: "200", size: "14" })),
      el("label", {}, "Return event ", el("input", { name: "return", value: back, maxlength: "200", size: "14", placeholder: "any" })),
      el("label", {}, "Period ", el("select", { name: "period" }, ["day", "week", "month"].map((p) => el("option", { value: p, selected: p === period, text: p })))),
      el("button", { type: "submit", text: "Show" })
    );
    if (!start) {
      panel.show("empty", form, el("p", { class: "hint", text: "Choose the event that starts a cohort (e.g. a sign-up)." }));
      return;
    }
    try {
      const body = { start_event: { name: start }, period, periods: 8, date_range: dateRange(s), timezone: s.tz };
      if (back) body.return_event = { name: back };
      const answer = await api("/v1/retention", { body });
      const offsets = Math.max(0, ...answer.cohorts.map((c) => c.users.length));
      const headers = ["Cohort", "Users", ...Array.from({ length: offsets }, (_, i) => `${period} ${i}`)];
      const rows = answer.cohorts.map((c) => [c.cohort, c.size, ...c.percent]);
      panel.setCsv(["cohort", "size", ...Array.from({ length: offsets }, (_, i) => `percent_${i}`)], rows);
      if (!rows.length) return panel.show("empty", form, el("p", { text: `No ${start} events in this range.` }));
      const grid = table(headers, rows, { numeric: headers.map((_, i) => i).slice(1), caption: "Retention by cohort (percent)" });
      for (const cell of grid.querySelectorAll("td[data-value]")) {
        const index = cell.cellIndex;
        if (index >= 2) {
          cell.textContent = percent(Number(cell.dataset.value));
          cell.dataset.heat = String(Math.min(5, Math.round(Number(cell.dataset.value) / 20)));
        }
      }
      panel.show("ready", form, grid);
    } catch (e) {
      panel.fail(e);
      panel.body.prepend(form);
    }
  }

  async function userSummary(s) {
    const panel = new Panel("user", "User summary", { description: "One user's year: what they did, when, and their longest streak." });
    main.append(panel.node);
    const user = s.params.get("user") || "";
    const year = s.params.get("year") || String(new Date().getFullYear());
    const form = paramForm(
      "inline",
      (data) => ({ user: text(data, "user"), year: text(data, "year") }),
      el("label", {}, "User id ", el("input", { name: "user", value: user, required: true, maxlength: "200", size: "16" })),
      el("label", {}, "Year ", el("input", { name: "year", value: year, inputmode: "numeric", pattern: "[0-9]{4}", size: "5" })),
      el("button", { type: "submit", text: "Look up" })
    );
    if (!user) return panel.show("empty", form, el("p", { class: "hint", text: "Enter a user id as your events send it." }));
    try {
      const q = new URLSearchParams({ timezone: s.tz, from: `${year}-01-01`, to: `${year}-12-31` });
      const answer = await api(`/v1/users/${encodeURIComponent(user)}/summary?${q}`);
      const rows = answer.events_by_name.map((n) => [n.name, n.events]);
      panel.setCsv(["name", "events"], rows);
      if (!answer.total_events) return panel.show("empty", form, el("p", { text: `No events from ${user} in ${year}.` }));
      const streak = answer.longest_streak;
      panel.show(
        "ready",
        form,
        el(
          "div",
          { class: "kpis" },
          kpi("total-events", "Events", answer.total_events),
          kpi("active-days", "Active days", answer.active_days),
          kpi("streak", "Longest streak (days)", streak ? streak.days : 0),
          kpi("weekday", "Most active day", answer.most_active_weekday ? answer.most_active_weekday.name : null, { format: (v) => v || "–" }),
          kpi("hour", "Most active hour", answer.most_active_hour ? answer.most_active_hour.hour : null, { format: (v) => (v === null ? "–" : `${v}:00`) })
        ),
        table(["Event", "Events"], rows.slice(0, 20), { numeric: [1], caption: "Events by name" }),
        Object.entries(answer.top).map(([field, values]) => [el("h3", { text: `Top ${field}` }), table([field, "Events"], values.map((v) => [v.value, v.events]), { numeric: [1], caption: `Top ${field}` })])
      );
    } catch (e) {
      panel.fail(e);
      panel.body.prepend(form);
    }
  }

  let liveSource = null;
  function live() {
    const panel = new Panel("live", "Live", { description: "Events received in the last five minutes, by arrival; updates every second." });
    main.append(panel.node);
    const status = el("p", { class: "live-status", role: "status", text: "Connecting…" });
    panel.show("loading", status);
    liveSource = new EventSource(`${BASE}/v1/live`);
    liveSource.addEventListener("snapshot", (message) => {
      const data = JSON.parse(message.data);
      const rows = data.latest.map((e) => [e.received_at.slice(11, 19), e.name, e.user, e.timestamp, e.properties]);
      panel.setCsv(["received_at", "name", "user", "timestamp", "properties"], data.latest.map((e) => [e.received_at, e.name, e.user, e.timestamp, e.properties]));
      status.textContent = `Updated ${new Date(data.as_of).toLocaleTimeString()}`;
      const max = Math.max(1, ...data.per_minute.map((m) => m.events));
      panel.show(
        data.events ? "ready" : "empty",
        status,
        el("div", { class: "kpis" }, kpi("live-events", "Events, last 5 minutes", data.events)),
        el("ol", { class: "minute-bars", "aria-label": "Events per minute" }, data.per_minute.map((m) => el("li", {}, el("span", { class: "bar", "data-width": String(Math.round((m.events / max) * 100)) }), `${m.minute.slice(11, 16)} UTC: ${fmt(m.events)}`))),
        data.events ? table(["Received (UTC)", "Event", "User", "Timestamp", "Properties"], rows, { caption: "Newest events" }) : emptyHint()
      );
      sizeBars(panel.node);
    });
    liveSource.addEventListener("error", (message) => {
      if (message.data) {
        const data = JSON.parse(message.data);
        status.textContent = `Could not update at ${new Date().toLocaleTimeString()}; retrying`;
        panel.show("error", status, el("p", { class: "error", role: "alert", text: data.code === "database_unavailable" ? DB_DOWN : data.message }));
      } else {
        status.textContent = "Reconnecting…";
      }
    });
  }

  let pipelineTimer = null;
  async function pipeline() {
    const panel = new Panel("pipeline", "Pipeline", { description: "The whole deployment: servers, queue, flushes, dead letters. Refreshes every 5 seconds." });
    main.append(panel.node);
    const refresh = async () => {
      try {
        const p = await api("/v1/pipeline");
        const up = (name) => el("span", { class: `status ${p[name] === "up" ? "up" : "down"}`, "data-status": name, text: `${name === "redis" ? "Redis" : "PostgreSQL"}: ${p[name]}` });
        const stream = p.stream || {};
        const flush = p.flush || {};
        const rows = [
          ["redis", p.redis],
          ["postgresql", p.postgresql],
          ["backlog_events", stream.backlog_events],
          ["oldest_entry_age_seconds", stream.oldest_entry_age_seconds],
          ["pending_entries", stream.pending_entries],
          ["spool_bytes", p.spool.bytes],
          ["flush_events_per_second", flush.events_per_second],
          ["flush_batches_5m", flush.batches],
          ["failed_batches_5m", flush.failed_batches],
          ["last_commit_at", flush.last_commit_at],
          ["dead_letters_in_redis", p.dead_letters.in_redis],
          ["dead_letters_stored", p.dead_letters.stored],
        ];
        panel.setCsv(["metric", "value"], rows);
        const notes = [];
        if (p.postgresql !== "up") notes.push(el("p", { class: "error", role: "alert", text: `PostgreSQL is down: events are kept in Redis (backlog ${fmt(stream.backlog_events)}) and written when it is back. The other panels need PostgreSQL to read.` }));
        if (p.redis !== "up") notes.push(el("p", { class: "error", role: "alert", text: `Redis is down: events go to the local spool (${fmt(p.spool.bytes)} bytes) and are replayed when it is back.` }));
        const failures = p.recent_failures || [];
        panel.show(
          p.postgresql === "up" && p.redis === "up" ? "ready" : "error",
          el("p", { class: "statuses" }, up("redis"), up("postgresql")),
          notes,
          el(
            "div",
            { class: "kpis" },
            kpi("backlog", "Backlog (events)", stream.backlog_events ?? null),
            kpi("oldest-age", "Oldest entry (s)", stream.oldest_entry_age_seconds ?? null),
            kpi("pending", "Pending entries", stream.pending_entries ?? null),
            kpi("spool", "Spool (bytes)", p.spool.bytes),
            kpi("flush-rate", "Flushed (events/s, 5 min)", flush.events_per_second ?? null),
            kpi("failed", "Failed batches (5 min)", flush.failed_batches ?? null),
            kpi("dead-letters", "Dead letters", (p.dead_letters.in_redis ?? 0) + (p.dead_letters.stored ?? 0))
          ),
          el("p", { class: "hint" }, "Replay dead letters: ", el("code", { text: p.dead_letters.replay })),
          el("h3", { text: "Recent failed flushes" }),
          failures.length
            ? table(["Finished", "Status", "Attempt", "Events", "Error"], failures.map((f) => [f.finished_at, f.status, f.attempt, f.events, f.error]), { numeric: [2, 3], caption: "Recent failed flushes" })
            : el("p", { text: p.recent_failures === null ? "Unknown while PostgreSQL is down." : "None." })
        );
      } catch (e) {
        panel.fail(e);
      }
    };
    await refresh();
    pipelineTimer = setInterval(refresh, 5000);
  }

  async function sharing() {
    const panel = new Panel("sharing", "Share links", { description: `Read-only links to this dashboard for ${PRODUCT}. Anyone with a link sees this product's numbers until it expires or you revoke it.` });
    main.append(panel.node);
    const created = el("div", { class: "created", role: "status" });
    const form = el(
      "form",
      {
        class: "inline",
        onsubmit: async (event) => {
          event.preventDefault();
          const days = Number(new FormData(event.target).get("days"));
          try {
            const share = await api("/v1/shares", { body: { expires_in_days: days } });
            created.replaceChildren(el("p", { text: "New link (shown once; copy it now):" }), el("input", { class: "share-url", readonly: true, value: share.url, "aria-label": "New share link", size: "60" }));
            await list();
          } catch (e) {
            created.replaceChildren(el("p", { class: "error", role: "alert", text: explain(e) }));
          }
        },
      },
      el("label", {}, "Expires in (days) ", el("input", { name: "days", type: "number", min: "1", max: "90", value: "7", size: "4" })),
      el("button", { type: "submit", text: "Create link" })
    );
    const list = async () => {
      try {
        const shares = await api(`/v1/shares?product=${encodeURIComponent(PRODUCT)}`);
        const rows = shares.map((sh) => [sh.share_id, sh.created_by, sh.created_at, sh.expires_at]);
        panel.setCsv(["share_id", "created_by", "created_at", "expires_at"], rows);
        const items = shares.map((sh) =>
          el(
            "li",
            { "data-share": sh.share_id },
            `${sh.share_id}, expires ${new Date(sh.expires_at).toLocaleString()} `,
            el("button", {
              type: "button",
              text: "Revoke",
              "aria-label": `Revoke link ${sh.share_id}`,
              onclick: async () => {
                try {
                  await api(`/v1/shares/${sh.share_id}`, { method: "DELETE" });
                  await list();
                } catch (e) {
                  created.replaceChildren(el("p", { class: "error", role: "alert", text: explain(e) }));
                }
              },
            })
          )
        );
        panel.show(shares.length ? "ready" : "empty", form, created, shares.length ? el("ul", { class: "shares" }, items) : el("p", { text: "No active links." }));
      } catch (e) {
        panel.fail(e);
      }
    };
    await list();
  }

  const VIEWS = { overview, api: apiHealth, funnel, retention, user: userSummary, live, pipeline, sharing };

  // --- wiring

  function syncControls(s) {
    controls.range.value = s.range;
    controls.from.value = s.from;
    controls.to.value = s.to;
    controls.tz.value = s.tz;
    controls.event.value = s.event;
    controls.fkey.value = s.fkey;
    controls.fval.value = s.fval;
    controls.classList.toggle("show-custom", s.range === "custom");
  }

  controls.range.addEventListener("change", () => controls.classList.toggle("show-custom", controls.range.value === "custom"));
  controls.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(controls);
    const range = data.get("range");
    setParams({
      range,
      from: range === "custom" ? data.get("from") : "",
      to: range === "custom" ? data.get("to") : "",
      tz: String(data.get("tz")).trim(),
      event: String(data.get("event")).trim(),
      fkey: String(data.get("fkey")).trim(),
      fval: String(data.get("fval")).trim(),
    });
  });
  document.querySelector("nav").addEventListener("click", (event) => {
    const link = event.target.closest("a[data-view]");
    if (!link) return;
    event.preventDefault();
    setParams({ view: link.dataset.view });
  });
  window.addEventListener("popstate", render);

  let rendering = 0;
  async function render() {
    const token = ++rendering;
    const s = readState();
    // The range and time zone in effect go into the URL, so a bookmark or a
    // shared URL shows the same days wherever it is opened.
    if (!s.params.get("tz") || !s.params.get("range")) {
      const p = new URLSearchParams(location.search);
      p.set("range", s.range);
      p.set("tz", s.tz);
      history.replaceState(null, "", `${location.pathname}?${p}`);
    }
    if (liveSource) liveSource.close();
    liveSource = null;
    clearInterval(pipelineTimer);
    syncControls(s);
    const name = VIEWS[s.view] && (IS_ADMIN || (s.view !== "pipeline" && s.view !== "sharing")) ? s.view : "overview";
    for (const link of document.querySelectorAll("nav a[data-view]")) {
      const p = new URLSearchParams(location.search);
      p.set("view", link.dataset.view);
      link.href = `?${p}`;
      if (link.dataset.view === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    main.replaceChildren();
    asked = new Map();
    main.dataset.view = name;
    main.dataset.ready = "false";
    await VIEWS[name](s);
    if (token === rendering) {
      main.dataset.ready = "true";
      // When the view's answers were painted (the task after the next frame),
      // in the page's own clock, for whoever measures it (make bench-read).
      requestAnimationFrame(() => setTimeout(() => performance.mark("dashboard:ready", { detail: name })));
    }
  }

  render();
})();
