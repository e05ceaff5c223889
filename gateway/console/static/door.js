// The Door page: the door's state and lockdown and its recent decisions for every staff
// member; for an administrator also the snapshots, remote open (with a reason), lockdown and
// release (the gateway refuses them to anyone else whatever this page shows). Live from
// /api/live?page=door.
"use strict";

const DOOR_TEXT = {
  "zh-CN": {
    title: "值班台 · 门禁", door: "门", decisions: "最近的开门记录",
    noDoor: "本网关没有配置门禁。",
    state: { closed: "已关闭", open: "开着", held: "开着太久", forced: "被强行打开", unknown: "状态未知" },
    openFor: (d) => `已开 ${d}`,
    lockdown: "已封锁", lockdownBy: "操作人", lockdownSince: "自",
    openReason: "开门原因", lockdownReason: "封锁原因",
    open: "远程开门", lockdownButton: "封锁门禁", release: "解除封锁",
    needReason: "请先填写原因。",
    head: ["时间", "方式", "人员", "结果", "原因", "操作人", "照片"],
    method: { face: "人脸", card: "门卡", remote: "远程", exit: "出门按钮", "card+face": "门卡+人脸" },
    reason: { liveness: "像照片或屏幕", mismatch: "与门卡持有人不符", lockdown: "门禁已封锁",
      unknown_card: "未登记的门卡", unknown_face: "陌生人", timeout: "超时" },
    granted: "放行", refused: "拒绝", photo: "查看照片", close: "关闭照片", nobody: "—",
  },
  en: {
    title: "Duty console · Door", door: "Door", decisions: "Recent decisions",
    noDoor: "This gateway has no door configured.",
    state: { closed: "Closed", open: "Open", held: "Held open", forced: "FORCED open", unknown: "State unknown" },
    openFor: (d) => `open for ${d}`,
    lockdown: "LOCKED DOWN", lockdownBy: "by", lockdownSince: "since",
    openReason: "Reason to open", lockdownReason: "Reason for the lockdown",
    open: "Open remotely", lockdownButton: "Lock down", release: "Release lockdown",
    needReason: "Give a reason first.",
    head: ["Time", "How", "Person", "Result", "Reason", "By", "Snapshot"],
    method: { face: "Face", card: "Card", remote: "Remote", exit: "Exit button",
      "card+face": "Card + face" },
    reason: { liveness: "moves like a photo or screen", mismatch: "not the card's holder",
      lockdown: "door locked down", unknown_card: "unknown card", unknown_face: "stranger",
      timeout: "timed out" },
    granted: "Granted", refused: "Refused", photo: "Show", close: "Close snapshot", nobody: "—",
  },
};

let doorText = DOOR_TEXT["zh-CN"];
let doorView = null;
let doorShownAt = 0;

function isAdmin() { return Console.page && Console.page.role === "admin"; }

function clock(ms) {
  return new Date(ms).toLocaleString(document.documentElement.lang, { hour12: false });
}

function labels(text) {
  const $ = Console.$;
  $("door-title").textContent = text.door;
  $("decisions-title").textContent = text.decisions;
  $("open-reason-label").textContent = text.openReason;
  $("lockdown-reason-label").textContent = text.lockdownReason;
  $("door-open").textContent = text.open;
  $("door-lockdown").textContent = text.lockdownButton;
  $("door-release").textContent = text.release;
  $("snapshot-close").textContent = text.close;
  $("decisions-head").replaceChildren(...text.head.map((label) => {
    const cell = document.createElement("th");
    cell.textContent = label;
    return cell;
  }));
}

function drawDoor(page, text) {
  doorText = text;
  const $ = Console.$;
  labels(text);
  if (page === null) {
    $("no-door").hidden = false;
    $("no-door").textContent = text.noDoor;
    $("door-section").hidden = true;
    return;
  }
  doorView = page.door;
  doorShownAt = Date.now();
  $("door-section").hidden = false;
  const door = page.door;
  const state = $("door-state");
  state.textContent = `${door.door}: ${text.state[door.state] || door.state}`;
  state.className = `chip door-${door.state}`;
  state.dataset.state = door.state;
  tickDoor();
  const lockdown = $("lockdown");
  lockdown.hidden = !door.locked_down;
  lockdown.dataset.locked = door.locked_down ? "true" : "false";
  if (door.locked_down) {
    const parts = [text.lockdown];
    if (door.lockdown_reason) parts.push(`: ${door.lockdown_reason}`);
    if (door.lockdown_by) parts.push(` · ${text.lockdownBy} ${door.lockdown_by}`);
    if (door.lockdown_since_ms) parts.push(` · ${text.lockdownSince} ${clock(door.lockdown_since_ms)}`);
    lockdown.textContent = parts.join("");
  }
  const admin = isAdmin();
  $("door-admin").hidden = !admin;
  if (admin) {
    $("door-lockdown").hidden = door.locked_down;
    $("lockdown-reason").hidden = door.locked_down;
    $("lockdown-reason-label").hidden = door.locked_down;
    $("door-release").hidden = !door.locked_down;
  }
  $("decision-rows").replaceChildren(...page.recent.map((decision) => {
    const row = document.createElement("tr");
    row.className = `decision ${decision.granted ? "granted" : "refused"}`;
    row.dataset.id = decision.event_id;
    Console.cell(row, clock(decision.at_ms), "at");
    Console.cell(row, text.method[decision.method] || decision.method, "method");
    Console.cell(row, decision.person || text.nobody, "person");
    Console.cell(row, decision.granted ? text.granted : text.refused, "result");
    Console.cell(row, text.reason[decision.reason] || decision.reason, "reason");
    Console.cell(row, decision.by || text.nobody, "by");
    const photo = Console.cell(row, "", "photo");
    if (admin && decision.snapshot) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "show-snapshot";
      button.textContent = text.photo;
      button.addEventListener("click", () => showSnapshot(decision.event_id));
      photo.append(button);
    }
    return row;
  }));
}

function tickDoor() {
  const door = doorView;
  if (!door) return;
  const open = door.open_for_s;
  const since = Math.floor((Date.now() - doorShownAt) / 1000);
  Console.$("open-for").textContent = open === null || open === undefined ? ""
    : doorText.openFor(Console.common.duration(Math.floor(open) + since));
}

function showSnapshot(eventId) {
  Console.$("snapshot").src = `/api/door/snapshots/${encodeURIComponent(eventId)}`;
  Console.$("snapshot-view").hidden = false;
}

function say(message) {
  const box = Console.$("door-message");
  box.textContent = message || "";
  box.hidden = !message;
}

async function doorAction(action, reasonInput) {
  let body = {};
  if (reasonInput) {
    const reason = Console.$(reasonInput).value.trim();
    if (!reason) { say(doorText.needReason); return; }
    body = { reason };
  }
  const refused = await Console.post(`/api/door/${action}`, body);
  if (refused) { say(Console.common.refused + refused); return; }
  say("");
  if (reasonInput) Console.$(reasonInput).value = "";
}

document.addEventListener("DOMContentLoaded", () => {
  const $ = Console.$;
  $("door-open").addEventListener("click", () => doorAction("open", "open-reason"));
  $("door-lockdown").addEventListener("click", () => doorAction("lockdown", "lockdown-reason"));
  $("door-release").addEventListener("click", () => doorAction("release", null));
  $("snapshot-close").addEventListener("click", () => {
    $("snapshot-view").hidden = true;
    $("snapshot").removeAttribute("src");
  });
  Console.start("door", DOOR_TEXT, drawDoor);
  setInterval(tickDoor, 1000);
});
