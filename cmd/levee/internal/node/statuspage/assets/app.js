// levee status page: polls /status.json and redraws. No dependencies, no
// external requests; every value from the document is set as text, never
// parsed as HTML.
"use strict";

const PRIORITIES = ["critical", "high", "default", "low", "sheddable"];
const COHORTS = 128;
const NUM_LEVELS = PRIORITIES.length * COHORTS;
const WINDOW_S = 300;
const STALE_BEAT_S = 6; // as statuspage.staleHeartbeat

let refreshMs = 1000;
let lastOK = 0;
let lastDoc = null;

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k === "style") e.style.cssText = v; // CSSOM: allowed by the page's CSP, unlike a style attribute
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}

function svg(tag, attrs, ...kids) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}

function rate(x) {
  if (!x) return "0";
  if (x >= 1e6) return (x / 1e6).toFixed(1) + "M";
  if (x >= 1e4) return (x / 1e3).toFixed(0) + "k";
  if (x >= 1e3) return (x / 1e3).toFixed(1) + "k";
  if (x >= 10) return x.toFixed(0);
  return x.toFixed(1);
}

function dur(s) {
  if (s === null || s === undefined) return "—";
  s = Math.max(0, s);
  if (s < 10) return s.toFixed(1) + " s";
  if (s < 120) return Math.round(s) + " s";
  if (s < 7200) return Math.floor(s / 60) + "m " + String(Math.round(s % 60)).padStart(2, "0") + "s";
  return Math.floor(s / 3600) + "h " + String(Math.floor((s % 3600) / 60)).padStart(2, "0") + "m";
}

function ago(t, now) {
  if (!t) return "—";
  return dur((now - Date.parse(t)) / 1000) + " ago";
}

function clock(t) {
  const d = new Date(Date.parse(t));
  return d.toLocaleTimeString([], { hour12: false });
}

function when(t, now) {
  const d = new Date(Date.parse(t));
  const today = new Date(now).toDateString() === d.toDateString();
  return (today ? "" : d.toLocaleDateString() + " ") + clock(t);
}

// levelText says what a threshold admits.
function levelText(l) {
  if (l.level <= 0) return "admits all";
  if (l.level >= NUM_LEVELS) return "refuses all";
  return "admits ≥ " + l.priority + "/" + l.cohort;
}

function priorityOfLevel(level) {
  const band = Math.min(PRIORITIES.length - 1, Math.floor(level / COHORTS));
  return PRIORITIES[PRIORITIES.length - 1 - band];
}

// --- rendering -----------------------------------------------------------
// The alerts come computed in the document (statuspage.Alerts), so that the
// page and `levee ctl top` say the same thing.

function verdict(doc, alerts) {
  const v = document.getElementById("verdict");
  const bad = alerts.some(a => a.level === "bad");
  const warn = alerts.some(a => a.level === "warn");
  v.className = "pill " + (bad ? "pill-bad" : warn ? "pill-warn" : "pill-ok");
  v.textContent = bad ? "attention" : warn ? "degraded" : "healthy";
}

function last(hist, field) {
  return hist && hist.length ? hist[hist.length - 1][field] : 0;
}

function secondsUntil(t, now) {
  return t ? (Date.parse(t) - now) / 1000 : null;
}

function renderAlerts(alerts, stale) {
  const box = document.getElementById("alerts");
  const kids = [];
  if (stale) kids.push(el("div", { class: "alert alert-bad", text: stale }));
  for (const a of alerts) kids.push(el("div", { class: "alert alert-" + a.level, text: a.text }));
  box.replaceChildren(...kids);
}

