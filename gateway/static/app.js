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
const GHOST_TEXT = "(seen, no reply)"; // the persona chose not to answer; the terminal client's words

const $ = (id) => document.getElementById(id);

const page = {
  token: "",
  userId: "",
  personas: [],
  sessions: [],
  session: null, // {session_id, persona_name, persona_id}
  olderCursor: null,
  messages: new Map(), // id → the message as the history gave it (the active branch)
  branchId: null, // the active branch shown
  branches: [],
  busy: false, // a turn, a swipe, a branch or a delete is under way
  watch: null, // AbortController of the live affinity stream
  live: false, // the stream is connected: no need to re-read the state after a turn
  affinityEnabled: true,
  lastVersion: -1,
  points: [],
  branchMarks: [], // chart: indexes of the first point after the active branch changed
  pointsAtChange: null, // chart points when the change under way began
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
  const marks = page.branchMarks.filter((i) => i > 0 && i < points.length);
  for (const i of marks) { // between the last state of the old branch and the first of the new one
    const at = ((x(i - 1) + x(i)) / 2).toFixed(1);
    children.push(svg("line", { x1: at, x2: at, y1: top, y2: height - bottom, class: "branch-mark" }));
  }
  for (const { name } of AXES) {
    let coords = points.map((point, i) => `${x(i).toFixed(1)},${y(point[name]).toFixed(1)}`);
    if (points.length === 1) coords = [coords[0], `${width - right},${y(points[0][name]).toFixed(1)}`];
    if (coords.length) children.push(svg("polyline", { points: coords.join(" "), stroke: `var(--${name})`, "data-axis": name }));
  }
  chart.replaceChildren(...children);
  chart.dataset.points = String(points.length);
  const latest = points[points.length - 1];
  const switches = marks.length ? ` The active branch changed ${marks.length === 1 ? "once" : `${marks.length} times`} (dashed line).` : "";
  $("chart-summary").textContent = latest
    ? `${points.length} state${points.length === 1 ? "" : "s"} this session; now ${AXES.map(({ name }) => `${name} ${latest[name].toFixed(2)}`).join(", ")}.${switches}`
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
    if (page.points.length > MAX_CHART_POINTS) {
      page.points.shift();
      page.branchMarks = page.branchMarks.map((i) => i - 1).filter((i) => i > 0);
    }
    renderChart();
  }
  return changed;
}

// The next state shown is the first of another branch (a swipe on an earlier reply, a rewind, a switch).
function markBranchChange() {
  const first = page.pointsAtChange ?? page.points.length; // a state may have arrived while the history was read
  if (page.branchMarks.at(-1) !== first) page.branchMarks.push(first);
  renderChart();
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
  page.branchMarks = [];
  page.lastVersion = -1;
  page.olderCursor = null;
  page.messages = new Map();
  page.branchId = null;
  page.branches = [];
  renderBranches();
  localStorage.setItem(SESSION_KEY, session.session_id);
  if (session.persona_id) $("persona-select").value = session.persona_id;
  describePersona();
  $("chat-persona").textContent = `with ${session.persona_name}`;
  $("chat-log").replaceChildren();
  renderChart();
  renderSessions();
  setComposerEnabled(false);
  await syncHistory(); // before the composer opens: a history render must not replace a turn being sent
  setComposerEnabled(true);
  loadBranches(session).catch(showError);
  if (page.affinityEnabled) watchAffinity(session);
  $("composer-input").focus();
}

// ---- the conversation ----------------------------------------------------------------------------
// The chat log shows the active branch. Each message is one element keyed by its slot: a user message by its
// id, a reply by the message it answers (a swipe changes a reply's text in place). After every change the
// newest page of the history is placed again; what did not change stays as it is (no re-announcement).

function slotOf(message) {
  return message.role === "assistant" && message.parent_id ? `reply-to:${message.parent_id}` : message.id;
}

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
  const actions = document.createElement("div");
  actions.className = "turn-actions";
  actions.setAttribute("aria-live", "off"); // the log announces what is said, not its buttons
  item.append(who, text, meta, actions);
  return item;
}

