// The demo page: one ImgateClient (the SDK this gateway serves under sdk/), a push form on the
// business HTTP API, and the online counts. Everything it does, an application can do the
// same way. URL parameters fill the form: ?mid=7&room=live://1000&connect=1 (and ws=URL to
// choose the WebSocket endpoint yourself).
import { ImgateClient } from "./sdk/index.js";

/** Pushes to rooms use this op with history=1 by default; the SDK needs to know it. */
const ROOM_OP = 1001;
const OPS_BY_TARGET = { mids: 1000, room: ROOM_OP, all: 1002 };
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

let client;
let clientMid;
let onlineTimer;

function fillFromUrl() {
  for (const [param, id] of [
    ["mid", "mid"],
    ["room", "room"],
    ["accepts", "accepts"],
    ["token", "token"],
  ]) {
    if (params.has(param)) $(id).value = params.get(param);
  }
  if (params.has("mid")) $("push-mids").value = params.get("mid");
  if (params.has("room")) $("push-room").value = params.get("room");
}

async function websocketUrl() {
  if (params.has("ws")) return params.get("ws");
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let port = 3102;
  try {
    const config = await (await fetch("config.json")).json();
    const first = config.ws?.[0];
    if (first) port = Number(first.slice(first.lastIndexOf(":") + 1));
  } catch {
    // No registry answer: goim's default port.
  }
  return `${scheme}://${location.hostname}:${port}/sub`;
}

function setStatus(state, text, detail = "") {
  const status = $("status");
  status.className = `status ${state}`;
  status.dataset.state = state;
  status.textContent = text;
  $("status-detail").textContent = detail;
}

function addLine(node) {
  const list = $("messages");
  list.prepend(node);
  $("count").textContent = list.querySelectorAll("li.message").length;
}

function showMessage(message) {
  const li = document.createElement("li");
  li.className = "message";
  li.dataset.kind = message.kind;
  li.dataset.op = message.op;
  li.dataset.seq = message.seq;
  const kind = document.createElement("span");
  kind.className = `kind ${message.kind}`;
  kind.textContent = message.kind;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = message.text();
  const meta = document.createElement("span");
  meta.className = "meta";
  const where = message.room ? ` ${message.room}` : "";
  meta.textContent = `op ${message.op}${message.seq ? ` #${message.seq}` : ""}${where} · ${new Date().toLocaleTimeString()}`;
  li.append(kind, body, meta);
  addLine(li);
}

function note(text) {
  const li = document.createElement("li");
  li.className = "note";
  li.textContent = text;
  addLine(li);
}

/** Where the SDK's logs stand is kept per user, so a reload picks up where it was. */
function savedState(mid) {
  try {
    return JSON.parse(localStorage.getItem(`imgate-demo:${mid}`) ?? "{}");
  } catch {
    return {};
  }
}

function saveState(mid) {
  try {
    localStorage.setItem(`imgate-demo:${mid}`, JSON.stringify(client.state));
  } catch {
    // Storage may be off; the demo works without it.
  }
}

function parseOps(text) {
  return text
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map(Number);
}

async function connect(event) {
  event?.preventDefault();
  const mid = Number($("mid").value);
  if (!client || clientMid !== mid) {
    client?.close();
    const saved = savedState(mid);
    const token = $("token").value.trim();
    client = new ImgateClient({
      url: await websocketUrl(),
      mid,
      token: token || undefined,
      room: $("room").value.trim(),
      accepts: parseOps($("accepts").value),
      roomHistoryOps: [ROOM_OP],
      inboxSeq: saved.inboxSeq ?? undefined,
      roomSeqs: saved.roomSeqs,
      reconnect: { minDelay: 500, maxDelay: 10_000 },
    });
    clientMid = mid;
    client.on("message", (message) => {
      showMessage(message);
      saveState(mid);
    });
    client.on("connected", ({ reconnected }) => {
      setStatus("on", "connected", `as user ${mid}${client.room ? ` in ${client.room}` : ""}`);
      note(reconnected ? "reconnected: catching up" : `connected as user ${mid}`);
      $("switch-button").disabled = false;
    });
    client.on("disconnected", ({ reason, willReconnect, delay }) => {
      $("switch-button").disabled = true;
      if (willReconnect) {
        setStatus("wait", "reconnecting", `in ${delay} ms: ${reason}`);
      } else {
        setStatus("off", "offline", reason);
      }
      note(willReconnect ? `disconnected: ${reason}` : `offline: ${reason}`);
    });
    client.on("error", (error) => note(`error (${error.code}): ${error.message}`));
    client.on("heartbeat", ({ online }) => ($("online-heartbeat").textContent = online));
  }
  const room = $("room").value.trim();
  if (room !== client.room) await client.switchRoom(room).catch(() => {});
  setStatus("wait", "connecting");
  $("connect").disabled = true;
  $("disconnect").disabled = false;
  $("mid").disabled = true;
  client.connect().catch(() => {});
  refreshOnline();
  clearInterval(onlineTimer);
  onlineTimer = setInterval(refreshOnline, 2000);
}