function renderMembers(doc, now) {
  const body = document.querySelector("#members tbody");
  const self = doc.members.find(m => m.self);
  const cfgRef = self ? self.config.version : 0;
  const rows = doc.members.map(m => {
    const tr = el("tr", { class: [m.state === "gone" ? "gone" : "", m.self ? "self" : ""].join(" ").trim(), "data-member": m.id, "data-state": m.state });
    tr.append(el("td", { class: "node", text: m.id }));
    const stateText = m.state === "gone" ? "gone " + ago(m.gone_since, now) : m.state === "no_status" ? "no status" : "up";
    tr.append(el("td", {}, el("span", { class: "state state-" + m.state }, el("span", { class: "dot" }), stateText)));
    tr.append(el("td", { class: "mono", text: m.addr }));
    tr.append(el("td", { class: "num", text: m.state === "gone" ? "—" : (m.ring_share * 100).toFixed(1) + "%" }));
    const cfg = el("td", {});
    const vs = el("span", { class: m.config.version !== cfgRef && m.state !== "gone" ? "cfg-mismatch" : "", text: "v" + m.config.version });
    cfg.append(vs);
    if (m.config.hash) cfg.append(el("span", { class: "muted mono", text: " " + m.config.hash.slice(0, 8) }));
    if (m.config.source) cfg.append(el("span", { class: "muted", text: " " + m.config.source }));
    if (m.config.error) cfg.append(el("div", { class: "cfg-error small", text: "refused: " + m.config.error }));
    tr.append(cfg);
    tr.append(el("td", { class: "num", text: m.state === "gone" ? "—" : rate(m.decisions_per_second) }));
    const chips = el("div", { class: "chips" });
    for (const p of PRIORITIES) {
      const v = (m.refusals_per_second || {})[p] || 0;
      if (v > 0 && m.state !== "gone") chips.append(el("span", { class: "chip hot p-" + p, text: `${p} ${rate(v)}` }));
    }
    if (!chips.childNodes.length) chips.append(el("span", { class: "muted", text: "none" }));
    tr.append(el("td", {}, chips));
    const beat = m.self ? "live" : m.heartbeat_age_seconds === undefined ? "never" : dur(m.heartbeat_age_seconds) + " ago";
    tr.append(el("td", { class: "num " + (!m.self && m.heartbeat_age_seconds > STALE_BEAT_S ? "stale-beat" : ""), text: beat }));
    const th = el("div", { class: "chips" });
    for (const t of m.thresholds || []) {
      const shedding = t.priority !== "sheddable" || t.cohort > 0;
      const c = el("span", { class: "chip" + (t.pinned ? " pin" : shedding ? " hot" : ""), text: `${t.resource} ${shedding ? "≥ " + t.priority + "/" + t.cohort : "all"}${t.pinned ? " (pinned)" : ""}` });
      th.append(c);
    }
    tr.append(el("td", {}, th));
    if (m.error && m.state !== "no_status") tr.title = m.error;
    return tr;
  });
  if (!rows.length) rows.push(el("tr", {}, el("td", { class: "empty", colspan: 9, text: "no members" })));
  body.replaceChildren(...rows);
  const live = doc.members.filter(m => m.state !== "gone");
  const up = doc.members.filter(m => m.state === "up").length;
  const dps = live.reduce((a, m) => a + (m.decisions_per_second || 0), 0);
  const rps = live.reduce((a, m) => a + Object.values(m.refusals_per_second || {}).reduce((x, y) => x + y, 0), 0);
  let count = `${up} of ${doc.members.length} up · ${rate(dps)} decisions/s · ${rate(rps)} shed refusals/s`;
  if (doc.peer) {
    count += ` · this node, keys other nodes own: ${rate(doc.peer.forwarded_per_second)}/s forwarded, ` +
      `${rate(doc.peer.from_leases_per_second)}/s from leases, ${rate(doc.peer.fallbacks_per_second)}/s by failure_mode`;
  }
  document.getElementById("members-count").textContent = count;
}