function messageElement(message) {
  const role = ["user", "assistant"].includes(message.role) ? message.role : "system";
  const speaker = role === "user" ? "You" : role === "assistant" ? page.session.persona_name : message.kind || role;
  const item = turnElement(role, speaker);
  showMessage(item, message);
  return item;
}

function showMessage(item, message) {
  if (message.id) page.messages.set(message.id, message);
  item.dataset.messageId = message.id;
  if (message.id) item.dataset.slot = slotOf(message);
  item.dataset.state = "done";
  delete item.dataset.kind;
  const text = item.querySelector(".text");
  text.classList.remove("no-reply");
  if (text.textContent !== message.content || text.children.length) text.textContent = message.content;
  if (message.sent_at) item.querySelector(".who-said").title = formatTime(message.sent_at);
}

function excerpt(text, length = 40) {
  const flat = text.replace(/\s+/g, " ").trim();
  return flat.length > length ? `${flat.slice(0, length - 1)}…` : flat;
}

// The newest page of the active branch, placed into the log.
async function syncHistory() {
  const session = page.session;
  const reply = await api(`comp/chat/${session.session_id}/history?limit=${HISTORY_PAGE}`);
  if (page.session === session) placeHistory(reply);
}

async function loadOlderHistory() {
  const session = page.session;
  const query = new URLSearchParams({ limit: String(HISTORY_PAGE), before: page.olderCursor });
  const reply = await api(`comp/chat/${session.session_id}/history?${query}`);
  if (page.session !== session) return;
  $("chat-log").prepend(...reply.messages.map(messageElement));
  page.olderCursor = reply.has_more ? reply.next_cursor : null;
  $("older-button").hidden = !page.olderCursor;
  renderActions();
}

function placeHistory(reply) {
  const log = $("chat-log");
  const messages = reply.messages;
  claimSentMessage(messages);
  const bySlot = new Map([...log.children].filter((item) => item.dataset.slot).map((item) => [item.dataset.slot, item]));
  const lastBefore = log.lastElementChild;
  // The path to a message is unique: when the page's first message is shown already, everything before it stays.
  const anchor = messages.length ? bySlot.get(slotOf(messages[0])) : undefined;
  if (!anchor) page.olderCursor = reply.has_more ? reply.next_cursor : null;
  const wanted = [];
  messages.forEach((message, i) => {
    let item = bySlot.get(slotOf(message));
    if (item) showMessage(item, message);
    else item = messageElement(message);
    wanted.push(item);
    const next = messages[i + 1];
    if (message.role === "user" && !(next?.role === "assistant" && next.parent_id === message.id)) {
      const ghost = bySlot.get(`reply-to:${message.id}`); // the history leaves ghosts out; one seen live stays
      if (ghost?.dataset.kind === "ghost") wanted.push(ghost);
    }
  });
  let cursor = anchor ?? log.firstElementChild;
  for (const item of wanted) {
    if (item === cursor) cursor = cursor.nextElementSibling;
    else log.insertBefore(item, cursor);
  }
  while (cursor) { // what is left is off the active branch now
    const next = cursor.nextElementSibling;
    cursor.remove();
    cursor = next;
  }
  if (page.branchId && reply.branch_id !== page.branchId) markBranchChange();
  page.branchId = reply.branch_id;
  $("older-button").hidden = !page.olderCursor;
  updateEmptyChat();
  renderActions();
  if (log.lastElementChild !== lastBefore) scrollChat();
}

// The message just sent gets its id from the history (the stream names only the reply).
function claimSentMessage(messages) {
  const sent = $("chat-log").querySelector(".turn.user[data-sent]");
  if (!sent) return;
  delete sent.dataset.sent;
  const shown = new Set([...$("chat-log").children].map((item) => item.dataset.messageId).filter(Boolean));
  const stored = [...messages].reverse().find((message) => message.role === "user" && !shown.has(message.id));
  if (!stored) return;
  showMessage(sent, stored);
  const answer = sent.nextElementSibling;
  if (answer?.classList.contains("assistant") && !answer.dataset.slot) answer.dataset.slot = `reply-to:${stored.id}`;
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
  for (const button of document.querySelectorAll("#chat-log button, #branch-list button")) {
    button.disabled = page.busy || button.dataset.unavailable === "true";
  }
}

