// The Devices page: every button and terminal (the lost ones first, as the gateway sorts
// them), then the receivers and the camera; live from /api/live?page=devices.
"use strict";

const DEVICE_TEXT = {
  "zh-CN": {
    title: "值班台 · 设备", devices: "按钮和终端", receivers: "接收器", camera: "门口摄像头",
    noButtons: "本网关没有配置呼叫按钮。", noDevices: "没有登记的设备。",
    head: ["状态", "老人", "房间", "设备", "最后联系", "电量", "信号", "防拆"],
    supervision: { lost: "失联", ok: "正常", unsupervised: "不监测" },
    tamper: { true: "外壳被打开", false: "正常" },
    online: "在线", offline: "离线", frames: "帧", fps: "帧/秒",
    type: { terminal: "呼叫终端", sos_button: "呼叫按钮", rf_button: "无线按钮" },
  },
  en: {
    title: "Duty console · Devices", devices: "Buttons and terminals", receivers: "Receivers",
    camera: "Door camera", noButtons: "This gateway has no call buttons configured.",
    noDevices: "No devices registered.",
    head: ["State", "Resident", "Room", "Device", "Last heard", "Battery", "Signal", "Tamper"],
    supervision: { lost: "LOST", ok: "OK", unsupervised: "Not supervised" },
    tamper: { true: "Case open", false: "OK" },
    online: "online", offline: "OFFLINE", frames: "frames", fps: "fps",
    type: { terminal: "Terminal", sos_button: "Call button", rf_button: "Radio button" },
  },
};

let devicesShown = null;

function drawDevices(view, text) {
  devicesShown = { view, text };
  const $ = Console.$;
  $("devices-title").textContent = text.devices;
  $("receivers-title").textContent = text.receivers;
  $("camera-title").textContent = text.camera;
  const head = $("devices-head");
  head.replaceChildren(...text.head.map((label) => {
    const cell = document.createElement("th");
    cell.textContent = label;
    return cell;
  }));
  if (view === null) return;
  $("no-buttons").hidden = view.buttons;
  $("no-buttons").textContent = view.buttons ? "" : text.noButtons;
  const unknown = Console.common.unknown;
  const rows = view.devices.map((device) => {
    const row = document.createElement("tr");
    row.className = `device ${device.supervision}`;
    row.dataset.id = device.id;
    row.dataset.supervision = device.supervision;
    Console.cell(row, text.supervision[device.supervision] || device.supervision, "state");
    Console.cell(row, device.resident, "resident");
    Console.cell(row, device.room, "room");
    Console.cell(row, `${text.type[device.type] || device.type} ${device.id}`, "device");
    const heard = Console.cell(row, Console.ago(device.last_heard_ms), "heard");
    if (device.last_heard_ms !== null) heard.dataset.heard = String(device.last_heard_ms);
    Console.cell(row, device.battery_mv === null ? unknown
      : `${(device.battery_mv / 1000).toFixed(2)} V`, "battery");
    Console.cell(row, device.rssi_dbm === null ? unknown : `${device.rssi_dbm} dBm`, "signal");
    const tamper = Console.cell(row, device.tamper === null ? unknown
      : text.tamper[String(device.tamper)], "tamper");
    if (device.tamper) tamper.classList.add("bad");
    return row;
  });
  if (rows.length === 0 && view.buttons) {
    const row = document.createElement("tr");
    Console.cell(row, text.noDevices, "none").colSpan = text.head.length;
    rows.push(row);
  }
  $("device-rows").replaceChildren(...rows);
  $("receivers").replaceChildren(...view.receivers.map((receiver) => {
    const item = document.createElement("li");
    const state = receiver.online ? "online" : "offline";
    item.className = `chip receiver ${state}`;
    item.dataset.name = receiver.name;
    item.dataset.state = state;
    item.textContent = `${receiver.name}: ${text[state]} (${receiver.frames} ${text.frames})`;
    return item;
  }));
  const camera = view.camera;
  $("camera-section").hidden = camera === null;
  if (camera !== null) {
    const state = camera.online ? "online" : "offline";
    $("camera").className = `chip camera ${state}`;
    $("camera").dataset.state = state;
    const fps = camera.fps === null ? unknown : `${camera.fps} ${text.fps}`;
    $("camera").textContent = `${text[state]} · ${fps}`;
  }
}

function tickDevices() {
  for (const cell of document.querySelectorAll(".device .heard[data-heard]")) {
    cell.textContent = Console.ago(Number(cell.dataset.heard));
  }
}

document.addEventListener("DOMContentLoaded", () => {
  Console.start("devices", DEVICE_TEXT, drawDevices);
  setInterval(tickDevices, 1000);
});