function chart(r, now) {
  const W = 640, H = 176, L = 58, R = 6, T1 = 4, H1 = 90, G = 16, H2 = 52;
  const T2 = T1 + H1 + G;
  const x = t => L + ((Date.parse(t) - (now - WINDOW_S * 1000)) / (WINDOW_S * 1000)) * (W - L - R);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": `${r.name}: threshold and admission rates, last 5 minutes` });
  const hist = r.history || [];
  // Rates pane.
  let max = 1;
  for (const p of hist) max = Math.max(max, p.admitted_per_second, p.refused_per_second);
  const y1 = v => T1 + H1 - (v / max) * H1;
  root.append(svg("rect", { x: L, y: T1, width: W - L - R, height: H1, fill: "#0f1216", stroke: "#2a3038" }));
  root.append(svg("text", { x: L - 4, y: T1 + 9, "text-anchor": "end" }, document.createTextNode(rate(max) + "/s")));
  root.append(svg("text", { x: L - 4, y: T1 + H1, "text-anchor": "end" }, document.createTextNode("0")));
  const series = (field, color) => {
    if (hist.length < 2) return;
    let d = "", a = "";
    hist.forEach((p, i) => {
      const px = x(p.t).toFixed(1), py = y1(p[field]).toFixed(1);
      d += (i ? "L" : "M") + px + " " + py;
    });
    a = d + `L${x(hist[hist.length - 1].t).toFixed(1)} ${T1 + H1}L${x(hist[0].t).toFixed(1)} ${T1 + H1}Z`;
    root.append(svg("path", { d: a, fill: color, "fill-opacity": "0.15", stroke: "none" }));
    root.append(svg("path", { d, fill: "none", stroke: color, "stroke-width": "1.5" }));
  };
  series("admitted_per_second", "#3ecf8e");
  series("refused_per_second", "#ff5d5d");
  // Threshold pane: priority bands, the refused zone below the threshold.
  const y2 = l => T2 + H2 - (Math.min(l, NUM_LEVELS) / NUM_LEVELS) * H2;
  const short = { critical: "crit", high: "high", default: "dflt", low: "low", sheddable: "shed" };
  PRIORITIES.forEach((p, i) => {
    const band = PRIORITIES.length - 1 - i;
    const top = y2((band + 1) * COHORTS), bot = y2(band * COHORTS);
    root.append(svg("rect", { x: L, y: top, width: W - L - R, height: bot - top, fill: i % 2 ? "#13171c" : "#0f1216" }));
    root.append(svg("text", { x: L - 4, y: (top + bot) / 2 + 3, "text-anchor": "end", class: "p-" + p }, document.createTextNode(short[p])));
  });
  if (hist.length) {
    let d = "";
    hist.forEach((p, i) => {
      const px = x(p.t).toFixed(1), py = y2(p.threshold_level).toFixed(1);
      d += i ? `H${px}V${py}` : `M${px} ${py}`;
    });
    d += `H${(W - R).toFixed(1)}`;
    const zone = d + `V${T2 + H2}H${x(hist[0].t).toFixed(1)}Z`;
    root.append(svg("path", { d: zone, fill: "#ff5d5d", "fill-opacity": "0.25", stroke: "none" }));
    root.append(svg("path", { d, fill: "none", stroke: "#ff5d5d", "stroke-width": "2" }));
  }
  root.append(svg("rect", { x: L, y: T2, width: W - L - R, height: H2, fill: "none", stroke: "#2a3038" }));
  for (let m = 5; m >= 0; m--) {
    const px = L + ((WINDOW_S - m * 60) / WINDOW_S) * (W - L - R);
    root.append(svg("text", { x: px, y: H - 2, "text-anchor": m === 0 ? "end" : m === 5 ? "start" : "middle" }, document.createTextNode(m ? `-${m}m` : "now")));
  }
  return root;
}

function renderResources(doc, now) {
  const box = document.getElementById("resources");
  const cards = doc.resources.map(r => {
    const card = el("div", { class: "card" + (r.shedding && !r.shadow ? " shedding" : "") + (r.pinned ? " pinned" : ""), "data-resource": r.name });
    const th = el("span", { class: "threshold " + (r.threshold.level <= 0 ? "all" : "p-" + priorityOfLevel(r.threshold.level)), text: levelText(r.threshold) });
    const badges = el("div", { class: "badges" });
    if (r.pinned) badges.append(el("span", { class: "badge pin", text: "override " + dur(secondsUntil(r.pinned_until, now)) }));
    if (r.overloaded) badges.append(el("span", { class: "badge over", text: "overloaded" }));
    if (r.shadow) badges.append(el("span", { class: "badge shadow", text: "shadow" }));
    card.append(el("div", { class: "card-head" }, el("span", { class: "name", text: r.name }), th, badges));
    const facts = el("div", { class: "facts" });
    const inflight = el("span", {}, "in flight ", el("b", { text: String(r.inflight) }));
    if (r.concurrency_limit > 0) {
      inflight.append(" / ", el("b", { text: String(r.concurrency_limit) }));
      const frac = Math.min(1, r.inflight / r.concurrency_limit);
      const bar = el("span", { class: "bar" + (frac >= 0.95 ? " full" : "") }, el("span", { style: `width:${(frac * 100).toFixed(0)}%` }));
      inflight.append(bar);
    }
    facts.append(inflight);
    facts.append(el("span", {}, "admitted ", el("b", { text: rate(last(r.history, "admitted_per_second")) + "/s" })));
    facts.append(el("span", {}, "refused ", el("b", { text: rate(last(r.history, "refused_per_second")) + "/s" })));
    facts.append(el("span", {}, "queue delay ", el("b", { text: (r.queue_delay_seconds * 1000).toFixed(1) + " ms" })));
    if (r.auto_threshold.level !== r.threshold.level) facts.append(el("span", {}, "controller ", el("b", { text: levelText(r.auto_threshold) })));
    card.append(facts);
    card.append(chart(r, now));
    card.append(el("div", { class: "legend" },
      el("span", {}, el("i", { style: "background:#3ecf8e" }), "admitted/s"),
      el("span", {}, el("i", { style: "background:#ff5d5d" }), "refused/s · threshold (shaded: refused)")));
    return card;
  });
  if (!cards.length) cards.push(el("div", { class: "muted", text: "no protected resources in the shedding policy" }));
  box.replaceChildren(...cards);
}

