// The demo page: one ImgateClient (the SDK this gateway serves under sdk/) in a main room and
// any rooms joined besides, a push form on the business HTTP API, a message to the business,
// and online counts per room. Everything it does, an application can do the same way. URL
// parameters fill the form: ?mid=7&room=live://1000&rooms=chat://a,chat://b&connect=1 (and
// ws=URL to choose the WebSocket endpoint yourself; token=JWT, apikey=KEY for a gateway that
// needs them). The token is read from its field whenever the SDK asks for one (getToken): at
// each connection and before the current token expires.
import { ImgateClient } from "./sdk/index.js";

const OPS_BY_TARGET = { mids: 1000, room: 1001, all: 1002 };
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

let client;
let clientMid;
let onlineTimer;
/** Rooms to join once there is a client (from the URL, or joined before connecting). */
const roomsToJoin = new Set(listParam("rooms"));
/** The last online count read for each room. */
const onlineCounts = new Map();

function listParam(name) {
  return (params.get(name) ?? "")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
}

function fillFromUrl() {
  for (const [param, id] of [
    ["mid", "mid"],
    ["room", "room"],
    ["accepts", "accepts"],
    ["token", "token"],
    ["apikey", "push-key"],
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

function span(className, text) {
  const node = document.createElement("span");
  node.className = className;
  node.textContent = text;
  return node;
}

function showMessage(message) {
  const li = document.createElement("li");
  li.className = "message";
  li.dataset.kind = message.kind;
  li.dataset.op = message.op;
  li.dataset.seq = message.seq;
  if (message.room) li.dataset.room = message.room;
  const content = document.createElement("div");
  content.className = "content";
  if (message.room) content.append(span("where", message.room));
  content.append(span("body", message.text()));
  const seq = message.seq ? ` #${message.seq}` : "";
  const meta = span("meta", `op ${message.op}${seq} · ${new Date().toLocaleTimeString()}`);
  li.append(span(`kind ${message.kind}`, message.kind), content, meta);
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
    localStorage.setItem(`imgate-demo:${mid}`, JSON.stringify(client.checkpoint));
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

/** The rooms this page is in (or will be in once connected): the main room first. */
function currentRooms() {
  if (client) return client.rooms;
  const main = $("room").value.trim();
  return [...new Set([main, ...roomsToJoin].filter(Boolean))];
}

function renderRooms() {
  const list = $("rooms");
  const choices = $("room-choices");
  list.replaceChildren();
  choices.replaceChildren();
  const main = client ? client.room : $("room").value.trim();
  for (const room of currentRooms()) {
    const li = document.createElement("li");
    li.dataset.room = room;
    li.append(span("name", room));
    if (room === main) li.append(span("tag", "main"));
    li.append(span("members", String(onlineCounts.get(room) ?? "–")));
    const leave = document.createElement("button");
    leave.type = "button";
    leave.className = "leave";
    leave.textContent = "Leave";
    leave.addEventListener("click", () => leaveRoom(room));
    li.append(leave);
    list.append(li);
    const option = document.createElement("option");
    option.value = room;
    choices.append(option);
  }
}

function setConnectedControls(connected) {
  $("send-button").disabled = !connected;
}

async function connect(event) {
  event?.preventDefault();
  const mid = Number($("mid").value);
  if (!client || clientMid !== mid) {
    // Another user: a new client, in the same rooms.
    for (const room of client?.joinedRooms ?? []) roomsToJoin.add(room);
    client?.close();
    const saved = savedState(mid);
    const signed = $("token").value.trim() !== "";
    client = new ImgateClient({
      url: await websocketUrl(),
      mid,
      // The token field as it is when the SDK asks: paste a fresh token to renew it.
      getToken: signed ? () => $("token").value.trim() || null : undefined,
      room: $("room").value.trim(),
      accepts: parseOps($("accepts").value),
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
      setStatus("on", "connected", `as user ${mid}`);
      const rooms = client.rooms.length;
      note(
        reconnected
          ? `reconnected: back in ${rooms} room${rooms === 1 ? "" : "s"}, catching up`
          : `connected as user ${mid}`,
      );
      setConnectedControls(true);
      renderRooms();
    });
    client.on("disconnected", ({ reason, willReconnect, delay }) => {
      setConnectedControls(false);
      if (willReconnect) {
        setStatus("wait", "reconnecting", `in ${delay} ms: ${reason}`);
      } else {
        setStatus("off", "offline", reason);
      }
      note(willReconnect ? `disconnected: ${reason}` : `offline: ${reason}`);
    });
    client.on("error", (error) => {
      note(`error (${error.code}): ${error.message}`);
      renderRooms(); // a room refused on rejoin is gone
    });
    client.on("heartbeat", ({ online }) => ($("online-heartbeat").textContent = online));
    client.on("token", ({ exp }) => {
      note(`token renewed: valid until ${new Date(exp * 1000).toLocaleTimeString()}`);
    });
    client.on("kicked", ({ reason, final }) => {
      note(final ? `disconnected by the server: ${reason}` : `asked to reconnect: ${reason}`);
    });
    client.on("roomJoined", ({ room, by }) => {
      if (by === "server") note(`the server joined you to ${room}`);
      renderRooms();
      refreshOnline();
    });
    client.on("roomLeft", ({ room, by }) => {
      if (by === "server") note(`the server took you out of ${room}`);
      onlineCounts.delete(room);
      renderRooms();
    });
  }
  const room = $("room").value.trim();
  if (room !== client.room) await client.switchRoom(room).catch(() => {});
  // Offline, joins are remembered and made once connected.
  for (const joined of roomsToJoin) await client.join(joined);
  roomsToJoin.clear();
  renderRooms();
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

async function joinRoom(event) {
  event.preventDefault();
  const room = $("join-room").value.trim();
  if (!room) return;
  if (!client) {
    roomsToJoin.add(room);
  } else {
    try {
      await client.join(room);
      note(`joined ${room}`);
    } catch (error) {
      note(`joining ${room} failed (${error.code}): ${error.message}`);
    }
  }
  $("join-room").value = "";
  renderRooms();
  refreshOnline();
}

async function leaveRoom(room) {
  if (!client) {
    roomsToJoin.delete(room);
    if ($("room").value.trim() === room) $("room").value = "";
  } else {
    try {
      await client.leave(room);
      note(`left ${room}`);
    } catch (error) {
      note(`leaving ${room}: ${error.message}`);
    }
    $("room").value = client.room;
  }
  onlineCounts.delete(room);
  renderRooms();
  refreshOnline();
}

/** Asks the business API to join this page's user to a room (every connection of the user). */
async function serverJoin(event) {
  event.preventDefault();
  const room = $("server-join-room").value.trim();
  if (!room || !client) return;
  const [type, id] = splitRoom(room);
  const query = new URLSearchParams({ type, room: id, mids: String(clientMid) });
  try {
    const response = await fetch(`/goim/rooms/join?${query}`, { method: "POST", headers: apiHeaders() });
    if (!response.ok) note(`the server could not join ${room}: ${response.status} ${await response.text()}`);
  } catch (error) {
    note(`the server could not join ${room}: ${error}`);
  }
  $("server-join-room").value = "";
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

async function sendToBusiness(event) {
  event.preventDefault();
  const result = $("send-result");
  try {
    const answer = await client.send($("send-body").value);
    result.className = "result";
    result.textContent =
      answer.length === 0
        ? "answered with nothing: the business gave no answer"
        : `answered (${answer.length} bytes): ${new TextDecoder().decode(answer)}`;
  } catch (error) {
    result.className = "result bad";
    result.textContent = `${error.code}: ${error.message}`;
  }
}

/** Online counts of the page's rooms, one query per room type. */
async function refreshOnline() {
  try {
    const total = await (await fetch("/goim/online/total", { headers: apiHeaders() })).json();
    $("online-total").textContent = total.data?.conn_count ?? "–";
    const byType = new Map();
    for (const room of currentRooms()) {
      const [type, id] = splitRoom(room);
      if (!byType.has(type)) byType.set(type, []);
      byType.get(type).push([room, id]);
    }
    for (const [type, rooms] of byType) {
      const query = new URLSearchParams({ type });
      for (const [, id] of rooms) query.append("rooms", id);
      const answer = await (await fetch(`/goim/online/room?${query}`, { headers: apiHeaders() })).json();
      for (const [room, id] of rooms) onlineCounts.set(room, answer.data?.[id] ?? 0);
    }
  } catch {
    // The counts are a nicety; a failed poll leaves the last ones.
  }
  for (const li of $("rooms").querySelectorAll("li[data-room]")) {
    li.querySelector(".members").textContent = String(onlineCounts.get(li.dataset.room) ?? "–");
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
$("join").addEventListener("submit", joinRoom);
$("server-join").addEventListener("submit", serverJoin);
$("push").addEventListener("submit", push);
$("send").addEventListener("submit", sendToBusiness);
$("push-target").addEventListener("change", showTargetFields);
$("room").addEventListener("change", () => client || renderRooms());
renderRooms();
refreshOnline();
if (params.get("connect") === "1") connect();
