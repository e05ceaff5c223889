// The Gateway page: the uplink, the outbox's lanes, dead letters, disk, CPU temperature and
// the console's open pages; live from /api/live?page=gateway (sent again every few seconds).
"use strict";

const GATEWAY_TEXT = {
  "zh-CN": {
    title: "值班台 · 网关", uplink: "平台连接", lanes: "待发送队列（发件箱）",
    connected: "已连接", disconnected: "未连接", lastError: "上次错误：",
    head: ["通道", "待发送", "大小", "最早一条", "因空间丢弃"],
    lane: { life_safety: "0 · 生命安全", access_audit: "1 · 门禁记录", device_status: "2 · 设备状态",
      telemetry: "3 · 遥测" },
    empty: "—", never: "不丢弃",
    deadLetters: "无法投递的消息", store: "存储", storeOk: "正常", storeBad: "故障",
    disk: "磁盘剩余", cpu: "CPU 温度", pages: "打开的值班台页面", watching: "正在查看",
    report: (s) => `平台连接状态和最早一条的时间来自 ${s} 秒前的健康报告。`,
    noReport: "健康报告尚未生成。",
    sms: "短信通道", smsUp: "正常", smsDown: "故障", smsWaiting: (n) => `${n} 条待发`,
  },
  en: {
    title: "Duty console · Gateway", uplink: "Platform link", lanes: "Outbox (waiting to be sent)",
    connected: "Connected", disconnected: "NOT connected", lastError: "Last error: ",
    head: ["Lane", "Waiting", "Size", "Oldest", "Dropped for space"],
    lane: { life_safety: "0 · life safety", access_audit: "1 · access records",
      device_status: "2 · device status", telemetry: "3 · telemetry" },
    empty: "—", never: "never dropped",
    deadLetters: "Dead letters", store: "Store", storeOk: "OK", storeBad: "FAULT",
    disk: "Disk free", cpu: "CPU temperature", pages: "Console pages open", watching: "Watching",
    report: (s) => `The link's state and the oldest ages are from the health report of ${s} s ago.`,
    noReport: "No health report made yet.",
    sms: "SMS path", smsUp: "Working", smsDown: "DOWN", smsWaiting: (n) => `${n} waiting`,
  },
};

function bytes(n) {
  if (n === null || n === undefined) return Console.common.unknown;
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(1)} GiB`;
}

function drawGateway(view, text) {
  const $ = Console.$;
  const unknown = Console.common.unknown;
  $("uplink-title").textContent = text.uplink;
  $("lanes-title").textContent = text.lanes;
  $("lanes-head").replaceChildren(...text.head.map((label) => {
    const cell = document.createElement("th");
    cell.textContent = label;
    return cell;
  }));
  $("dead-letters-label").textContent = text.deadLetters;
  $("store-label").textContent = text.store;
  $("disk-label").textContent = text.disk;
  $("cpu-label").textContent = text.cpu;
  $("pages-label").textContent = text.pages;
  $("watching-label").textContent = text.watching;
  if (view === null) return;
  const up = view.uplink.connected;
  const state = $("uplink-state");
  state.textContent = up ? text.connected : text.disconnected;
  state.className = `chip ${up ? "online" : "offline"}`;
  state.dataset.state = up ? "connected" : "disconnected";
  $("uplink-error").textContent = view.uplink.last_error
    ? text.lastError + view.uplink.last_error : "";
  const sms = view.sms;
  $("sms-line").hidden = !sms;
  if (sms) {
    $("sms-label").textContent = text.sms;
    const chip = $("sms-state");
    chip.textContent = sms.up ? text.smsUp : text.smsDown;
    chip.className = `chip ${sms.up ? "online" : "offline"}`;
    chip.dataset.state = sms.up ? "up" : "down";
    const parts = [];
    if (!sms.up && sms.reason) parts.push(sms.reason);
    if (sms.waiting > 0) parts.push(text.smsWaiting(sms.waiting));
    $("sms-detail").textContent = parts.join(" · ");
  }
  $("lane-rows").replaceChildren(...view.lanes.map((lane) => {
    const row = document.createElement("tr");
    row.className = `lane${lane.depth > 0 ? " waiting" : ""}`;
    row.dataset.lane = String(lane.lane);
    row.dataset.depth = String(lane.depth);
    Console.cell(row, text.lane[lane.name] || lane.name, "name");
    Console.cell(row, String(lane.depth), "depth");
    Console.cell(row, bytes(lane.bytes), "bytes");
    Console.cell(row, lane.oldest_age_s === null ? text.empty
      : Console.common.duration(Math.round(lane.oldest_age_s)), "oldest");
    Console.cell(row, lane.dropped === null ? text.never : String(lane.dropped), "dropped");
    return row;
  }));
  $("dead-letters").textContent = String(view.dead_letters);
  $("dead-letters").className = view.dead_letters > 0 ? "bad" : "";
  $("store").textContent = view.store_ok === null ? unknown
    : view.store_ok ? text.storeOk : text.storeBad;
  $("store").className = view.store_ok === false ? "bad" : "";
  $("disk-free").textContent = bytes(view.disk_free_bytes);
  $("cpu-temp").textContent = view.cpu_temp_c === null ? unknown
    : `${view.cpu_temp_c.toFixed(1)} °C`;
  $("pages-open").textContent = String(view.pages_open);
  $("watching").textContent = view.watching.map((w) => `${w.user} (${w.pages})`).join(", ");
  $("report-age").textContent = view.report_age_s === null ? text.noReport
    : text.report(Math.round(view.report_age_s));
}

document.addEventListener("DOMContentLoaded", () => {
  Console.start("gateway", GATEWAY_TEXT, drawGateway);
});
