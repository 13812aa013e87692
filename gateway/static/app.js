// The Rapport web page: token, personas and sessions, streamed chat, the live relationship, memories and profile.
// Plain DOM, no library. Data is only ever rendered with textContent / attributes, never as HTML.

const AXES = [
  { name: "warmth", min: -1, max: 1 },
  { name: "trust", min: 0, max: 1 },
  { name: "intimacy", min: 0, max: 1 },
  { name: "intrigue", min: 0, max: 1 },
  { name: "patience", min: 0, max: 1 },
  { name: "tension", min: 0, max: 1 },
];
const COMPOSITES = [
  { name: "bond", min: 0, max: 1 },
  { name: "chemistry", min: 0, max: 1 },
];
const TOKEN_KEY = "rapport.token";
const SESSION_KEY = "rapport.session";
const OFFLINE_MODEL = "rapport-offline-responder";
const HISTORY_PAGE = 30;
const FOLLOW_UP_REFRESH_MS = [1000, 3000, 7000]; // post-process (memories, profile) runs after the reply
const MAX_CHART_POINTS = 200;
const GENERIC_ERROR = "Something went wrong. Please try again.";

const $ = (id) => document.getElementById(id);

const page = {
  token: "",
  userId: "",
  personas: [],
  sessions: [],
  session: null, // {session_id, persona_name, persona_id}
  olderCursor: null,
  busy: false,
  watch: null, // AbortController of the live affinity stream
  live: false, // the stream is connected: no need to re-read the state after a turn
  affinityEnabled: true,
  lastVersion: -1,
  points: [],
  followUps: [],
  meters: {},
};

// ---- errors and the API ---------------------------------------------------------------------------

class ApiFailure extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.code || "internal";
    this.userMessage = body.user_message || GENERIC_ERROR;
  }
}

async function failureOf(response) {
  let body = {};
  try {
    body = await response.json();
  } catch {
    body = {};
  }
  return new ApiFailure(response.status, body && typeof body === "object" ? body : {});
}

