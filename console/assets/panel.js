// devicelink panel: live updates on top of pages that work without this script. It reads only
// same-origin panel endpoints, authenticated by the session cookie.
"use strict";

(function () {
  const SOON_SECS = 15 * 60;
  const RUNNING = new Set(["ready", "pending"]);

  function duration(secs) {
    const d = Math.floor(secs / 86400), h = Math.floor(secs / 3600) % 24,
      m = Math.floor(secs / 60) % 60, s = secs % 60, two = (n) => String(n).padStart(2, "0");
    if (d > 0) return `${d}d ${h}h`;
    if (h > 0) return `${h}h ${two(m)}m`;
    if (m > 0) return `${m}m ${two(s)}s`;
    return `${s}s`;
  }

  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let v = n, u = 0;
    while (v >= 1024 && u < units.length - 1) { v /= 1024; u++; }
    return u === 0 ? `${n} B` : `${v.toFixed(1)} ${units[u]}`;
  }

  // An IPv4 client as people write it, not IPv4-mapped IPv6.
  function client(address) {
    const mapped = /^\[::ffff:(\d+\.\d+\.\d+\.\d+)\]:(\d+)$/.exec(address);
    return mapped ? `${mapped[1]}:${mapped[2]}` : address;
  }

  function secondsUntil(at) {
    return Math.max(0, Math.floor((Date.parse(at) - Date.now()) / 1000));
  }

  // Time left, counted down every second; the "expires soon" mark follows it.
  function tick() {
    for (const el of document.querySelectorAll("[data-expires-at]")) {
      const at = el.dataset.expiresAt;
      if (!at) continue;
      const left = secondsUntil(at);
      el.textContent = left > 0 ? duration(left) : "expiring…";
      const mark = el.parentElement.querySelector(".soon-mark");
      if (mark) mark.hidden = left > SOON_SECS;
      const row = el.closest("tr");
      if (row) row.classList.toggle("soon", left <= SOON_SECS);
    }
    for (const el of document.querySelectorAll("[data-since]")) {
      el.textContent = duration(Math.max(0, Math.floor((Date.now() - Date.parse(el.dataset.since)) / 1000)));
    }
  }

  function setState(el, state) {
    if (!el || el.textContent === state) return;
    el.textContent = state;
    el.className = `state state-${state}`;
  }

  function setExpiry(el, status) {
    if (!el) return;
    const running = RUNNING.has(status.state) && status.expiresAt;
    el.dataset.expiresAt = running ? status.expiresAt : "";
    if (!running) {
      el.textContent = status.state === "expired" ? "expired" : "—";
      const mark = el.parentElement.querySelector(".soon-mark");
      if (mark) mark.hidden = true;
      const row = el.closest("tr");
      if (row) row.classList.remove("soon");
    }
  }

  async function getJson(url) {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!response.ok || !(response.headers.get("content-type") || "").includes("json")) {
      throw new Error(`${url}: ${response.status}`);
    }
    return response.json();
  }

  function copyButtons() {
    for (const button of document.querySelectorAll("button[data-copy]")) {
      const target = document.getElementById(button.dataset.copy);
      if (!target) continue;
      button.hidden = false;
      button.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(target.textContent.trim());
          button.textContent = "Copied";
        } catch (_) {
          const range = document.createRange();
          range.selectNodeContents(target);
          const selection = window.getSelection();
          selection.removeAllRanges();
          selection.addRange(range);
          button.textContent = "Selected: press Ctrl+C";
        }
        setTimeout(() => { button.textContent = "Copy"; }, 2000);
      });
    }
  }

  // The list: each row's state, endpoint, time left, sessions and bytes, every two seconds.
  function liveList(table) {
    const params = new URLSearchParams(window.location.search);
    params.set("namespace", table.dataset.namespace);
    const url = `/panel/data/links?${params}`;
    async function refresh() {
      try {
        const list = await getJson(url);
        const shown = [...table.querySelectorAll("tbody tr")].map((r) => r.dataset.link).join(",");
        const now = list.items.map((l) => l.name).join(",");
        document.getElementById("list-changed").hidden = shown === now;
        for (const link of list.items) {
          const row = table.querySelector(`tr[data-link="${CSS.escape(link.name)}"]`);
          if (!row) continue;
          const s = link.status;
          setState(row.querySelector('[data-field="state"]'), s.state);
          row.querySelector('[data-field="endpoint"]').textContent = s.endpoint || "—";
          setExpiry(row.querySelector('[data-field="time-left"]'), s);
          row.querySelector('[data-field="sessions"]').textContent = String(s.activeSessions);
          row.querySelector('[data-field="bytes"]').textContent = bytes(s.bytesToDevice + s.bytesFromDevice);
        }
      } catch (_) { /* the next round tries again */ }
    }
    setInterval(refresh, 2000);
  }

  // The link page: state, counters and sessions every second, the chart, and the timeline from
  // the event stream.
  function liveLink(page) {
    const ns = encodeURIComponent(page.dataset.namespace), name = encodeURIComponent(page.dataset.name);
    const href = page.dataset.href;
    const sessionsTable = document.getElementById("sessions");
    const canOperate = sessionsTable && sessionsTable.dataset.canOperate === "true";
    const csrfInput = document.querySelector('input[name="csrf"]');
    const samples = [];
    const WINDOW_MS = 5 * 60 * 1000;
    const SMOOTH_MS = 3000;

    function cell(label, text, code) {
      const td = document.createElement("td");
      td.dataset.label = label;
      if (code) {
        const c = document.createElement("code");
        c.textContent = text;
        td.appendChild(c);
      } else {
        td.textContent = text;
      }
      return td;
    }

    function showSessions(sessions) {
      if (!sessionsTable || !sessions) return;
      const body = sessionsTable.tBodies[0];
      const ids = sessions.map((s) => s.id).join(",");
      if (body.dataset.ids === ids) {
        for (const s of sessions) {
          const row = body.querySelector(`tr[data-session="${CSS.escape(s.id)}"]`);
          if (!row) continue;
          row.cells[2].textContent = bytes(s.bytesToDevice);
          row.cells[3].textContent = bytes(s.bytesFromDevice);
        }
        return;
      }
      body.dataset.ids = ids;
      body.replaceChildren();
      for (const s of sessions) {
        const row = document.createElement("tr");
        row.dataset.session = s.id;
        row.appendChild(cell("Client", client(s.client), true));
        const since = cell("Open for", "");
        since.dataset.since = s.since;
        row.appendChild(since);
        row.appendChild(cell("To device", bytes(s.bytesToDevice)));
        row.appendChild(cell("From device", bytes(s.bytesFromDevice)));
        if (canOperate && csrfInput) {
          const td = document.createElement("td");
          const form = document.createElement("form");
          form.method = "post";
          form.action = `${href}/sessions/close`;
          form.className = "inline";
          for (const [n, v] of [["csrf", csrfInput.value], ["id", s.id]]) {
            const input = document.createElement("input");
            input.type = "hidden"; input.name = n; input.value = v;
            form.appendChild(input);
          }
          const button = document.createElement("button");
          button.type = "submit"; button.className = "quiet danger"; button.textContent = "Close";
          button.setAttribute("aria-label", `Close the session of ${s.client}`);
          form.appendChild(button);
          td.appendChild(form);
          row.appendChild(td);
        }
        body.appendChild(row);
      }
      sessionsTable.hidden = sessions.length === 0;
      document.getElementById("sessions-empty").hidden = sessions.length !== 0;
      tick();
    }

    function chart(total) {
      const now = Date.now();
      samples.push({ t: now, total });
      while (samples.length && samples[0].t < now - WINDOW_MS) samples.shift();
      // Each point is the rate over the last few seconds: the counters move in steps.
      const rates = [];
      for (let i = 1, j = 0; i < samples.length; i++) {
        while (j < i - 1 && samples[i].t - samples[j + 1].t >= SMOOTH_MS) j++;
        const dt = (samples[i].t - samples[j].t) / 1000;
        rates.push({ t: samples[i].t, rate: dt > 0 ? Math.max(0, samples[i].total - samples[j].total) / dt : 0 });
      }
      if (!rates.length) return;
      const peak = Math.max(1, ...rates.map((r) => r.rate));
      // The time axis grows with the samples, from one minute up to the whole window.
      const span = Math.min(WINDOW_MS, Math.max(60 * 1000, now - samples[0].t));
      const points = rates.map((r) => {
        const x = 300 - ((now - r.t) / span) * 300;
        const y = 78 - (r.rate / peak) * 74;
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      });
      document.getElementById("traffic-line").setAttribute("points", points.join(" "));
      const left = points[0].split(",")[0], right = points[points.length - 1].split(",")[0];
      document.getElementById("traffic-area")
        .setAttribute("points", `${left},78 ${points.join(" ")} ${right},78`);
      const last = rates[rates.length - 1].rate;
      document.getElementById("traffic-now").textContent =
        `Now ${bytes(Math.round(last))}/s, peak ${bytes(Math.round(peak))}/s over the last ${Math.ceil((now - samples[0].t) / 60000)} min.`;
    }

    async function refresh() {
      try {
        const { link, sessions } = await getJson(`/panel/data/links/${ns}/${name}`);
        const s = link.status;
        setState(document.getElementById("link-state"), s.state);
        document.getElementById("link-endpoint").textContent = s.endpoint || "—";
        document.getElementById("link-expires-at").textContent = s.expiresAt || "—";
        setExpiry(document.getElementById("link-time-left"), s);
        document.getElementById("link-to-device").textContent = bytes(s.bytesToDevice);
        document.getElementById("link-from-device").textContent = bytes(s.bytesFromDevice);
        showSessions(sessions);
        chart(s.bytesToDevice + s.bytesFromDevice);
      } catch (_) { /* the next round tries again */ }
    }

    const timeline = document.getElementById("timeline");
    const events = new EventSource(`/panel/events/${ns}/${name}?after=${page.dataset.lastSeq}`);
    events.onmessage = (message) => {
      let event;
      try { event = JSON.parse(message.data); } catch (_) { return; }
      const li = document.createElement("li");
      const time = document.createElement("time");
      time.dateTime = event.at; time.textContent = event.at;
      const kind = document.createElement("strong");
      kind.textContent = event.kind.replaceAll("_", " ");
      const actor = document.createElement("span");
      actor.className = "muted"; actor.textContent = `by ${event.actor}`;
      li.append(time, " ", kind, " ", actor);
      if (event.detail) li.append(` — ${event.detail}`);
      timeline.prepend(li);
      refresh();
    };
    refresh();
    setInterval(refresh, 1000);
  }

  document.addEventListener("DOMContentLoaded", () => {
    copyButtons();
    // A refused form: the summary of what to put right is read out first.
    const refused = document.getElementById("form-errors");
    if (refused) refused.focus();
    tick();
    setInterval(tick, 1000);
    const table = document.getElementById("links");
    if (table) liveList(table);
    const page = document.getElementById("link-page");
    if (page) liveLink(page);
  });
})();
