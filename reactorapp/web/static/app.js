// The reactorapp dashboard: plain JavaScript against the JSON API, no build step.
"use strict";

const API = "/api/v1";
const RATE_SAMPLES = 120;   // one a second: two minutes of history
const MAX_EVENTS = 100;

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props || {});
  for (const child of children) {
    node.append(child);
  }
  return node;
}

async function getJSON(path) {
  const response = await fetch(API + path, {headers: {"Accept": "application/json"}});
  if (!response.ok) {
    throw new Error(`${path}: HTTP ${response.status}`);
  }
  return response.json();
}

function setStatus(text, bad) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("bad", Boolean(bad));
}

function formatUptime(seconds) {
  seconds = Math.floor(seconds);
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
  const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s}s`;
  return `${s}s`;
}

function formatTick(value) {
  return Number.isInteger(value) ? value.toString() : value.toFixed(2).replace(/0+$/, "");
}

function formatRate(value) {
  return value >= 100 ? Math.round(value).toString() : value.toFixed(1);
}

// -- message rates: polled totals, differentiated, drawn on a canvas ------

const rates = {in: [], out: [], last: null};

function recordRates(stats) {
  const now = performance.now() / 1000;
  const totals = {in: stats.messages.received, out: stats.messages.sent};
  if (rates.last) {
    const dt = Math.max(now - rates.last.time, 0.001);
    for (const key of ["in", "out"]) {
      rates[key].push(Math.max(0, (totals[key] - rates.last[key]) / dt));
      if (rates[key].length > RATE_SAMPLES) rates[key].shift();
    }
  }
  rates.last = {time: now, ...totals};
}

function niceCeiling(value) {
  if (value <= 1) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (step * magnitude >= value) return step * magnitude;
  }
  return 10 * magnitude;
}

function drawChart() {
  const canvas = $("rate-chart");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
    canvas.width = Math.round(width * ratio);
    canvas.height = Math.round(height * ratio);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);

  const left = 48, right = 8, top = 8, bottom = 20;
  const plotW = width - left - right, plotH = height - top - bottom;
  const peak = niceCeiling(Math.max(0, ...rates.in, ...rates.out));
  const styles = getComputedStyle(document.documentElement);

  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = styles.getPropertyValue("--muted");
  ctx.strokeStyle = styles.getPropertyValue("--line");
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const y = top + plotH - plotH * i / 4;
    ctx.beginPath();
    ctx.moveTo(left, Math.round(y) + 0.5);
    ctx.lineTo(left + plotW, Math.round(y) + 0.5);
    ctx.stroke();
    ctx.fillText(formatTick(peak * i / 4), left - 6, y);
  }
  ctx.textAlign = "left";
  ctx.textBaseline = "alphabetic";
  ctx.fillText(`-${RATE_SAMPLES}s`, left, height - 4);
  ctx.textAlign = "right";
  ctx.fillText("now", left + plotW, height - 4);

  const series = [[rates.in, styles.getPropertyValue("--in")], [rates.out, styles.getPropertyValue("--out")]];
  for (const [values, colour] of series) {
    if (values.length < 2) continue;
    ctx.beginPath();
    ctx.strokeStyle = colour;
    ctx.lineWidth = 2;
    const offset = RATE_SAMPLES - values.length;
    values.forEach((value, i) => {
      const x = left + plotW * (offset + i) / (RATE_SAMPLES - 1);
      const y = top + plotH - plotH * value / peak;
      if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

async function refreshStats() {
  try {
    const stats = await getJSON("/stats");
    recordRates(stats);
    const n = rates.in.length;
    $("summary-clients").textContent = stats.clients.connected;
    $("summary-in").textContent = n ? formatRate(rates.in[n - 1]) : "–";
    $("summary-out").textContent = n ? formatRate(rates.out[n - 1]) : "–";
    $("summary-retained").textContent = stats.retained;
    $("summary-dropped").textContent = stats.messages.dropped;
    $("summary-uptime").textContent = formatUptime(stats.uptime);
    setStatus("live");
  } catch (error) {
    setStatus("cannot reach the hub", true);
  }
  drawChart();
}

// -- clients ----------------------------------------------------------------

async function disconnect(clientId) {
  const response = await fetch(`${API}/clients/${encodeURIComponent(clientId)}`, {method: "DELETE"});
  if (!response.ok && response.status !== 404) {
    setStatus(`could not disconnect ${clientId}`, true);
  }
  refreshClients();
}

async function refreshClients() {
  let clients;
  try {
    clients = await getJSON("/clients");
  } catch (error) {
    return;
  }
  const rows = clients.map((client) => {
    const button = el("button", {type: "button", className: "small", textContent: "Disconnect"});
    button.addEventListener("click", () => disconnect(client.client_id));
    const subscriptions = Object.entries(client.subscriptions)
      .map(([filter, qos]) => `${filter} (${qos})`).join(", ");
    const row = el("tr", {},
      el("td", {textContent: client.client_id}),
      el("td", {textContent: [client.front_end, client.protocol_version && `MQTT ${client.protocol_version}`]
        .filter(Boolean).join(", ")}),
      el("td", {textContent: client.peer || ""}),
      el("td", {textContent: subscriptions}),
      el("td", {className: "num", textContent: client.inflight}),
      el("td", {className: "num", textContent: client.queued}),
      el("td", {}, button));
    row.dataset.clientId = client.client_id;
    return row;
  });
  $("clients").tBodies[0].replaceChildren(...rows);
  $("clients-empty").hidden = rows.length > 0;
}

// -- named event-stream sessions ----------------------------------------------

async function refreshStreamSessions() {
  let sessions;
  try {
    sessions = (await getJSON("/sessions")).filter((session) => session.kind === "stream");
  } catch (error) {
    return;
  }
  const rows = sessions.map((session) => {
    const filters = Object.entries(session.subscriptions)
      .map(([filter, qos]) => `${filter} (${qos})`).join(", ");
    const expires = session.expires_in === null ? "–" : formatUptime(session.expires_in);
    const row = el("tr", {},
      el("td", {textContent: session.name}),
      el("td", {textContent: session.owner || ""}),
      el("td", {textContent: session.connected ? "attached" : "away"}),
      el("td", {textContent: filters}),
      el("td", {className: "num", textContent: session.unacknowledged}),
      el("td", {className: "num", textContent: session.queued}),
      el("td", {className: "num", textContent: expires}));
    row.dataset.session = session.name;
    return row;
  });
  $("stream-sessions").tBodies[0].replaceChildren(...rows);
  $("stream-sessions-empty").hidden = rows.length > 0;
}

// -- shared subscriptions ------------------------------------------------------

async function refreshShared() {
  let groups;
  try {
    groups = await getJSON("/shared");
  } catch (error) {
    return;
  }
  const rows = groups.map((group) => {
    const members = group.members
      .map((member) => `${member.kind} ${member.name} (${member.state})`).join(", ");
    const row = el("tr", {},
      el("td", {textContent: group.group}),
      el("td", {textContent: group.filter}),
      el("td", {textContent: members}),
      el("td", {className: "num", textContent: group.deliveries}),
      el("td", {className: "num", textContent: group.handed_over}));
    row.dataset.share = `$share/${group.group}/${group.filter}`;
    return row;
  });
  $("shared").tBodies[0].replaceChildren(...rows);
  $("shared-empty").hidden = rows.length > 0;
}

// -- retained messages as a topic tree ---------------------------------------

function buildTree(messages) {
  const root = {children: new Map()};
  for (const message of messages) {
    let node = root;
    for (const level of message.topic.split("/")) {
      if (!node.children.has(level)) node.children.set(level, {children: new Map()});
      node = node.children.get(level);
    }
    node.message = message;
  }
  return root;
}

function renderTree(node) {
  const list = el("ul");
  for (const [level, child] of [...node.children.entries()].sort()) {
    const item = el("li", {}, el("span", {className: "level", textContent: level === "" ? "(empty)" : level}));
    if (child.message) {
      const text = child.message.encoding === "utf-8" ? child.message.payload : `base64:${child.message.payload}`;
      item.append(el("span", {className: "value", title: child.message.topic,
        textContent: text.length > 120 ? text.slice(0, 120) + "…" : text}));
    }
    if (child.children.size) item.append(renderTree(child));
    list.append(item);
  }
  return list;
}

async function refreshTopics() {
  let messages;
  try {
    messages = await getJSON(`/retained?filter=${encodeURIComponent("#")}&filter=${encodeURIComponent("$SYS/#")}`);
  } catch (error) {
    return;
  }
  $("topics").replaceChildren(renderTree(buildTree(messages)));
  $("topics-empty").hidden = messages.length > 0;
}

// -- publishing ---------------------------------------------------------------

async function publish(event) {
  event.preventDefault();
  const result = $("publish-result");
  const body = {
    topic: $("publish-topic").value,
    payload: $("publish-payload").value,
    qos: Number($("publish-qos").value),
    retain: $("publish-retain").checked,
  };
  result.classList.remove("bad");
  result.textContent = "publishing…";
  try {
    const response = await fetch(`${API}/publish`, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
    const answer = await response.json();
    if (response.ok) {
      result.textContent = `Published message ${answer.id} to ${answer.topic} (QoS ${answer.qos}${answer.retain ? ", retained" : ""}).`;
      if (answer.retain) refreshTopics();
    } else {
      result.classList.add("bad");
      result.textContent = `${answer.error}: ${answer.detail}`;
    }
  } catch (error) {
    result.classList.add("bad");
    result.textContent = `Could not publish: ${error.message}`;
  }
}

// -- live view of a filter, over Server-Sent Events ---------------------------

let source = null;

function watch(event) {
  if (event) event.preventDefault();
  const filter = $("watch-filter").value || "#";
  if (source) source.close();
  $("events").replaceChildren();
  source = new EventSource(`${API}/stream?filter=${encodeURIComponent(filter)}`);
  source.addEventListener("open", () => { $("watch-status").textContent = `Watching ${filter}`; });
  source.addEventListener("error", () => { $("watch-status").textContent = "Stream interrupted; reconnecting…"; });
  source.addEventListener("message", (message) => {
    const data = JSON.parse(message.data);
    const payload = data.encoding === "utf-8" ? data.payload : `base64:${data.payload}`;
    const time = new Date(data.timestamp * 1000).toLocaleTimeString();
    const item = el("li", {},
      el("span", {className: "meta", textContent: `${time} `}),
      el("span", {className: "topic", textContent: data.topic}),
      el("span", {className: "meta", textContent: data.retain ? " (retained) " : " "}),
      el("span", {className: "payload", textContent: payload}));
    const events = $("events");
    events.prepend(item);
    while (events.children.length > MAX_EVENTS) events.lastChild.remove();
  });
}

// -- start --------------------------------------------------------------------

function every(seconds, task) {
  task();
  setInterval(task, seconds * 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  $("publish-form").addEventListener("submit", publish);
  $("watch-form").addEventListener("submit", watch);
  window.addEventListener("resize", drawChart);
  every(1, refreshStats);
  every(2, refreshClients);
  every(2, refreshStreamSessions);
  every(2, refreshShared);
  every(5, refreshTopics);
  watch();
});