function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${page.token}`, ...extra };
}

async function request(path, { method = "GET", body, signal, accept = "application/json" } = {}) {
  const headers = authHeaders({ Accept: accept });
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!response.ok) throw await failureOf(response);
  return response;
}

async function api(path, options) {
  return (await request(path, options)).json();
}

function userMessageOf(error) {
  if (error instanceof ApiFailure) return error.userMessage;
  return "The server could not be reached. Please check that Rapport is running.";
}

function showError(error) {
  if (error instanceof ApiFailure && error.status === 401) askForToken();
  showAlert(userMessageOf(error));
}

function showAlert(text) {
  $("alert-text").textContent = text;
  $("alert").hidden = false;
}

function clearAlert() {
  $("alert").hidden = true;
  $("alert-text").textContent = "";
}

// ---- server-sent events over fetch (the turn is a POST; EventSource cannot send a token) --------------

async function* sseFrames(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      for (;;) {
        const match = /\r\n|\r|\n/.exec(buffer);
        if (!match) break;
        if (match[0] === "\r" && match.index === buffer.length - 1) break; // a "\r\n" split across chunks
        const line = buffer.slice(0, match.index);
        buffer = buffer.slice(match.index + match[0].length);
        if (line === "") {
          if (data.length) yield JSON.parse(data.join("\n"));
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        } // comments (": ping") and other fields are ignored
      }
    }
    if (data.length) yield JSON.parse(data.join("\n"));
  } finally {
    await reader.cancel().catch(() => {}); // leaving early (an error frame, a new session) closes the connection
  }
}

// ---- the token -----------------------------------------------------------------------------------

function decodeJwtPayload(token) {
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(parts[1].length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

function tokenFromHash() {
  const fragment = new URLSearchParams(location.hash.replace(/^#/, ""));
  const token = fragment.get("token");
  if (token) history.replaceState(null, "", location.pathname + location.search); // keep it out of the URL
  return token;
}

function adoptToken(token) {
  const claims = decodeJwtPayload(token.trim());
  if (!claims || typeof claims.sub !== "string") {
    showAlert("That doesn't look like a Rapport token. Copy the whole token printed by `rapport up`.");
    return false;
  }
  if (typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) {
    showAlert("This token has expired. Run `rapport up` again (or ask for a new token).");
    return false;
  }
  page.token = token.trim();
  page.userId = claims.sub;
  localStorage.setItem(TOKEN_KEY, page.token);
  return true;
}

function askForToken() {
  $("token-panel").hidden = false;
  $("token-input").focus();
}

function forgetToken() {
  localStorage.removeItem(TOKEN_KEY);
  localStorage.removeItem(SESSION_KEY);
  stopWatch();
  page.token = "";
  page.userId = "";
  page.session = null;
  $("app").hidden = true;
  $("who").hidden = true;
  $("sign-out").hidden = true;
  askForToken();
}

// ---- meters and the chart ------------------------------------------------------------------------

function createMeter(container, { name, min, max }) {
  const row = document.createElement("div");
  row.className = "meter-row";
  const label = document.createElement("span");
  label.className = "meter-name";
  label.id = `meter-${name}-name`;
  label.textContent = name;
  const bar = document.createElement("div");
  bar.className = min < 0 ? "bar signed" : "bar";
  bar.setAttribute("role", "meter");
  bar.setAttribute("aria-labelledby", label.id);
  bar.setAttribute("aria-valuemin", String(min));
  bar.setAttribute("aria-valuemax", String(max));
  bar.dataset.axis = name;
  const fill = document.createElement("span");
  fill.className = "fill";
  fill.style.background = `var(--${name})`;
  bar.append(fill);
  const value = document.createElement("span");
  value.className = "meter-value";
  value.id = `meter-${name}-value`;
  value.textContent = "—";
  row.append(label, bar, value);
  container.append(row);
  return { bar, fill, value, min, max };
}

function setMeter(meter, raw) {
  const number = Number(raw);
  if (!Number.isFinite(number)) return;
  const v = Math.min(meter.max, Math.max(meter.min, number));
  meter.bar.setAttribute("aria-valuenow", String(v));
  meter.bar.setAttribute("aria-valuetext", v.toFixed(2));
  meter.value.textContent = v.toFixed(2);
  if (meter.min < 0) { // signed: fill from the middle
    const half = 50 * (Math.abs(v) / meter.max);
    meter.fill.style.left = `${v >= 0 ? 50 : 50 - half}%`;
    meter.fill.style.width = `${half}%`;
  } else {
    meter.fill.style.left = "0";
    meter.fill.style.width = `${(100 * (v - meter.min)) / (meter.max - meter.min)}%`;
  }
}

function svg(tag, attributes) {
  const element = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  return element;
}

function renderChart() {
  const chart = $("affinity-chart");
  const width = 320, height = 140, left = 22, right = 6, top = 8, bottom = 8;
  const y = (v) => top + ((1 - v) / 2) * (height - top - bottom); // every axis on one −1…1 scale
  const children = [];
  for (const [v, text] of [[1, "1"], [0, "0"], [-1, "−1"]]) {
    children.push(svg("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: v === 0 ? "zero" : "grid" }));
    const label = svg("text", { x: 2, y: y(v) + 3, class: "axis-label" });
    label.textContent = text;
    children.push(label);
  }
  const points = page.points;
  const x = (i) => (points.length < 2 ? left : left + (i * (width - left - right)) / (points.length - 1));
  for (const { name } of AXES) {
    let coords = points.map((point, i) => `${x(i).toFixed(1)},${y(point[name]).toFixed(1)}`);
    if (points.length === 1) coords = [coords[0], `${width - right},${y(points[0][name]).toFixed(1)}`];
    if (coords.length) children.push(svg("polyline", { points: coords.join(" "), stroke: `var(--${name})`, "data-axis": name }));
  }
  chart.replaceChildren(...children);
  chart.dataset.points = String(points.length);
  const latest = points[points.length - 1];
  $("chart-summary").textContent = latest
    ? `${points.length} state${points.length === 1 ? "" : "s"} this session; now ${AXES.map(({ name }) => `${name} ${latest[name].toFixed(2)}`).join(", ")}.`
    : "No data yet.";
}

function buildRelationshipPanel() {
  for (const axis of AXES) page.meters[axis.name] = createMeter($("axis-meters"), axis);
  for (const composite of COMPOSITES) page.meters[composite.name] = createMeter($("composite-meters"), composite);
  for (const { name } of AXES) {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = `var(--${name})`;
    item.append(swatch, name);
    $("chart-legend").append(item);
  }
  renderChart();
}

function applyAffinity(snapshot) {
  if (typeof snapshot.version === "number") {
    if (snapshot.version <= page.lastVersion) return false; // already shown
    page.lastVersion = snapshot.version;
  }
  for (const { name } of [...AXES, ...COMPOSITES]) setMeter(page.meters[name], snapshot[name] ?? 0);
  $("relationship-label").textContent = snapshot.label || "—";
  const point = Object.fromEntries(AXES.map(({ name }) => [name, Number(snapshot[name] ?? 0)]));
  const last = page.points[page.points.length - 1];
  const changed = !last || AXES.some(({ name }) => Math.abs(last[name] - point[name]) > 1e-9);
  if (changed) {
    page.points.push(point);
    if (page.points.length > MAX_CHART_POINTS) page.points.shift();
    renderChart();
  }
  return changed;
}

function setRelationshipMode(text) {
  $("relationship-mode").textContent = text;
}

async function refreshAffinity() {
  const session = page.session;
  if (!session || !page.affinityEnabled) return;
  try {
    const snapshot = await api(`comp/affinity/${session.session_id}`);
    if (page.session === session) applyAffinity(snapshot);
  } catch (error) {
    if (error instanceof ApiFailure && error.status === 404) return disableAffinity();
    showError(error);
  }
}

function disableAffinity() {
  page.affinityEnabled = false;
  stopWatch();
  setRelationshipMode("The relationship view is off on this server (EXPOSE_AFFINITY_DEBUG is not true).");
}

function stopWatch() {
  if (page.watch) page.watch.abort();
  page.watch = null;
  page.live = false;
}

function pause(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

// The live state: the affinity service's WatchAffinity through the gateway's SSE route. Falls back to
// re-reading the state after each turn when the stream is not available.
async function watchAffinity(session) {
  stopWatch();
  const controller = new AbortController();
  page.watch = controller;
  let delay = 1000;
  while (!controller.signal.aborted) {
    try {
      const response = await request(`comp/affinity/${session.session_id}/stream`,
        { signal: controller.signal, accept: "text/event-stream" });
      page.live = true;
      delay = 1000;
      setRelationshipMode("Live.");
      for await (const frame of sseFrames(response.body)) {
        if (frame.type === "state" && page.session === session) {
          if (applyAffinity(frame) && frame.kind !== "snapshot") scheduleRefresh(0);
        } else if (frame.type === "error") {
          break;
        }
      }
    } catch (error) {
      if (controller.signal.aborted) return;
      if (error instanceof ApiFailure) {
        if (error.status === 404) return disableAffinity();
        if (error.status === 501) { // the server has no live stream: re-read after each turn instead
          page.live = false;
          setRelationshipMode("Updated after each turn.");
          return refreshAffinity();
        }
        if (error.status === 401 || error.status === 403) { page.live = false; return showError(error); }
      }
    }
    if (controller.signal.aborted) return;
    page.live = false;
    setRelationshipMode("Reconnecting…");
    await refreshAffinity();
    await pause(delay, controller.signal);
    delay = Math.min(delay * 2, 30000);
  }
}

// ---- personas and sessions -------------------------------------------------------------------------

async function loadPersonas() {
  page.personas = await api("comp/personas");
  const select = $("persona-select");
  select.replaceChildren(...page.personas.map((persona) => {
    const option = document.createElement("option");
    option.value = persona.id;
    option.textContent = persona.name;
    return option;
  }));
  describePersona();
}

function describePersona() {
  const persona = page.personas.find((p) => p.id === $("persona-select").value);
  if (!persona) {
    $("persona-details").textContent = page.personas.length ? "" : "No personas are available.";
    return;
  }
  const facts = [persona.age ? String(persona.age) : "", persona.gender, persona.mbti].filter(Boolean).join(", ");
  const topics = (persona.topics || []).slice(0, 3).join("; ");
  $("persona-details").textContent = [facts, topics && `likes ${topics}`].filter(Boolean).join(" · ");
}

function formatTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

async function loadSessions() {
  const reply = await api(`comp/chat/${page.userId}/sessions?limit=50`);
  page.sessions = reply.sessions || [];
  renderSessions();
}

function renderSessions() {
  $("session-count").textContent = String(page.sessions.length);
  $("session-list").replaceChildren(...page.sessions.map((session) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    const name = document.createElement("span");
    name.textContent = `${session.persona_name} · ${session.message_count} message${session.message_count === 1 ? "" : "s"}`;
    const when = document.createElement("span");
    when.className = "muted";
    when.textContent = formatTime(session.last_active_at || session.started_at);
    button.append(name, when);
    button.setAttribute("aria-current", String(page.session?.session_id === session.session_id));
    button.addEventListener("click", () => openSession(session).catch(showError));
    item.append(button);
    return item;
  }));
}

async function startChat(forceNew) {
  const personaId = $("persona-select").value;
  if (!personaId) return;
  clearAlert();
  const reply = await api("comp/chat/start", { method: "POST", body: { persona_id: personaId, force_new: forceNew } });
  await openSession({ session_id: reply.session_id, persona_name: reply.persona_name, persona_id: reply.persona_id });
  loadSessions().catch(showError);
}

async function openSession(session) {
  stopWatch();
  page.session = session;
  page.points = [];
  page.lastVersion = -1;
  page.olderCursor = null;
  localStorage.setItem(SESSION_KEY, session.session_id);
  if (session.persona_id) $("persona-select").value = session.persona_id;
  describePersona();
  $("chat-persona").textContent = `with ${session.persona_name}`;
  $("chat-log").replaceChildren();
  renderChart();
  renderSessions();
  setComposerEnabled(false);
  await loadHistory(); // before the composer opens: a history render must not replace a turn being sent
  setComposerEnabled(true);
  if (page.affinityEnabled) watchAffinity(session);
  $("composer-input").focus();
}

// ---- the conversation ----------------------------------------------------------------------------

function turnElement(role, speaker) {
  const item = document.createElement("li");
  item.className = `turn ${role}`;
  const who = document.createElement("span");
  who.className = "who-said";
  who.textContent = speaker;
  const text = document.createElement("span");
  text.className = "text";
  const meta = document.createElement("span");
  meta.className = "turn-meta";
  item.append(who, text, meta);
  return item;
}

function messageElement(message) {
  const role = ["user", "assistant"].includes(message.role) ? message.role : "system";
  const speaker = role === "user" ? "You" : role === "assistant" ? page.session.persona_name : message.kind || role;
  const item = turnElement(role, speaker);
  item.dataset.messageId = message.id;
  item.dataset.state = "done";
  item.querySelector(".text").textContent = message.content;
  if (message.sent_at) item.querySelector(".who-said").title = formatTime(message.sent_at);
  return item;
}

async function loadHistory(before = null) {
  const session = page.session;
  const query = new URLSearchParams({ limit: String(HISTORY_PAGE) });
  if (before) query.set("before", before);
  const reply = await api(`comp/chat/${session.session_id}/history?${query}`);
  if (page.session !== session) return;
  const items = reply.messages.map(messageElement);
  if (before) $("chat-log").prepend(...items);
  else $("chat-log").replaceChildren(...items);
  page.olderCursor = reply.has_more ? reply.next_cursor : null;
  $("older-button").hidden = !page.olderCursor;
  updateEmptyChat();
  if (!before) scrollChat();
}

function updateEmptyChat() {
  const empty = $("chat-log").children.length === 0;
  $("chat-empty").hidden = !empty;
  $("chat-empty").textContent = page.session ? `Say hello to ${page.session.persona_name}.` : "Pick a persona and start a chat.";
}

function scrollChat() {
  const log = $("chat-log");
  log.scrollTop = log.scrollHeight;
}

function setComposerEnabled(enabled) {
  $("composer-input").disabled = !enabled;
  $("send-button").disabled = !enabled || page.busy;
}

function newClientMsgId() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16)); // not a secure context (plain http on a LAN address)
  bytes[6] = (bytes[6] & 0x0f) | 0x40;
  bytes[8] = (bytes[8] & 0x3f) | 0x80;
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

function addBadge(container, text, className = "", title = "") {
  const badge = document.createElement("span");
  badge.className = `badge ${className}`.trim();
  badge.textContent = text;
  if (title) badge.title = title;
  container.append(badge);
  return badge;
}

function showModel(meta, model) {
  if (!model || meta.querySelector(`[data-model="${CSS.escape(model)}"]`)) return;
  const offline = model === OFFLINE_MODEL;
  const badge = addBadge(meta, offline ? `offline responder (${model})` : model, offline ? "offline" : "",
    offline ? "A built-in local responder, not a language model: set an API key for real replies." : "model");
  badge.dataset.model = model;
  const header = $("model-badge");
  header.hidden = !offline;
  header.textContent = "Offline responder";
  header.title = badge.title;
}

// Renders one turn's frames (meta → delta* → done → final, or error) into its reply element.
async function renderTurn(body, reply) {
  const text = reply.querySelector(".text");
  const meta = reply.querySelector(".turn-meta");
  const content = document.createTextNode("");
  text.replaceChildren(content);
  let finished = false;
  for await (const frame of sseFrames(body)) {
    if (frame.type === "meta") {
      reply.dataset.state = "streaming";
      reply.dataset.messageId = frame.message_id;
      reply.dataset.action = frame.action_type;
      showModel(meta, frame.model);
    } else if (frame.type === "delta") {
      content.appendData(frame.content);
      scrollChat();
    } else if (frame.type === "done") {
      if (frame.truncated) {
        addBadge(meta, "cut off — continuing with a fallback model");
        continue;
      }
      if (!content.data.trim() || frame.ghost_fallback) {
        content.data = "… (no reply)";
        text.classList.add("no-reply");
      }
      reply.dataset.state = "done";
      finished = true;
    } else if (frame.type === "final") {
      if (frame.degraded?.length) addBadge(meta, `degraded: ${frame.degraded.join(", ")}`, "", "services that were unavailable for this turn");
      if (frame.retries) addBadge(meta, `${frame.retries} retr${frame.retries === 1 ? "y" : "ies"}`);
    } else if (frame.type === "error") {
      failTurn(reply, frame.user_message || GENERIC_ERROR);
      return;
    }
  }
  if (!finished) failTurn(reply, "The reply was interrupted. Please try again.");
}

function failTurn(reply, message) {
  reply.dataset.state = "error";
  const note = document.createElement("span");
  note.className = "error-note";
  note.textContent = message;
  const text = reply.querySelector(".text");
  if (text.textContent) text.append(document.createElement("br"));
  text.append(note);
}

async function sendMessage(content) {
  const session = page.session;
  page.busy = true;
  setComposerEnabled(true);
  clearAlert();
  $("chat-log").append(messageElement({ id: "", role: "user", content }));
  const reply = turnElement("assistant", session.persona_name);
  reply.dataset.state = "waiting";
  reply.setAttribute("aria-busy", "true");
  reply.querySelector(".text").textContent = "…";
  $("chat-log").append(reply);
  updateEmptyChat();
  scrollChat();
  $("turn-status").textContent = `${session.persona_name} is replying…`;
  try {
    const response = await request(`comp/chat/${session.session_id}/message/stream`, {
      method: "POST", accept: "text/event-stream", body: { content, client_msg_id: newClientMsgId() },
    });
    await renderTurn(response.body, reply);
  } catch (error) {
    reply.querySelector(".text").textContent = "";
    failTurn(reply, userMessageOf(error));
    if (error instanceof ApiFailure && error.status === 401) askForToken();
  } finally {
    reply.removeAttribute("aria-busy");
    page.busy = false;
    setComposerEnabled(page.session !== null);
    $("turn-status").textContent = reply.dataset.state === "error" ? "The turn failed." : "";
    afterTurn();
  }
}

// ---- what it knows: memories and profile -----------------------------------------------------------

async function loadMemories() {
  const reply = await api(`comp/user/${page.userId}/memories?limit=200`);
  const memories = reply.memories || [];
  $("memory-list").replaceChildren(...memories.map(memoryElement));
  updateMemoryCount();
}

function updateMemoryCount() {
  const count = $("memory-list").children.length;
  $("memory-count").textContent = count ? `(${count})` : "";
  $("memories-empty").hidden = count > 0;
}

function memoryElement(memory) {
  const item = document.createElement("li");
  item.dataset.memoryId = memory.id;
  const tags = document.createElement("span");
  tags.className = "tags";
  addBadge(tags, memory.layer, `layer-${memory.layer}`, "layer");
  if (memory.category) addBadge(tags, memory.category, "", "category");
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = memory.content;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Delete";
  remove.setAttribute("aria-label", `Delete memory: ${memory.content}`);
  remove.addEventListener("click", () => deleteMemory(memory, item, remove));
  item.append(tags, content, remove);
  return item;
}

async function deleteMemory(memory, item, button) {
  button.disabled = true;
  button.textContent = "Deleting…";
  try {
    await api(`comp/user/${page.userId}/memories/${memory.id}`, { method: "DELETE" });
  } catch (error) {
    if (!(error instanceof ApiFailure && error.status === 404)) { // 404: already gone
      button.disabled = false;
      button.textContent = "Delete";
      return showError(error);
    }
  }
  const next = item.nextElementSibling || item.previousElementSibling;
  item.remove();
  updateMemoryCount();
  $("turn-status").textContent = "Memory deleted.";
  (next?.querySelector("button") || $("memories-refresh")).focus();
}

function formatInsight(value) {
  if (Array.isArray(value)) return value.map(formatInsight).join(", ");
  if (value && typeof value === "object") {
    return Object.entries(value).map(([key, inner]) => `${key.replace(/_/g, " ")}: ${formatInsight(inner)}`).join("; ");
  }
  return String(value);
}

async function loadProfile() {
  const profile = await api(`comp/user/${page.userId}/profile`);
  const entries = Object.entries(profile.insights || {}).filter(([, value]) => value !== "" && value !== null &&
    !(Array.isArray(value) && value.length === 0));
  $("profile-fields").replaceChildren(...entries.flatMap(([field, value]) => {
    const term = document.createElement("dt");
    term.textContent = field.replace(/_/g, " ");
    const detail = document.createElement("dd");
    detail.dataset.field = field;
    detail.textContent = formatInsight(value);
    const confidence = profile.provenance?.[field]?.confidence;
    if (typeof confidence === "number") detail.title = `confidence ${confidence.toFixed(2)}`;
    return [term, detail];
  }));
  $("profile-empty").hidden = entries.length > 0;
  const level = Math.min(1, Math.max(0, Number(profile.training_level) || 0));
  const meter = $("training-meter");
  meter.setAttribute("aria-valuenow", String(level));
  meter.setAttribute("aria-valuetext", `${Math.round(level * 100)}%`);
  meter.querySelector(".fill").style.width = `${level * 100}%`;
  $("training-value").textContent = `${Math.round(level * 100)}%`;
}

// ---- refreshing the panels ------------------------------------------------------------------------

async function refreshPanels() {
  const results = await Promise.allSettled([loadMemories(), loadProfile()]);
  const failed = results.find((result) => result.status === "rejected");
  if (failed) showError(failed.reason);
}

let refreshTimer = null;
function scheduleRefresh(ms) { // coalesces refreshes asked for in quick succession
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => refreshPanels(), ms);
}

function afterTurn() {
  for (const timer of page.followUps) clearTimeout(timer);
  refreshPanels();
  if (!page.live) refreshAffinity();
  loadSessions().catch(showError);
  page.followUps = FOLLOW_UP_REFRESH_MS.map((ms) => setTimeout(() => {
    refreshPanels();
    if (!page.live) refreshAffinity();
  }, ms));
}

// ---- start-up ---------------------------------------------------------------------------------------

async function startApp() {
  $("token-panel").hidden = true;
  $("app").hidden = false;
  $("who").hidden = false;
  $("who-id").textContent = page.userId;
  $("sign-out").hidden = false;
  clearAlert();
  updateEmptyChat();
  const [personas, sessions] = await Promise.allSettled([loadPersonas(), loadSessions()]);
  for (const result of [personas, sessions]) if (result.status === "rejected") showError(result.reason);
  refreshPanels();
  const remembered = localStorage.getItem(SESSION_KEY);
  const previous = page.sessions.find((session) => session.session_id === remembered) || page.sessions[0]; // newest
  if (previous) await openSession(previous).catch(showError);
  else $("persona-select").focus();
}

function wireEvents() {
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    if (adoptToken($("token-input").value)) {
      $("token-input").value = "";
      startApp().catch(showError);
    }
  });
  $("sign-out").addEventListener("click", forgetToken);
  $("alert-close").addEventListener("click", clearAlert);
  $("persona-select").addEventListener("change", describePersona);
  $("start-form").addEventListener("submit", (event) => {
    event.preventDefault();
    startChat(false).catch(showError);
  });
  $("new-session-button").addEventListener("click", () => startChat(true).catch(showError));
  $("older-button").addEventListener("click", () => loadHistory(page.olderCursor).catch(showError));
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("composer-input");
    const content = input.value.trim();
    if (!content || page.busy || !page.session) return;
    input.value = "";
    sendMessage(content);
  });
  $("composer-input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("memories-refresh").addEventListener("click", () => loadMemories().catch(showError));
  $("profile-refresh").addEventListener("click", () => loadProfile().catch(showError));
}

function main() {
  buildRelationshipPanel();
  wireEvents();
  window.addEventListener("hashchange", () => { // the `rapport up` link opened in a tab that shows the page
    const token = tokenFromHash();
    if (token && adoptToken(token)) startApp().catch(showError);
  });
  const token = tokenFromHash() || localStorage.getItem(TOKEN_KEY);
  if (token && adoptToken(token)) startApp().catch(showError);
  else askForToken();
}

main();