// ---- what can be done to a message: swipe, regenerate, edit and branch, delete ----------------------

function actionButton(text, action, label, onClick) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "action";
  button.dataset.action = action;
  button.textContent = text;
  if (label !== text) button.setAttribute("aria-label", label);
  button.disabled = page.busy;
  button.addEventListener("click", onClick);
  return button;
}

function renderActions() {
  for (const item of $("chat-log").children) {
    const actions = item.querySelector(".turn-actions");
    const signature = actionsSignature(item);
    if (!actions || actions.dataset.signature === signature) continue; // unchanged: keep the buttons (and the focus)
    actions.replaceChildren(...actionsFor(item));
    actions.dataset.signature = signature;
  }
}

// What the actions of a message depend on.
function actionsSignature(item) {
  const message = page.messages.get(item.dataset.messageId);
  return [item.dataset.kind, item.dataset.state, item.dataset.messageId, message?.alternative_index,
    message?.alternatives?.length, item.nextElementSibling?.classList.contains("assistant")].join("|");
}

function actionsFor(item) {
  const message = page.messages.get(item.dataset.messageId);
  if (item.dataset.kind === "ghost") {
    return [
      ...((message?.alternatives || []).length > 1 ? [swipeControl(message)] : []),
      actionButton("Regenerate", "regenerate", "Regenerate reply (it was seen, no reply)", () => regenerate(item)),
    ];
  }
  if (!message || item.dataset.state !== "done" || message.kind !== "chat") return [];
  const quote = `“${excerpt(message.content)}”`;
  if (message.role === "assistant") {
    const actions = [];
    if ((message.alternatives || []).length > 1) actions.push(swipeControl(message));
    actions.push(actionButton("Regenerate", "regenerate", `Regenerate reply ${quote}`, () => regenerate(item)));
    actions.push(actionButton("Delete", "delete", `Delete reply ${quote}`, () => deleteMessage(item)));
    return actions;
  }
  if (message.role !== "user") return [];
  const actions = [];
  if (message.parent_id) { // the first message has no parent to branch from
    actions.push(actionButton("Edit", "edit", `Edit message ${quote} (continues on a new branch)`,
      () => startEdit(item, message)));
  }
  if (!item.nextElementSibling?.classList.contains("assistant")) {
    actions.push(actionButton("Regenerate", "regenerate", `Get a reply to ${quote}`, () => regenerate(item)));
  }
  actions.push(actionButton("Delete", "delete", `Delete message ${quote}`, () => deleteMessage(item)));
  return actions;
}

// ‹ 2/3 ›: the alternative replies to the same message; choosing one makes it current.
function swipeControl(message) {
  const index = message.alternative_index;
  const count = message.alternatives.length;
  const group = document.createElement("span");
  group.className = "swipe";
  group.setAttribute("role", "group");
  group.setAttribute("aria-label", `Reply ${index + 1} of ${count} (left and right arrow keys switch)`);
  const previous = actionButton("‹", "previous", "Previous reply", () => selectAlternative(message, index - 1));
  const next = actionButton("›", "next", "Next reply", () => selectAlternative(message, index + 1));
  for (const [button, unavailable] of [[previous, index === 0], [next, index === count - 1]]) {
    button.dataset.unavailable = String(unavailable);
    button.disabled ||= unavailable;
  }
  const position = document.createElement("span");
  position.className = "swipe-position";
  position.setAttribute("aria-hidden", "true");
  position.textContent = `${index + 1}/${count}`;
  group.addEventListener("keydown", (event) => {
    const button = { ArrowLeft: previous, ArrowRight: next }[event.key];
    if (!button) return;
    event.preventDefault();
    if (!button.disabled) button.click();
  });
  group.append(previous, position, next);
  return group;
}

