// The duty console's alarm board: the live board from /api/live (server-sent events), the
// staff's actions as POSTs with the session's CSRF token, and a chime while an alarm is
// unanswered (after the staff turn the sound on: browsers refuse sound without a gesture).
// Every text from the gateway goes into the page as text (textContent), never as HTML.
"use strict";

const TEXT = {
  "zh-CN": {
    title: "值班台", alarms: "未结束的呼叫", none: "目前没有未结束的呼叫。",
    soundOn: "提示音：开", soundOff: "开启提示音", logout: "退出", other: "English",
    live: "实时连接正常", down: "与网关的连接中断，正在重连…",
    claim: "我去处理", resolve: "结束呼叫", by: "处理人", escalate: "立即升级",
    level: (n) => `第 ${n} 级`,
    cause: { press: "按键呼叫", pull_cord: "拉绳呼叫", fall: "跌倒报警", rf_press: "无线按钮" },
    state: { raised: "待处理", escalated: "已升级，无人应答", busy: "平台忙，待处理",
      acknowledged: "平台已应答", claimed: "已认领" },
    reason: { real: "真实求助", false_alarm: "误报", test: "测试", resident_cancelled: "老人已取消" },
    refused: "操作未成功：",
    ago: (s) => (s < 60 ? `${s} 秒前` : s < 3600 ? `${Math.floor(s / 60)} 分 ${s % 60} 秒前`
      : `${Math.floor(s / 3600)} 小时 ${Math.floor((s % 3600) / 60)} 分前`),
  },
  en: {
    title: "Duty console", alarms: "Open alarms", none: "No open alarms.",
    soundOn: "Sound: on", soundOff: "Turn sound on", logout: "Log out", other: "中文",
    live: "Live", down: "Connection to the gateway lost, reconnecting…",
    claim: "I'm going", resolve: "Close alarm", by: "by", escalate: "Escalate now",
    level: (n) => `level ${n}`,
    cause: { press: "Call button", pull_cord: "Pull cord", fall: "Fall", rf_press: "Radio button" },
    state: { raised: "Waiting", escalated: "Escalated, unanswered", busy: "Platform busy",
      acknowledged: "Platform answered", claimed: "Claimed" },
    reason: { real: "Real call", false_alarm: "False alarm", test: "Test",
      resident_cancelled: "Resident cancelled" },
    refused: "Not done: ",
    ago: (s) => (s < 60 ? `${s} s ago` : s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s ago`
      : `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`),
  },
};
const UNANSWERED = new Set(["raised", "escalated", "busy"]);

let page = null;        // {user, name, role, csrf, lang}
let text = TEXT["zh-CN"];
let rows = [];
let offsetMs = 0;       // the gateway's clock minus this browser's
let sound = null;       // an AudioContext once the staff turned the sound on

function $(id) { return document.getElementById(id); }

async function start() {
  const response = await fetch("/api/state", { credentials: "same-origin" });
  if (response.status === 401) { location.assign("/login"); return; }
  page = await response.json();
  text = TEXT[page.lang] || TEXT["zh-CN"];
  document.documentElement.lang = page.lang;
  document.title = text.title;
  $("title").textContent = text.title;
  $("who").textContent = `${page.name} (${page.user})`;
  $("alarms-title").textContent = text.alarms;
  $("logout").textContent = text.logout;
  $("logout-csrf").value = page.csrf;
  const other = page.lang === "en" ? "zh-CN" : "en";
  $("language").textContent = text.other;
  $("language").href = `/?lang=${other}`;
  $("sound").addEventListener("click", toggleSound);
  showSound();
  listen();
  setInterval(tick, 1000);
}

function listen() {
  const source = new EventSource("/api/live");
  source.addEventListener("board", (message) => {
    const board = JSON.parse(message.data);
    offsetMs = board.now_ms - Date.now();
    rows = board.alarms;
    setLink(true);
    draw();
  });
  source.addEventListener("error", async () => {
    setLink(false);
    const check = await fetch("/api/state", { credentials: "same-origin" }).catch(() => null);
    if (check && check.status === 401) { source.close(); location.assign("/login"); }
  });
}

function setLink(up) {
  const link = $("link");
  link.textContent = up ? text.live : text.down;
  link.classList.toggle("down", !up);
}

function draw() {
  const list = $("alarms");
  list.replaceChildren(...rows.map(row));
  $("none").hidden = rows.length > 0;
  $("none").textContent = text.none;
  tick();
}

function row(alarm) {
  const item = $("alarm-row").content.firstElementChild.cloneNode(true);
  item.classList.add(alarm.state);
  item.dataset.id = alarm.id;
  item.dataset.state = alarm.state;
  item.querySelector(".cause").textContent = text.cause[alarm.cause] || alarm.cause;
  let state = text.state[alarm.state] || alarm.state;
  if (alarm.by && (alarm.state === "claimed" || alarm.state === "acknowledged")) {
    state += ` · ${text.by} ${alarm.by}`;
  }
  if (alarm.level > 1) state += ` · ${text.level(alarm.level)}`;
  item.dataset.level = String(alarm.level);
  item.querySelector(".state").textContent = state;
  item.querySelector(".resident").textContent = alarm.resident;
  item.querySelector(".room").textContent = alarm.room;
  item.querySelector(".device").textContent = alarm.device;
  item.querySelector(".age").dataset.raised = String(alarm.raised_ms);
  const claim = item.querySelector(".claim");
  claim.textContent = text.claim;
  claim.hidden = alarm.state === "claimed";
  claim.addEventListener("click", () => act(alarm.id, "claim", {}));
  const escalate = item.querySelector(".escalate");
  escalate.textContent = text.escalate;
  // Only while nobody has it and a level is left (the gateway refuses it otherwise too).
  escalate.hidden = !UNANSWERED.has(alarm.state) || alarm.level >= alarm.top_level;
  escalate.addEventListener("click", () => act(alarm.id, "escalate", {}));
  const reason = item.querySelector(".reason");
  for (const [value, label] of Object.entries(text.reason)) {
    const option = document.createElement("option");
    option.value = value;
    option.textContent = label;
    reason.append(option);
  }
  const resolve = item.querySelector(".resolve");
  resolve.textContent = text.resolve;
  resolve.addEventListener("click", () => act(alarm.id, "resolve", { reason: reason.value }));
  return item;
}

async function act(id, action, body) {
  const response = await fetch(`/api/alarms/${encodeURIComponent(id)}/${action}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": page.csrf },
    body: JSON.stringify(body),
  });
  if (response.status === 401) { location.assign("/login"); return; }
  if (!response.ok) {
    const answer = await response.json().catch(() => ({ detail: response.statusText }));
    alert(text.refused + (answer.detail || answer.error));
  }
}

function tick() {
  const now = Date.now() + offsetMs;
  for (const age of document.querySelectorAll(".alarm .age")) {
    const seconds = Math.max(0, Math.floor((now - Number(age.dataset.raised)) / 1000));
    age.textContent = text.ago(seconds);
  }
  if (sound && rows.some((alarm) => UNANSWERED.has(alarm.state))) chime();
}

function toggleSound() {
  if (sound) { sound.close(); sound = null; } else { sound = new AudioContext(); chime(); }
  showSound();
}

function showSound() {
  $("sound").textContent = sound ? text.soundOn : text.soundOff;
  $("sound").setAttribute("aria-pressed", sound ? "true" : "false");
}

let lastChime = 0;
function chime() {
  if (Date.now() - lastChime < 2000) return;
  lastChime = Date.now();
  const tone = sound.createOscillator();
  const gain = sound.createGain();
  tone.frequency.value = 880;
  gain.gain.setValueAtTime(0.3, sound.currentTime);
  gain.gain.exponentialRampToValueAtTime(0.001, sound.currentTime + 0.6);
  tone.connect(gain).connect(sound.destination);
  tone.start();
  tone.stop(sound.currentTime + 0.6);
}

document.addEventListener("DOMContentLoaded", start);