function renderOverrides(doc) {
  const body = document.querySelector("#overrides tbody");
  const rows = doc.overrides.map(o => el("tr", { "data-override": o.resource },
    el("td", { text: o.resource }),
    el("td", { class: "p-" + o.min_priority, text: o.min_priority + " and above" }),
    el("td", { class: "num", text: dur(o.seconds_left) }),
    el("td", { text: o.author }),
    el("td", { text: o.reason })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { class: "empty", colspan: 5, text: "none" })));
  body.replaceChildren(...rows);
}

function renderConfig(doc, now) {
  const c = doc.config;
  document.getElementById("config-version").textContent = `this node runs v${c.version}` + (c.error ? ` · refused: ${c.error}` : "");
  const body = document.querySelector("#changes tbody");
  const rows = c.changes.map(ch => el("tr", {},
    el("td", { class: "num", text: "v" + ch.version + (ch.rollback_of ? ` (rollback to v${ch.rollback_of})` : "") }),
    el("td", { text: `${when(ch.time, now)} (${ago(ch.time, now)})` }),
    el("td", { text: ch.author }),
    el("td", { text: ch.reason })));
  if (!rows.length) rows.push(el("tr", {}, el("td", { class: "empty", colspan: 4, text: doc.clustered ? "no stored versions" : "standalone node: rule files, no stored versions" })));
  body.replaceChildren(...rows);
}

function render(doc, stale) {
  const now = Date.parse(doc.generated_at);
  document.getElementById("node").textContent = doc.node;
  document.querySelectorAll(".node-name").forEach(e => { e.textContent = doc.node; });
  document.getElementById("mode").textContent = doc.clustered ? "" : "(standalone)";
  const alerts = doc.alerts || [];
  renderAlerts(alerts, stale);
  verdict(doc, stale ? alerts.concat([{ level: "bad" }]) : alerts);
  renderMembers(doc, now);
  renderResources(doc, now);
  renderOverrides(doc);
  renderConfig(doc, now);
  document.title = (stale || alerts.some(a => a.level === "bad") ? "⚠ " : "") + "levee status · " + doc.node;
}

function freshness() {
  const f = document.getElementById("fresh");
  if (!lastOK) return;
  const age = (Date.now() - lastOK) / 1000;
  const stale = age > 3 * refreshMs / 1000 + 1;
  f.className = stale ? "stale" : "muted";
  f.textContent = stale ? `NO DATA for ${dur(age)}: this node does not answer` : `updated ${new Date(lastOK).toLocaleTimeString([], { hour12: false })}`;
  return stale ? `This node has not answered for ${dur(age)}: the figures below are from ${new Date(lastOK).toLocaleTimeString([], { hour12: false })}. Open another node's /status.` : null;
}

async function tick() {
  try {
    const resp = await fetch("/status.json", { cache: "no-store" });
    if (resp.ok) {
      lastDoc = await resp.json();
      lastOK = Date.now();
      if (lastDoc.refresh_seconds > 0) refreshMs = lastDoc.refresh_seconds * 1000;
    }
  } catch (e) {
    // The node is unreachable; freshness() says so.
  }
  const stale = freshness();
  if (lastDoc) render(lastDoc, stale);
  document.body.dataset.refreshed = String(Date.now());
  setTimeout(tick, refreshMs);
}

tick();