// The control that has the focus, as a selector that finds it again after the log or the list is redrawn.
function focusedControl() {
  const active = document.activeElement;
  const item = active?.closest?.("#chat-log .turn");
  if (item?.dataset.slot && active.dataset.action) {
    return { item: item.dataset.slot, selector: `[data-action="${active.dataset.action}"]` };
  }
  if (active?.dataset?.branchId) return { selector: `#branch-list [data-branch-id="${CSS.escape(active.dataset.branchId)}"]` };
  return null;
}

// When the focused control was redrawn or removed: the same control again, else another action of the same
// message, else the message box.
function restoreFocus(control) {
  const active = document.activeElement;
  if (active && active !== document.body && active.isConnected && !active.disabled) return;
  const scope = control?.item ? $("chat-log").querySelector(`[data-slot="${CSS.escape(control.item)}"]`) : document;
  const candidates = control && scope ? [scope.querySelector(control.selector), ...scope.querySelectorAll(".turn-actions button")] : [];
  const target = candidates.find((button) => button && !button.disabled);
  (target || $("composer-input")).focus();
}

// One change of the conversation at a time (a turn, a swipe, a branch, a delete).
async function runChange(change) {
  if (page.busy || !page.session) return;
  const session = page.session;
  const focus = focusedControl();
  page.busy = true;
  page.pointsAtChange = page.points.length;
  setComposerEnabled(true);
  clearAlert();
  try {
    await change(session);
  } catch (error) {
    showError(error);
    if (page.session === session) await syncHistory().catch(() => {});
  } finally {
    page.busy = false;
    page.pointsAtChange = null;
    setComposerEnabled(page.session !== null);
    restoreFocus(focus);
  }
  if (page.waitingMessage && page.session) {
    const content = page.waitingMessage;
    page.waitingMessage = null;
    sendMessage(content);
  }
}

