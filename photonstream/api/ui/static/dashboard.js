// photonstream dashboard: live pages fed by server-sent events, charts drawn by uPlot.
// Everything from the server goes into the page as text (textContent), never as HTML.
"use strict";

(() => {
  const CSRF = { "X-Photonstream-CSRF": "1" };
  const HISTORY = 300; // points kept per time series (5 minutes at one update a second)
  const COLORS = ["#2f6fdf", "#e8710a", "#1e8e3e", "#d93025", "#9334e6", "#12b5cb", "#e52592", "#7cb342",
    "#795548", "#546e7a"];
  const $ = (id) => document.getElementById(id);

  function cell(text, className) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "–" : String(text);
    if (className) td.className = className;
    return td;
  }

  function number(value, digits = 1) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits });
  }

  function showMessage(text) {
    const box = $("message");
    if (box) box.textContent = text || "";
  }

  async function logout() {
    await fetch("/ui/logout", { method: "POST", headers: CSRF, credentials: "same-origin" });
    location.href = "/ui/login";
  }

  function live(on) {
    const dot = $("live");
    if (dot) dot.classList.toggle("on", on);
  }

  // --- charts -------------------------------------------------------------------------------------------------

  // A uPlot chart whose series can change: rebuilt when the set of labels changes, else only fed new data.
  class Chart {
    constructor(container, { time = true, xLabel = "", yLabel = "", logY = false } = {}) {
      this.container = container;
      this.time = time;
      this.xLabel = xLabel;
      this.yLabel = yLabel;
      this.logY = logY;
      this.labels = [];
      this.plot = null;
      this.x = [];
      this.ys = new Map();
      new ResizeObserver(() => this.resize()).observe(container);
    }

    size() {
      return { width: Math.max(200, this.container.clientWidth), height: 200 };
    }

    resize() {
      if (this.plot) this.plot.setSize(this.size());
    }

    build(labels) {
      if (this.plot) this.plot.destroy();
      this.labels = labels;
      const series = [{ label: this.time ? "time" : this.xLabel }];
      labels.forEach((label, i) => series.push({ label, stroke: COLORS[i % COLORS.length], width: 1.5,
        spanGaps: true, points: { show: false } }));
      const options = {
        ...this.size(),
        series,
        scales: { x: { time: this.time }, y: this.logY ? { distr: 3 } : {} },
        axes: [{ label: this.time ? "" : this.xLabel }, { label: this.yLabel, size: 60 }],
        legend: { live: false },
        cursor: { drag: { x: false, y: false } },
      };
      this.plot = new uPlot(options, this.data(), this.container);
    }

    data() {
      return [this.x, ...this.labels.map((label) => this.ys.get(label) || [])];
    }

    // time series: one point per label at time t (seconds); labels not given get a gap
    push(t, values) {
      const labels = Object.keys(values);
      for (const label of labels) {
        if (!this.ys.has(label)) this.ys.set(label, this.x.map(() => null));
      }
      this.x.push(t);
      for (const [label, ys] of this.ys) ys.push(label in values ? values[label] : null);
      if (this.x.length > HISTORY) {
        this.x.shift();
        for (const ys of this.ys.values()) ys.shift();
      }
      const all = [...this.ys.keys()];
      if (!this.plot || all.length !== this.labels.length) this.build(all);
      else this.plot.setData(this.data());
    }

    // x/y curves (one x axis for all)
    set(x, curves) {
      this.x = x;
      this.ys = new Map(Object.entries(curves));
      const labels = Object.keys(curves);
      if (!this.plot || labels.join("\u0000") !== this.labels.join("\u0000")) this.build(labels);
      else this.plot.setData(this.data());
    }
  }

  window.PhotonstreamChart = Chart; // for crystallography.js

  // --- event streams ------------------------------------------------------------------------------------------

  function follow(url, onUpdate, onGone) {
    const source = new EventSource(url, { withCredentials: true });
    source.addEventListener("open", () => live(true));
    source.addEventListener("error", () => live(false));
    source.addEventListener("update", (event) => {
      live(true);
      onUpdate(JSON.parse(event.data));
    });
    source.addEventListener("gone", () => {
      source.close();
      if (onGone) onGone();
    });
    source.addEventListener("logged-out", () => {
      source.close();
      location.href = `/ui/login?next=${encodeURIComponent(location.pathname)}`;
    });
    return source;
  }

  // --- pages --------------------------------------------------------------------------------------------------

  function loginPage() {
    const form = $("login-form");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      $("login-error").textContent = "";
      const response = await fetch("/ui/login", {
        method: "POST",
        credentials: "same-origin",
        headers: { ...CSRF, "Content-Type": "application/json" },
        body: JSON.stringify({ token: $("token").value.trim() }),
      });
      if (!response.ok) {
        let detail = `${response.status}`;
        try {
          detail = (await response.json()).detail || detail;
        } catch (_) { /* not JSON */ }
        $("login-error").textContent = `Not logged in: ${detail}`;
        return;
      }
      const next = new URLSearchParams(location.search).get("next");
      location.href = next && next.startsWith("/ui") && !next.startsWith("//") ? next : "/ui";
    });
  }

  function indexPage() {
    const chart = new Chart($("rates-chart"), { yLabel: "msg/s" });
    follow("/ui/api/events", (data) => {
      $("me").textContent = data.me.identity;
      showMessage(data.buffer_error ? `buffer: ${data.buffer_error}` : "");
      const body = document.querySelector("#streams tbody");
      const rows = data.streams.map((s) => {
        const tr = document.createElement("tr");
        tr.dataset.id = s.id;
        const idCell = document.createElement("td");
        const link = document.createElement("a");
        link.href = `/ui/streams/${encodeURIComponent(s.id)}`;
        link.textContent = s.id.slice(0, 8);
        link.title = s.id;
        idCell.appendChild(link);
        const state = cell(s.state, "");
        state.classList.add("state-cell");
        const badge = document.createElement("span");
        badge.className = `state ${s.state}`;
        badge.textContent = s.state;
        state.textContent = "";
        state.appendChild(badge);
        tr.append(idCell, state, cell(s.owner), cell(s.experiment), cell(s.runs.join(", ")),
          cell(number(s.rate), "num rate"), cell(number(s.received, 0), "num received"),
          cell(number(s.lag, 0), "num lag"), cell(new Date(s.created_at).toLocaleString()));
        return tr;
      });
      body.replaceChildren(...rows);
      $("empty").hidden = rows.length > 0;
      const values = {};
      data.streams.filter((s) => s.state === "streaming").slice(0, 10)
        .forEach((s) => { values[`${s.id.slice(0, 8)} ${s.experiment}`] = s.rate; });
      chart.push(Date.now() / 1000, values);
    });
  }

  function streamPage() {
    const id = decodeURIComponent(location.pathname.split("/").pop());
    $("stream-id").textContent = id;
    const charts = {
      rates: new Chart($("chart-rates"), { yLabel: "msg/s" }),
      lag: new Chart($("chart-lag"), { yLabel: "messages" }),
      losses: new Chart($("chart-losses"), { yLabel: "messages" }),
      latency: new Chart($("chart-latency"), { yLabel: "ms" }),
      hits: new Chart($("chart-hits"), { yLabel: "%" }),
      powder: new Chart($("chart-powder"), { time: false, xLabel: "q (1/Å)", yLabel: "mean intensity" }),
      tof: new Chart($("chart-tof"), { time: false, xLabel: "m/q", yLabel: "hits" }),
    };
    let frameVersion = 0;
    let finished = false;

    const cancel = $("cancel");
    let armedUntil = 0;
    cancel.addEventListener("click", async () => {
      if (Date.now() > armedUntil) { // first click arms the button for five seconds
        armedUntil = Date.now() + 5000;
        cancel.classList.add("armed");
        cancel.textContent = "Click again to cancel";
        setTimeout(() => { cancel.classList.remove("armed"); cancel.textContent = "Cancel stream"; }, 5000);
        return;
      }
      armedUntil = 0;
      cancel.disabled = true;
      const response = await fetch(`/v1/streams/${encodeURIComponent(id)}`, {
        method: "DELETE", headers: CSRF, credentials: "same-origin",
      });
      const body = await response.json().catch(() => ({}));
      if (response.ok) {
        showMessage("");
        $("state").textContent = body.state;
        $("state").className = `state ${body.state}`;
        cancel.textContent = "Cancelled";
      } else {
        cancel.disabled = false;
        showMessage(`Not cancelled: ${body.detail || response.status}`);
      }
    });

    $("logs-button").addEventListener("click", async () => {
      const response = await fetch(`/v1/streams/${encodeURIComponent(id)}/logs?tail=200`, { credentials: "same-origin" });
      const body = await response.json().catch(() => ({}));
      $("logs-card").hidden = false;
      $("logs").textContent = response.ok ? (body.text || "(nothing yet)") : `${response.status}: ${body.detail}`;
    });

    function groupTotals(hops, key) {
      const out = {};
      for (const hop of hops) {
        for (const g of hop.groups) out[g.name] = (out[g.name] || 0) + g[key];
      }
      return out;
    }

    function hopsTable(hops) {
      const rows = [];
      for (const hop of hops) {
        if (!hop.present) {
          const tr = document.createElement("tr");
          tr.append(cell(hop.run), cell("(not in the buffer yet)"));
          rows.push(tr);
          continue;
        }
        for (const g of hop.groups) {
          const tr = document.createElement("tr");
          tr.dataset.group = g.name;
          const balanced = g.in === g.out + g.skipped + g.held;
          tr.append(cell(hop.run), cell(g.name), cell(g.policy), cell(g.members, "num"), cell(number(g.in, 0), "num"),
            cell(number(g.out, 0), "num"), cell(number(g.skipped, 0), "num"), cell(number(g.held, 0), "num"),
            cell(number(g.lag, 0), "num"), cell(number(g.redelivered, 0), "num"), cell(number(g.rate_out), "num"),
            cell(balanced ? "✓" : "≠", balanced ? "good" : "bad"));
          rows.push(tr);
        }
      }
      document.querySelector("#hops tbody").replaceChildren(...rows);
    }

    // the stream's elastic worker pools (GET /v1/streams/{id}/pools, every few seconds): workers as of each pool's
    // newest decision; lag as the buffer shows it now for the pool's group (else as of that decision)
    let pools = [];
    let poolsAsked = 0;
    const POOLS_EVERY_MS = 2000;

    async function fetchPools() {
      if (Date.now() - poolsAsked < POOLS_EVERY_MS) return;
      poolsAsked = Date.now();
      const response = await fetch(`/v1/streams/${encodeURIComponent(id)}/pools?limit=1`, { credentials: "same-origin" })
        .catch(() => null);
      if (!response || !response.ok) return;
      const body = await response.json().catch(() => null);
      if (body && Array.isArray(body.pools)) pools = body.pools;
    }

    function poolsTable(hops) {
      $("pools-card").hidden = pools.length === 0;
      const lagNow = groupTotals(hops.filter((h) => h.present), "lag");
      const rows = pools.map((p) => {
        const tr = document.createElement("tr");
        tr.dataset.pool = p.name;
        const state = cell(p.state, "pool-state");
        const lag = p.state === "running" && p.group in lagNow ? lagNow[p.group] : p.lag;
        tr.append(cell(p.name), cell(p.kind), cell(p.group), state, cell(p.workers, "num workers"),
          cell(`${p.min_workers}–${p.max_workers}`, "num"), cell(number(lag, 0), "num lag"),
          cell(number(p.target_lag, 0), "num"), cell(p.last_action));
        return tr;
      });
      document.querySelector("#pools tbody").replaceChildren(...rows);
    }

    function age(seconds) {
      if (seconds < 1) return "just now";
      if (seconds < 120) return `${Math.round(seconds)} s ago`;
      return `${Math.round(seconds / 60)} min ago`;
    }

    function verdict(hit) {
      return hit === null || hit === undefined ? "" : hit ? "hit" : "miss";
    }

    // swap the image only once the new one has loaded (no flicker); the server sends only full images here
    function load(img, path, version, onLoad) {
      const next = new Image();
      next.onload = () => { img.src = next.src; img.hidden = false; if (onLoad) onLoad(); };
      next.src = `/ui/api/streams/${encodeURIComponent(id)}/${path}?v=${version}`;
    }

    function showFrame(frame) {
      if (!frame) return;
      $("frame-caption").textContent = [`event ${frame.event}`, verdict(frame.hit), `${frame.peaks} peaks`,
        frame.shape.join("×"), age(frame.age_s)].filter(Boolean).join(" · ");
      if (frame.version === frameVersion) return;
      frameVersion = frame.version;
      load($("frame"), "frame.png", frame.version, () => { $("frame-none").hidden = true; });
    }

    let thumbsVersion = 0;
    function showThumbnails(thumbs) {
      $("thumbs-box").hidden = !thumbs;
      if (!thumbs) return;
      const events = thumbs.events;
      const hits = thumbs.hits.filter((h) => h === true).length;
      $("thumbs-caption").textContent = `events ${events[0]}–${events[events.length - 1]}, newest right`
        + (thumbs.hits.some((h) => h !== null) ? ` · ${hits} of ${events.length} hits (green)` : "");
      if (thumbs.version === thumbsVersion) return;
      thumbsVersion = thumbs.version;
      load($("thumbs"), "thumbnails.png", thumbs.version);
    }

    follow(`/ui/api/streams/${encodeURIComponent(id)}/events`, (data) => {
      const t = Date.now() / 1000;
      $("me").textContent = data.me.identity;
      $("state").textContent = data.state;
      $("state").className = `state ${data.state}`;
      $("owner").textContent = data.owner;
      $("experiment").textContent = data.experiment;
      $("runs").textContent = data.runs.join(", ");
      $("rate").textContent = number(data.rate);
      $("lag").textContent = number(data.lag, 0);
      $("reason").textContent = data.reason || "";
      if (data.finished && !finished) {
        finished = true;
        cancel.disabled = true;
      }
      const notes = [];
      if (data.buffer_error) notes.push(`buffer: ${data.buffer_error}`);
      if (data.monitor && data.monitor.error) notes.push(`monitor: ${data.monitor.error}`);
      $("notes").textContent = notes.join(" · ");

      const rates = {};
      data.hops.filter((h) => h.present).forEach((h) => { rates[`buffer in (run ${h.run})`] = h.rate_in; });
      Object.assign(rates, groupTotals(data.hops, "rate_out"));
      charts.rates.push(t, rates);
      charts.lag.push(t, groupTotals(data.hops, "lag"));
      const losses = {};
      for (const [name, n] of Object.entries(groupTotals(data.hops, "skipped"))) losses[`${name} skipped`] = n;
      for (const [name, n] of Object.entries(groupTotals(data.hops, "redelivered"))) losses[`${name} redelivered`] = n;
      charts.losses.push(t, losses);
      hopsTable(data.hops);
      fetchPools().then(() => poolsTable(data.hops));

      const m = data.monitor;
      if (m) {
        charts.latency.push(t, { p50: m.latency.p50_ms, p99: m.latency.p99_ms });
        showFrame(m.frame);
        showThumbnails(m.thumbnails);
        if (m.powder) {
          charts.powder.set(m.powder.q, { intensity: m.powder.intensity });
          $("powder-caption").textContent = `${m.powder.frames} frames sampled`;
        }
        $("tof-none").hidden = Boolean(m.tof);
        if (m.tof) charts.tof.set(m.tof.mq, { hits: m.tof.counts });
      }
      const hits = {};
      if (data.hit_rate !== null) hits["hit rate"] = 100 * data.hit_rate;
      if (data.indexing_rate !== null) hits["indexing rate"] = 100 * data.indexing_rate;
      charts.hits.push(t, hits);
      $("hits-now").textContent = Object.entries(hits).map(([label, value]) => `${label} ${number(value)}%`)
        .join(" · ");
      $("results-caption").textContent = data.results.length ? `latest ${data.results.length}` : "no results channel yet";
      $("results").textContent = data.results.map((r) => JSON.stringify(r)).join("\n");
    }, () => showMessage("This stream is gone, or no longer yours to see."));
  }

  const logoutButton = $("logout");
  if (logoutButton) logoutButton.addEventListener("click", logout);
  const page = document.body.dataset.page;
  if (page === "login") loginPage();
  else if (page === "index") indexPage();
  else if (page === "stream") streamPage();
})();
