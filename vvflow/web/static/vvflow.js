// vvflow's web page: refreshes the overview and the Now page in place by polling
// /api/overview. Data only ever reaches the page as text (textContent), never as HTML.
"use strict";

(function () {
  const main = document.querySelector("main[data-poll]");
  if (!main) return;
  const url = main.dataset.poll;
  const every = Number(main.dataset.pollMs) || 2000;

  function el(tag, text, attrs) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    return node;
  }

  function duration(seconds) {
    if (typeof seconds !== "number") return "-";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 120) return s + "s";
    if (s < 7200) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h" + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
  }

  function size(count) {
    if (typeof count !== "number") return "?";
    if (count < 1024) return count + " B";
    let value = count;
    for (const unit of ["KiB", "MiB", "GiB", "TiB"]) {
      value /= 1024;
      if (value < 1024 || unit === "TiB") return value.toFixed(1) + " " + unit;
    }
    return "?";
  }

  function videoLink(name, href) {
    return el("a", name, { class: "video", href: href });
  }

  function fill(key, items, row) {
    const body = document.querySelector('tbody[data-rows="' + key + '"]');
    if (!body) return;
    body.replaceChildren(...items.map(row));
    const empty = document.querySelector('[data-empty="' + key + '"]');
    if (empty) empty.hidden = items.length > 0;
  }

  function nowRow(p) {
    const tr = el("tr", null, { "data-video": p.name });
    const name = el("td");
    name.append(videoLink(p.name, p.url));
    const stage = el("td", p.stage || "-", { class: "stage" });
    if (p.activity === "waiting") {
      stage.append(" ", el("span", "waiting for " + (p.waiting_for || ["a slot"]).join(", "), { class: "waiting" }));
    }
    const elapsed = el("td", duration(p.for_s), { class: "elapsed" });
    if (typeof p.stage_for_s === "number") {
      elapsed.append(" ", el("span", "(stage " + duration(p.stage_for_s) + ")", { class: "muted" }));
    }
    const progress = el("td", null, { class: "progress" });
    if (typeof p.progress === "number") {
      progress.append(el("progress", null, { max: "1", value: String(p.progress) }),
                      " " + Math.round(100 * p.progress) + "%");
    } else {
      progress.append("-");
    }
    if (p.message) progress.append(" ", el("span", p.message, { class: "muted" }));
    tr.append(name, stage, el("td", p.attempt === null || p.attempt === undefined ? "-" : p.attempt,
                               { class: "attempt" }),
              elapsed, progress, el("td", p.instance, { class: "instance" }));
    return tr;
  }

  function instanceRow(i) {
    const tr = el("tr", null, { "data-instance": i.name });
    const runs = el("td");
    if (!i.videos.length) runs.append("-");
    i.videos.forEach((v, n) => {
      if (n) runs.append(", ");
      runs.append(videoLink(v.name, v.url));
      if (v.stage) runs.append(" (" + v.stage + ")");
    });
    tr.append(el("td", i.name), el("td", i.state), el("td", duration(i.heartbeat_age_s)), runs);
    return tr;
  }

  function reasonRow(item) {
    const tr = el("tr");
    tr.append(el("td", item.name), el("td", item.reason));
    return tr;
  }

  function setField(key, value) {
    document.querySelectorAll('[data-field="' + key + '"]').forEach((node) => {
      node.textContent = value === null || value === undefined ? "" : String(value);
    });
  }

  function show(selector, visible) {
    document.querySelectorAll(selector).forEach((node) => { node.hidden = !visible; });
  }

  function update(data) {
    for (const [state, count] of Object.entries(data.counts)) {
      document.querySelectorAll('[data-count="' + state + '"]').forEach((node) => {
        node.textContent = String(count);
      });
    }
    const paused = data.paused;
    show("#paused-banner, form#resume", !!paused);
    show("#running-banner, form#pause", !paused);
    setField("paused.since", paused ? paused.since : "");
    setField("paused.by", paused ? paused.by || "?" : "");
    setField("paused.reason", paused ? paused.reason || "no reason given" : "");
    const storage = data.storage || {};
    show("[data-storage-trouble]", !!storage.trouble);
    setField("storage.trouble", storage.trouble || "");
    setField("storage.free", size(storage.free_bytes));
    setField("storage.min", size(storage.min_free_bytes));
    const outbox = data.outbox || {};
    for (const kind of ["ready", "rejected", "dropped"]) setField("outbox." + kind, outbox[kind] || 0);
    fill("now", data.now, nowRow);
    fill("instances", data.instances, instanceRow);
    fill("blocked", data.blocked, reasonRow);
    fill("ignored", data.ignored, reasonRow);
    document.querySelectorAll("[data-live]").forEach((node) => {
      node.textContent = "as of " + data.time;
      node.classList.remove("stale");
    });
  }

  function stale(why) {
    document.querySelectorAll("[data-live]").forEach((node) => {
      node.textContent = "not refreshed: " + why;
      node.classList.add("stale");
    });
  }

  async function poll() {
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store",
                                          headers: { Accept: "application/json" } });
      if (response.ok) update(await response.json());
      else stale("HTTP " + response.status);
    } catch (err) {
      stale("cannot reach vvflow");
    }
    setTimeout(poll, every);
  }

  setTimeout(poll, every);
})();