// After the active branch (or what is on it) changed: the branch list, and the state that follows it.
async function followActiveBranch(session) {
  await loadBranches(session).catch(showError);
  refreshAfterChange();
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
        content.data = GHOST_TEXT;
        text.classList.add("no-reply");
        reply.dataset.kind = "ghost";
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

function waitingReply(session, reply) {
  reply.dataset.state = "waiting";
  reply.setAttribute("aria-busy", "true");
  reply.querySelector(".text").textContent = "…";
  $("turn-status").textContent = `${session.persona_name} is replying…`;
}

// Streams a turn (or a regenerate) into `reply`, then places the history: ids, alternatives and actions.
async function streamReply(session, reply, path, body) {
  try {
    const response = await request(path, { method: "POST", accept: "text/event-stream", body });
    await renderTurn(response.body, reply);
  } catch (error) {
    reply.querySelector(".text").textContent = "";
    failTurn(reply, userMessageOf(error));
    if (error instanceof ApiFailure && error.status === 401) askForToken();
  } finally {
    reply.removeAttribute("aria-busy");
    $("turn-status").textContent = reply.dataset.state === "error" ? "The turn failed." : "";
  }
  if (reply.dataset.state !== "error" && page.session === session) await syncHistory().catch(showError);
}

function sendMessage(content) {
  return runChange((session) => sendTurn(session, content));
}

async function sendTurn(session, content) {
  const sent = messageElement({ id: "", role: "user", content });
  sent.dataset.sent = "true";
  const reply = turnElement("assistant", session.persona_name);
  $("chat-log").append(sent, reply);
  waitingReply(session, reply);
  updateEmptyChat();
  scrollChat();
  try {
    await streamReply(session, reply, `comp/chat/${session.session_id}/message/stream`,
      { content, client_msg_id: newClientMsgId() });
  } finally {
    await followActiveBranch(session);
  }
}

// Swipe: a new alternative reply to the same message (on a new branch when it is not the last exchange).
function regenerate(item) {
  return runChange(async (session) => {
    const target = item.dataset.messageId;
    const before = page.messages.get(target);
    let reply = item;
    if (item.classList.contains("user")) {
      reply = turnElement("assistant", session.persona_name);
      reply.dataset.slot = `reply-to:${target}`;
      item.after(reply);
    }
    while (reply.nextElementSibling) reply.nextElementSibling.remove(); // they stay on the old branch
    reply.querySelector(".turn-meta").replaceChildren();
    const actions = reply.querySelector(".turn-actions");
    actions.replaceChildren();
    delete actions.dataset.signature;
    reply.querySelector(".text").classList.remove("no-reply");
    delete reply.dataset.kind;
    waitingReply(session, reply);
    scrollChat();
    try {
      await streamReply(session, reply, `comp/chat/${session.session_id}/messages/${encodeURIComponent(target)}/regenerate`,
        { client_msg_id: newClientMsgId() });
      if (reply.dataset.state === "error") {
        showAlert(reply.querySelector(".error-note")?.textContent || GENERIC_ERROR);
        await syncHistory(); // the reply shown before
      } else if (reply.dataset.kind === "ghost" && before?.role === "assistant") { // the newest alternative
        const alternatives = [...before.alternatives, reply.dataset.messageId];
        showGhost(reply, { ...before, id: reply.dataset.messageId, alternatives, alternative_index: alternatives.length - 1 });
      }
    } finally {
      await followActiveBranch(session);
    }
  });
}

function selectAlternative(from, index) {
  const messageId = from.alternatives[index];
  return runChange(async (session) => {
    const chosen = await api(`comp/chat/${session.session_id}/messages/${encodeURIComponent(messageId)}/select`,
      { method: "POST" });
    await syncHistory();
    const answered = $("chat-log").querySelector(`[data-slot="${CSS.escape(slotOf(from))}"]`);
    if (!answered) { // the history leaves ghosts out: the chosen alternative was one
      const question = $("chat-log").querySelector(`.turn.user[data-message-id="${CSS.escape(from.parent_id)}"]`);
      const ghost = turnElement("assistant", session.persona_name);
      question?.after(ghost);
      showGhost(ghost, { ...from, id: messageId, alternative_index: index });
    }
    const shown = page.messages.get(messageId);
    $("turn-status").textContent = chosen.branched
      ? "Reply chosen: the conversation continues from it on a new branch (the old branch is kept)."
      : shown ? `Reply ${shown.alternative_index + 1} of ${shown.alternatives.length} chosen.` : "Reply chosen.";
    await followActiveBranch(session);
  });
}

// A reply that is a ghost (the persona saw the message and did not answer), with its alternatives when known.
function showGhost(item, message) {
  showMessage(item, { ...message, kind: "ghost", content: GHOST_TEXT });
  item.dataset.kind = "ghost";
  item.querySelector(".text").classList.add("no-reply");
  renderActions();
}

// Edit and branch: the edited message is sent on a new branch from its parent; the old branch stays whole.
function startEdit(item, message) {
  if (page.busy || item.querySelector(".edit-form")) return;
  for (const open of $("chat-log").querySelectorAll(".edit-form")) endEdit(open.closest(".turn"));
  const form = document.createElement("form");
  form.className = "edit-form";
  const label = document.createElement("label");
  label.className = "visually-hidden";
  label.htmlFor = `edit-${message.id}`;
  label.textContent = "Edited message";
  const input = document.createElement("textarea");
  input.id = label.htmlFor;
  input.rows = 3;
  input.maxLength = 4096;
  input.required = true;
  input.value = message.content;
  const hint = document.createElement("p");
  hint.className = "hint";
  hint.id = `edit-hint-${message.id}`;
  hint.textContent = "The conversation continues from here on a new branch; this branch is kept. Enter sends, Esc cancels.";
  input.setAttribute("aria-describedby", hint.id);
  const send = document.createElement("button");
  send.type = "submit";
  send.textContent = "Send on a new branch";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "secondary";
  cancel.textContent = "Cancel";
  const buttons = document.createElement("div");
  buttons.className = "row end";
  buttons.append(cancel, send);
  form.append(label, input, hint, buttons);
  cancel.addEventListener("click", () => endEdit(item, true));
  input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      endEdit(item, true);
    } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const content = input.value.trim();
    if (content && !page.busy) editAndBranch(item, message, content);
  });
  item.classList.add("editing");
  item.querySelector(".text").hidden = true;
  item.querySelector(".turn-actions").hidden = true;
  item.append(form);
  input.focus();
  input.setSelectionRange(input.value.length, input.value.length);
}