function disconnect() {
  client?.close();
  $("connect").disabled = false;
  $("disconnect").disabled = true;
  $("mid").disabled = false;
}

async function switchRoom(event) {
  event.preventDefault();
  const room = $("switch-room").value.trim();
  try {
    await client.switchRoom(room);
    $("room").value = room;
    note(room ? `now in ${room}` : "left the room");
    refreshOnline();
  } catch (error) {
    note(`switching to ${room} failed: ${error.message}`);
  }
}

function apiHeaders() {
  const key = $("push-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** `type://id` → ["type", "id"]. */
function splitRoom(room) {
  const at = room.indexOf("://");
  return at < 0 ? ["", room] : [room.slice(0, at), room.slice(at + 3)];
}

async function push(event) {
  event.preventDefault();
  const target = $("push-target").value;
  const query = new URLSearchParams({ operation: $("push-op").value });
  if (target === "mids") {
    for (const mid of $("push-mids").value.split(",").map((s) => s.trim()).filter(Boolean)) {
      query.append("mids", mid);
    }
  } else if (target === "room") {
    const [type, id] = splitRoom($("push-room").value.trim());
    query.set("type", type);
    query.set("room", id);
    if ($("push-history").checked) query.set("history", "1");
  }
  const path = target === "all" ? "/goim/push/all" : `/goim/push/${target}`;
  const result = $("push-result");
  try {
    const response = await fetch(`${path}?${query}`, {
      method: "POST",
      headers: apiHeaders(),
      body: $("push-body").value,
    });
    const text = await response.text();
    result.className = response.ok ? "result" : "result bad";
    result.textContent = `${response.status} ${text}`;
  } catch (error) {
    result.className = "result bad";
    result.textContent = String(error);
  }
  refreshOnline();
}

async function refreshOnline() {
  const room = client?.room || $("room").value.trim();
  $("online-room-name").textContent = room || "the room";
  try {
    const total = await (await fetch("/goim/online/total", { headers: apiHeaders() })).json();
    $("online-total").textContent = total.data?.conn_count ?? "–";
    if (room) {
      const [type, id] = splitRoom(room);
      const query = new URLSearchParams({ type, rooms: id });
      const rooms = await (await fetch(`/goim/online/room?${query}`, { headers: apiHeaders() })).json();
      $("online-room").textContent = rooms.data?.[id] ?? "–";
    } else {
      $("online-room").textContent = "–";
    }
  } catch {
    // The counts are a nicety; a failed poll leaves the last ones.
  }
}

function showTargetFields() {
  const target = $("push-target").value;
  for (const label of document.querySelectorAll("#push [data-for]")) {
    label.hidden = label.dataset.for !== target;
  }
  $("push-op").value = OPS_BY_TARGET[target];
}

fillFromUrl();
$("login").addEventListener("submit", connect);
$("disconnect").addEventListener("click", disconnect);
$("switch").addEventListener("submit", switchRoom);
$("push").addEventListener("submit", push);
$("push-target").addEventListener("change", showTargetFields);
refreshOnline();
if (params.get("connect") === "1") connect();
