// The demo page of `notify-server dev`. Notification text is user-controlled: it is only ever set
// with textContent (never innerHTML).
import { NotifyClient, onPushClick, pushSupported } from "/static/notify-client.js";

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 20;
const TOAST_MS = 6000;

const state = {
  user: null,
  client: null,
  items: new Map(), // notification_id -> item, rendered newest first
  nextBefore: null,
  tab: "all", // the inbox's tab: "unread", "all" (not archived) or "archived"
  templates: {},
  preferences: null, // the last GET/PATCH /api/preferences answer
};

// ---------------------------------------------------------------- helpers

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text != null) node.textContent = String(text);
  return node;
}

async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (method !== "GET") {
    // The dev routes take JSON only: a cross-site form cannot send it without a CORS preflight.
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body === undefined ? {} : body);
  }
  const response = await fetch(path, init);
  let data = null;
  try {
    data = await response.json();
  } catch (_) {
    data = null;
  }
  if (!response.ok) {
    const message = (data && data.error && data.error.message) || `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return data;
}

function timeAgo(iso) {
  const then = Date.parse(iso);
  if (!then) return "";
  const s = Math.max(0, Math.round((Date.now() - then) / 1000));
  if (s < 10) return "just now";
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return new Date(then).toLocaleDateString();
}

// ---------------------------------------------------------------- status, badge

const STATUS_TEXT = {
  connecting: "connecting…",
  open: "live",
  reconnecting: "reconnecting",
  unauthorized: "signed out",
  stopped: "not connected",
};

// Which transport carries the notifications: the WebSocket, or Server-Sent Events where it is blocked.
const TRANSPORT_TEXT = { websocket: "WebSocket", sse: "SSE (fallback)" };

function showStatus(status, info = {}) {
  $("status").dataset.status = status;
  let text = STATUS_TEXT[status] || status;
  if (status === "reconnecting") {
    if (info.delayMs != null) text += ` in ${(info.delayMs / 1000).toFixed(1)} s`;
    if (info.code) text += ` (close ${info.code})`;
  }
  $("status-text").textContent = text;
  const transport = $("transport");
  const kind = status === "open" ? info.transport || (state.client && state.client.transport) : null;
  transport.hidden = !kind;
  transport.dataset.transport = kind || "";
  transport.textContent = kind ? TRANSPORT_TEXT[kind] || kind : "";
}

// The bell's badge counts what is new since the bell was last opened (unseen); the Unread tab, what is
// not read yet. Both leave archived notifications out.
function showCount(count, unseen = count) {
  const badge = $("badge");
  badge.textContent = unseen > 99 ? "99+" : String(unseen);
  badge.dataset.count = String(unseen);
  badge.hidden = !(unseen > 0);
  const unread = $("unread-count");
  unread.textContent = count > 99 ? "99+" : String(count);
  unread.dataset.count = String(count);
  document.title = unseen > 0 ? `(${unseen}) notify-server demo` : "notify-server demo";
}

// ---------------------------------------------------------------- list

function act(promise, what) {
  promise.then((updated) => upsert(updated), (error) => flash(`Could not ${what}: ${error.message}`));
}

function renderItem(item) {
  const li = el("li", "item");
  li.dataset.id = item.notification_id;
  li.dataset.priority = item.priority || "NORMAL";
  li.classList.toggle("unread", !item.read_at);
  li.classList.toggle("archived", Boolean(item.archived_at));
  li.tabIndex = 0;
  li.title = item.read_at ? "read" : "click to mark read";

  const head = el("div", "item-head");
  head.append(el("span", "title", item.title), el("span", `prio prio-${(item.priority || "").toLowerCase()}`, item.priority));
  const actions = el("span", "item-actions");
  const id = item.notification_id;
  const readButton = el("button", "mark-unread", item.read_at ? "Mark unread" : "Mark read");
  readButton.type = "button";
  readButton.addEventListener("click", (event) => {
    event.stopPropagation();
    if (item.read_at) act(state.client.markUnread(id), "mark unread");
    else act(state.client.markRead(id), "mark read");
  });
  const archiveButton = el("button", "archive", item.archived_at ? "Unarchive" : "Archive");
  archiveButton.type = "button";
  archiveButton.addEventListener("click", (event) => {
    event.stopPropagation();
    if (item.archived_at) act(state.client.unarchive(id), "unarchive");
    else act(state.client.archive(id), "archive");
  });
  actions.append(readButton, archiveButton);
  head.append(actions);
  li.append(head, el("p", "body", item.body));
  const meta = el("div", "meta muted");
  meta.append(el("span", null, item.event_type), el("span", null, timeAgo(item.created_at)));
  if (item.action_url) meta.append(el("code", null, item.action_url));
  li.append(meta);

  const markRead = () => {
    if (item.read_at) return;
    act(state.client.markRead(id), "mark read");
  };
  li.addEventListener("click", markRead);
  li.addEventListener("keydown", (event) => {
    if (event.target === li && (event.key === "Enter" || event.key === " ")) {
      event.preventDefault();
      markRead();
    }
  });
  return li;
}

function inTab(item) {
  if (state.tab === "archived") return Boolean(item.archived_at);
  if (item.archived_at) return false;
  return state.tab !== "unread" || !item.read_at;
}

function renderList() {
  const list = $("list");
  const items = [...state.items.values()]
    .filter(inTab)
    .sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0));
  list.replaceChildren(...items.map(renderItem));
  $("empty").hidden = items.length > 0;
  $("empty").textContent = state.tab === "archived" ? "Nothing archived." : "No notifications yet. Emit one with the form.";
  $("more").hidden = !state.nextBefore;
  for (const tab of document.querySelectorAll("#tabs .tab")) {
    tab.setAttribute("aria-selected", String(tab.dataset.tab === state.tab));
  }
}

function upsert(item) {
  state.items.set(item.notification_id, { ...(state.items.get(item.notification_id) || {}), ...item });
  renderList();
}

const TAB_QUERY = { unread: { read: false }, all: {}, archived: { archived: true } };

let listRequests = 0;

async function loadList({ append = false } = {}) {
  const request = ++listRequests;
  const page = await state.client.list({
    ...TAB_QUERY[state.tab],
    limit: PAGE_SIZE,
    before: append ? state.nextBefore : undefined,
  });
  // An older request answering after a newer one (a tab switched, a refetch after an update) is stale.
  if (request !== listRequests) return;
  if (!append) state.items.clear();
  for (const item of page.items) state.items.set(item.notification_id, item);
  state.nextBefore = page.next_before;
  renderList();
}

// Another tab (or this one) changed states: apply them to what this tab shows, without a refetch.
function applyUpdate(update) {
  const now = new Date().toISOString();
  let unknown = false;
  for (const id of update.notification_ids) {
    const item = state.items.get(id);
    if (!item) {
      unknown = true;
      continue;
    }
    if (update.read === true) item.read_at = item.read_at || now;
    if (update.read === false) item.read_at = null;
    if (update.seen === true) item.seen_at = item.seen_at || now;
    if (update.archived === true) item.archived_at = item.archived_at || now;
    if (update.archived === false) item.archived_at = null;
  }
  renderList();
  // One this tab does not hold came into its view (unarchived, or marked unread): fetch the page again.
  if (unknown && (update.archived === false || update.read === false || state.tab === "archived")) refreshListSoon();
}

let refreshTimer = null;
function refreshListSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    if (state.client) loadList().catch(() => {});
  }, 150);
}

function refresh() {
  // The unread count needs no refetch: the server sends one on connect and after every change.
  loadList().catch((error) => flash(`Could not load notifications: ${error.message}`));
}

// ---------------------------------------------------------------- toasts

function toast(n) {
  const box = el("div", "toast");
  box.dataset.id = n.notification_id;
  box.dataset.priority = n.priority || "NORMAL";
  box.setAttribute("role", "status");
  box.append(el("strong", "title", n.title), el("p", "body", n.body));
  const close = () => box.remove();
  box.addEventListener("click", close);
  $("toasts").append(box);
  setTimeout(close, TOAST_MS);
}

function flash(message) {
  const box = el("div", "toast toast-error", message);
  box.addEventListener("click", () => box.remove());
  $("toasts").append(box);
  setTimeout(() => box.remove(), TOAST_MS);
}

// ---------------------------------------------------------------- session

function startClient() {
  if (state.client) state.client.stop();
  state.client = new NotifyClient({
    onStatus: showStatus,
    onUnreadCount: (count, info) => showCount(count, info && typeof info.unseen === "number" ? info.unseen : count),
    onNotificationsUpdated: applyUpdate,
    onNotification: (n) => upsert({ ...n, read_at: null, seen_at: null, archived_at: null }),
    onToast: toast,
    onResync: refresh,
    onUnauthorized: () => signedOut("Your session ended. Sign in again."),
  });
  state.client.start();
  loadList().catch((error) => flash(`Could not load notifications: ${error.message}`));
}

function signedIn(user) {
  state.user = user;
  $("who-name").textContent = user;
  $("who").hidden = false;
  $("signin").hidden = true;
  $("app").hidden = false;
  if (!$("emit-to").value) $("emit-to").value = user;
  startClient();
  loadTemplates();
  showPush();
  loadPreferences();
}

function signedOut(message) {
  if (state.client) state.client.stop();
  state.client = null;
  state.user = null;
  state.items.clear();
  state.nextBefore = null;
  renderList();
  showCount(0);
  showStatus("unauthorized");
  $("who").hidden = true;
  $("app").hidden = true;
  $("signin").hidden = false;
  const error = $("signin-error");
  error.textContent = message || "";
  error.hidden = !message;
}

async function signIn(event) {
  event.preventDefault();
  const user = $("signin-user").value.trim();
  if (!user) return;
  try {
    const body = await api("POST", "/dev/session", { user_id: user });
    $("emit-to").value = body.user_id;
    signedIn(body.user_id);
  } catch (error) {
    signedOut(`Sign-in failed: ${error.message}`);
  }
}

async function signOut() {
  try {
    // This browser's pushes belong to the user signing out: the next one to sign in must not get them.
    if (state.client) await state.client.disablePush().catch(() => {});
    await api("POST", "/dev/logout");
  } finally {
    signedOut();
  }
}

// ---------------------------------------------------------------- emit form

async function loadTemplates() {
  if (Object.keys(state.templates).length) return;
  try {
    state.templates = (await api("GET", "/dev/templates")).templates || {};
  } catch (error) {
    flash(`Could not load templates: ${error.message}`);
    return;
  }
  const select = $("emit-type");
  select.replaceChildren(...Object.keys(state.templates).map((type) => {
    const option = el("option", null, type);
    option.value = type;
    return option;
  }));
  showTemplate();
}

const SAMPLE = {
  provider_name: "Dr. Smith", claim_id: "abc123", amount: "$120.00", requester_name: "Dr. Jones",
  document_name: "insurance card", request_id: "req-42", time: "10:30", date: "Friday",
  appointment_id: "apt-7", last4: "4242", author_name: "Sam", excerpt: "Looks good to me!",
};

function showTemplate() {
  const template = state.templates[$("emit-type").value];
  const vars = $("emit-vars");
  if (!template) {
    vars.replaceChildren();
    $("emit-template").textContent = "";
    return;
  }
  $("emit-template").textContent = `${template.title} — ${template.body}`;
  vars.replaceChildren(...template.variables.map((name) => {
    const label = el("label", null, name);
    const input = el("input");
    input.name = name;
    input.dataset.var = name;
    input.autocomplete = "off";
    input.value = SAMPLE[name] || "";
    label.append(input);
    return label;
  }));
}

async function emit(event) {
  event.preventDefault();
  const data = {};
  for (const input of $("emit-vars").querySelectorAll("input[data-var]")) data[input.dataset.var] = input.value;
  const to = $("emit-to").value.split(",").map((s) => s.trim()).filter(Boolean);
  const result = $("emit-result");
  result.hidden = false;
  result.className = "result";
  result.textContent = "sending…";
  try {
    const body = await api("POST", "/dev/emit", { event_type: $("emit-type").value, to, data });
    result.textContent = `queued for ${to.join(", ")} (event ${body.event_id})`;
  } catch (error) {
    result.className = "result error";
    result.textContent = error.message;
  }
}

// ---------------------------------------------------------------- dev status
// `notify-server dev` says here when its embedded Postgres or Redis has stopped: without them nothing
// can be signed in, stored or pushed, and the page must say so rather than fail quietly.

const DEV_STATUS_MS = 2000;

async function showDevStatus() {
  let problems;
  try {
    const response = await fetch("/dev/status", { cache: "no-store" });
    if (!response.ok) return;
    ({ problems } = await response.json());
  } catch (_) {
    return; // the dev process itself is gone: the connection status says so
  }
  $("dev-problem-text").textContent = problems.join(" ");
  $("dev-problem").hidden = problems.length === 0;
}

// ---------------------------------------------------------------- web push (issue 20)

async function showPush() {
  const button = $("push");
  button.hidden = !pushSupported() || !state.client;
  if (button.hidden) return;
  const enabled = await state.client.pushEnabled().catch(() => false);
  button.textContent = enabled ? "Disable push" : "Enable push";
  button.dataset.enabled = enabled ? "true" : "false";
}

async function togglePush() {
  const button = $("push");
  button.disabled = true;
  try {
    if (button.dataset.enabled === "true") {
      await state.client.disablePush();
      flash("Push notifications are off for this browser.");
    } else {
      await state.client.enablePush();
      flash("Push notifications are on: close every tab and emit an event to yourself.");
    }
  } catch (error) {
    flash(`Push: ${error.message}`);
  } finally {
    button.disabled = false;
    showPush();
  }
}

// ---------------------------------------------------------------- preferences (issue 19)

function prefToggle(key, label, checked, { disabled = false } = {}) {
  const wrap = el("label", "toggle");
  const input = el("input");
  input.type = "checkbox";
  input.checked = checked;
  input.disabled = disabled;
  input.dataset.pref = key;
  wrap.append(input, el("span", null, label));
  return wrap;
}

function renderPreferences(prefs) {
  state.preferences = prefs;
  $("pref-in-app").checked = !!prefs.channels.in_app;
  const byCategory = new Map();
  for (const [type, info] of Object.entries(prefs.catalog)) {
    if (!byCategory.has(info.category)) byCategory.set(info.category, []);
    byCategory.get(info.category).push([type, info]);
  }
  $("pref-categories").replaceChildren(...[...byCategory.keys()].sort().map((category) => {
    const box = el("div", "pref-category");
    box.dataset.category = category;
    box.append(prefToggle(`category:${category}`, category, !!prefs.categories[category].in_app));
    const list = el("ul", "pref-types");
    for (const [type, info] of byCategory.get(category)) {
      const li = el("li");
      li.dataset.type = type;
      li.append(prefToggle(`type:${type}`, type, !!prefs.event_types[type].in_app, { disabled: info.critical }));
      if (info.critical) li.append(el("span", "locked", "critical"));
      if (info.digest_window_s > 0) li.append(el("span", "note", `bursts folded, ${Math.round(info.digest_window_s / 60)} min`));
      list.append(li);
    }
    box.append(list);
    return box;
  }));
}

async function loadPreferences() {
  try {
    renderPreferences(await state.client.getPreferences());
    $("pref-error").hidden = true;
  } catch (error) {
    showPreferenceError(`Could not load preferences: ${error.message}`);
  }
}

function showPreferenceError(message) {
  const box = $("pref-error");
  box.textContent = message;
  box.hidden = false;
}

async function changePreference(event) {
  const input = event.target;
  if (!input.dataset || !input.dataset.pref) return;
  const [kind, name] = input.dataset.pref.split(/:(.*)/s);
  const switches = { in_app: input.checked };
  const patch = kind === "channel" ? { channels: switches }
    : kind === "category" ? { categories: { [name]: switches } }
      : { event_types: { [name]: switches } };
  try {
    renderPreferences(await state.client.setPreferences(patch));
    $("pref-error").hidden = true;
  } catch (error) {
    if (state.preferences) renderPreferences(state.preferences); // back to what the server holds
    showPreferenceError(error.message);
  }
}

// ---------------------------------------------------------------- wiring

async function main() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("emit-form").addEventListener("submit", emit);
  $("emit-type").addEventListener("change", showTemplate);
  $("push").addEventListener("click", togglePush);
  // A click on a push notification focused this tab (notify-sw.js): show the list with the item in it.
  onPushClick(() => state.client && refresh());
  $("preferences").addEventListener("change", changePreference);
  $("mark-all").addEventListener("click", () => {
    // Every tab (this one too) hears which ones changed: notifications_updated.
    state.client.markAllRead().catch((error) => flash(`Could not mark all read: ${error.message}`));
  });
  $("more").addEventListener("click", () => loadList({ append: true }).catch((error) => flash(error.message)));
  for (const tab of document.querySelectorAll("#tabs .tab")) {
    tab.addEventListener("click", () => {
      state.tab = tab.dataset.tab;
      state.nextBefore = null;
      renderList();
      if (state.client) loadList().catch((error) => flash(error.message));
    });
  }
  // Opening the bell: everything in the inbox is seen, so the badge clears here and in every other tab.
  $("bell").addEventListener("click", () => {
    if (!state.client) return;
    $("inbox").scrollIntoView({ block: "nearest" });
    state.client.markAllSeen().catch((error) => flash(`Could not mark seen: ${error.message}`));
  });
  setInterval(() => state.items.size && renderList(), 30000); // keep "x min ago" fresh
  showDevStatus();
  setInterval(showDevStatus, DEV_STATUS_MS);

  try {
    const me = await api("GET", "/dev/whoami");
    signedIn(me.user_id);
  } catch (_) {
    signedOut();
    showStatus("stopped");
    $("signin-user").focus();
  }
}

main();