function endEdit(item, refocus = false) {
  item.querySelector(".edit-form")?.remove();
  item.classList.remove("editing");
  item.querySelector(".text").hidden = false;
  item.querySelector(".turn-actions").hidden = false;
  if (refocus) item.querySelector('[data-action="edit"]')?.focus();
}

function editAndBranch(item, message, content) {
  return runChange(async (session) => {
    await api(`comp/chat/${session.session_id}/branches`, {
      method: "POST", body: { from_message_id: message.parent_id, client_request_id: newClientMsgId() },
    });
    while (item.nextElementSibling) item.nextElementSibling.remove(); // they stay on the old branch
    item.remove();
    await sendTurn(session, content);
  });
}

// ---- the branch switcher ------------------------------------------------------------------------------

async function loadBranches(session = page.session) {
  const reply = await api(`comp/chat/${session.session_id}/branches`);
  if (page.session !== session) return;
  page.branches = [...(reply.branches || [])].sort((a, b) => a.created_at.localeCompare(b.created_at));
  renderBranches();
}

function renderBranches() {
  $("branches-box").hidden = page.branches.length < 2;
  $("branch-count").textContent = String(page.branches.length);
  $("branch-list").replaceChildren(...page.branches.map((branch, i) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.branchId = branch.branch_id;
    button.disabled = page.busy;
    const name = document.createElement("span");
    name.className = "branch-name";
    const count = `${branch.message_count} message${branch.message_count === 1 ? "" : "s"}`;
    name.textContent = `Branch ${i + 1}${branch.active ? " (shown)" : ""} · ${count} · ${formatTime(branch.created_at)}`;
    const preview = document.createElement("span");
    preview.className = "branch-preview";
    preview.textContent = branch.preview ? `“${excerpt(branch.preview, 90)}”` : "(no messages)";
    button.append(name, preview);
    button.setAttribute("aria-current", String(branch.active));
    button.addEventListener("click", () => activateBranch(branch, i + 1));
    item.append(button);
    return item;
  }));
}

function activateBranch(branch, number) {
  if (branch.active) return;
  return runChange(async (session) => {
    await api(`comp/chat/${session.session_id}/branches/${encodeURIComponent(branch.branch_id)}/activate`,
      { method: "POST" });
    await syncHistory();
    $("turn-status").textContent = `Branch ${number} shown.`;
    await followActiveBranch(session);
  });
}

// ---- surgical delete, its impact shown first ----------------------------------------------------------

function deleteMessage(item) {
  return runChange(async (session) => {
    const target = page.messages.get(item.dataset.messageId);
    const path = `comp/chat/${session.session_id}/messages/${encodeURIComponent(target.id)}`;
    $("turn-status").textContent = "Checking what deleting it would change…";
    const impact = await api(`${path}?dry_run=true`, { method: "DELETE" });
    $("turn-status").textContent = "";
    if (!(await confirmDelete(target, impact))) return;
    const applied = await api(path, { method: "DELETE" });
    await syncHistory();
    const count = applied.erased_message_ids.length;
    $("turn-status").textContent = `Deleted ${count} message${count === 1 ? "" : "s"}.`;
    await followActiveBranch(session);
  });
}

function speakerOf(message) {
  return message.role === "user" ? "You" : message.role === "assistant" ? page.session.persona_name : message.kind;
}

function listItems(list, texts, none) {
  list.replaceChildren(...(texts.length ? texts : [none]).map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    if (!texts.length) item.className = "muted";
    return item;
  }));
}

// The impact preview in a modal dialog → whether the user confirmed.
function confirmDelete(target, impact) {
  const dialog = $("delete-dialog");
  $("delete-heading").textContent = target.role === "assistant" ? "Delete this reply?" : "Delete this message?";
  const leaving = impact.leaving_active_branch.map((id) => page.messages.get(id));
  const others = impact.erased_message_ids.length - impact.leaving_active_branch.length;
  $("delete-summary").textContent = [
    "Its text is erased for good: the conversation keeps only the fact that a message was deleted here.",
    others > 0 ? `${others} other ${others === 1 ? "reply" : "replies"} to it, not shown on this branch, ` +
      `${others === 1 ? "goes" : "go"} too.` : "",
  ].filter(Boolean).join(" ");
  listItems($("delete-messages"), leaving.map((message) => message ? `${speakerOf(message)}: ${message.content}` : "A message not loaded on this page"),
    "Nothing shown here leaves.");
  listItems($("delete-memories"), impact.memories.map((memory) => `${memory.content} (${memory.layer}${memory.category ? `, ${memory.category}` : ""})`),
    "None: no memory comes only from it.");
  listItems($("delete-profile"), impact.profile_fields.map((field) => field.replace(/_/g, " ")), "None.");
  showVectorChange(impact.affinity_before, impact.affinity_after);
  const names = { memory: "memories", insight: "profile", affinity: "relationship" };
  $("delete-unavailable").hidden = impact.unavailable.length === 0;
  $("delete-unavailable").textContent = `Could not be checked now: ${impact.unavailable.map((name) => names[name] || name).join(", ")}. ` +
    "The delete still removes what comes only from it there.";
  dialog.returnValue = "";
  dialog.showModal();
  $("delete-cancel").focus();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "delete"), { once: true });
  });
}

function showVectorChange(before, after) {
  const shown = Boolean(before && after);
  $("delete-vector").hidden = !shown;
  if (!shown) {
    $("delete-vector-rows").replaceChildren();
    $("delete-vector-note").textContent = "The relationship before and after could not be computed.";
    return;
  }
  const rows = [...AXES, ...COMPOSITES].map(({ name }) => {
    const row = document.createElement("tr");
    row.dataset.axis = name;
    const changed = before[name].toFixed(3) !== after[name].toFixed(3); // small moves matter: three decimals
    if (changed) row.className = "changed";
    const head = document.createElement("th");
    head.scope = "row";
    head.textContent = name;
    const was = document.createElement("td");
    was.textContent = before[name].toFixed(3);
    const will = document.createElement("td");
    will.textContent = after[name].toFixed(3) + (changed ? (after[name] > before[name] ? " ↑" : " ↓") : "");
    row.append(head, was, will);
    return row;
  });
  $("delete-vector-rows").replaceChildren(...rows);
  const moved = rows.filter((row) => row.className === "changed").length;
  $("delete-vector-note").textContent = (moved ? `${moved} of ${rows.length} values change` : "Nothing changes in the relationship") +
    (before.label !== after.label ? `; the label goes from ${before.label} to ${after.label}.` : `; the label stays ${after.label}.`);
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
  const hidden = $("memory-list").querySelectorAll("li.off-branch").length;
  $("memory-count").textContent = count ? `(${count}${hidden ? `, ${hidden} off the active branch` : ""})` : "";
  $("memories-empty").hidden = count > 0;
}

function memoryElement(memory) {
  const item = document.createElement("li");
  item.dataset.memoryId = memory.id;
  const tags = document.createElement("span");
  tags.className = "tags";
  addBadge(tags, memory.layer, `layer-${memory.layer}`, "layer");
  if (memory.category) addBadge(tags, memory.category, "", "category");
  if (memory.hidden) { // every message it came from is on another branch: not recalled while that one is not shown
    item.classList.add("off-branch");
    addBadge(tags, "off the active branch", "off-branch",
      "It came only from messages on another branch: it is not recalled until that branch is active again.");
  }
  const content = document.createElement("span");
  content.className = "content";
  content.textContent = memory.content;
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "Delete";
  remove.setAttribute("aria-label", `Delete memory: ${memory.content}${memory.hidden ? " (off the active branch)" : ""}`);
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

function refreshAfterChange() {
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
  $("older-button").addEventListener("click", () => loadOlderHistory().catch(showError));
  $("delete-cancel").addEventListener("click", () => $("delete-dialog").close("cancel"));
  $("delete-confirm").addEventListener("click", () => $("delete-dialog").close("delete"));
  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("composer-input");
    const content = input.value.trim();
    if (!content || !page.session) return;
    if (page.busy) {
      // A change is still finishing (e.g. the history being placed): send this once it has, never drop it.
      page.waitingMessage = content;
      input.value = "";
      return;
    }
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
