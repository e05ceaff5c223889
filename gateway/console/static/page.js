// What the Devices, Door and Gateway pages share: the session's page state (/api/state), the
// header (who, language, log out), the live stream of the page (/api/live?page=<name>,
// server-sent events, reconnecting on its own; a page that lost its session goes to the login)
// and small helpers. Every text from the gateway goes into the page as text, never as HTML.
"use strict";

const COMMON = {
  "zh-CN": {
    logout: "退出", other: "English", live: "实时连接正常",
    down: "与网关的连接中断，正在重连…", unknown: "未知", refused: "操作未成功：",
    ago: (s) => (s < 60 ? `${s} 秒前` : s < 3600 ? `${Math.floor(s / 60)} 分 ${s % 60} 秒前`
      : s < 86400 ? `${Math.floor(s / 3600)} 小时 ${Math.floor((s % 3600) / 60)} 分前`
        : `${Math.floor(s / 86400)} 天前`),
    duration: (s) => (s < 60 ? `${s} 秒` : s < 3600 ? `${Math.floor(s / 60)} 分 ${s % 60} 秒`
      : `${Math.floor(s / 3600)} 小时 ${Math.floor((s % 3600) / 60)} 分`),
  },
  en: {
    logout: "Log out", other: "中文", live: "Live",
    down: "Connection to the gateway lost, reconnecting…", unknown: "unknown",
    refused: "Not done: ",
    ago: (s) => (s < 60 ? `${s} s ago` : s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s ago`
      : s < 86400 ? `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min ago`
        : `${Math.floor(s / 86400)} days ago`),
    duration: (s) => (s < 60 ? `${s} s` : s < 3600 ? `${Math.floor(s / 60)} min ${s % 60} s`
      : `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`),
  },
};

const Console = {
  page: null,      // {user, name, role, csrf, lang, pages}
  common: COMMON["zh-CN"],
  offsetMs: 0,     // the gateway's clock minus this browser's

  $(id) { return document.getElementById(id); },

  // Fill the header, then follow the page's stream: draw(data, text) on every message.
  async start(name, texts, draw) {
    const response = await fetch("/api/state", { credentials: "same-origin" });
    if (response.status === 401) { location.assign("/login"); return; }
    const page = await response.json();
    Console.page = page;
    const lang = texts[page.lang] ? page.lang : "zh-CN";
    const text = texts[lang];
    Console.common = COMMON[lang];
    document.documentElement.lang = lang;
    document.title = text.title;
    Console.$("title").textContent = text.title;
    Console.$("who").textContent = `${page.name} (${page.user})`;
    Console.$("logout").textContent = Console.common.logout;
    Console.$("logout-csrf").value = page.csrf;
    const other = lang === "en" ? "zh-CN" : "en";
    Console.$("language").textContent = Console.common.other;
    Console.$("language").href = `${location.pathname}?lang=${other}`;
    Console.setLink(false);
    if (page.pages && !page.pages.includes(name)) { draw(null, text); return; }
    Console.listen(name, (data) => draw(data, text));
  },

  listen(name, onData) {
    const source = new EventSource(`/api/live?page=${encodeURIComponent(name)}`);
    source.addEventListener(name, (message) => {
      const data = JSON.parse(message.data);
      Console.offsetMs = data.now_ms - Date.now();
      Console.setLink(true);
      onData(data);
    });
    source.addEventListener("error", async () => {
      Console.setLink(false);
      const check = await fetch("/api/state", { credentials: "same-origin" }).catch(() => null);
      if (check && check.status === 401) { source.close(); location.assign("/login"); }
    });
  },

  setLink(up) {
    const link = Console.$("link");
    link.textContent = up ? Console.common.live : Console.common.down;
    link.classList.toggle("down", !up);
  },

  now() { return Date.now() + Console.offsetMs; },

  // Seconds since a gateway time in ms, as "… ago" (unknown when null).
  ago(ms) {
    if (ms === null || ms === undefined) return Console.common.unknown;
    return Console.common.ago(Math.max(0, Math.floor((Console.now() - ms) / 1000)));
  },

  cell(row, text, className) {
    const cell = document.createElement("td");
    cell.textContent = text;
    if (className) cell.className = className;
    row.append(cell);
    return cell;
  },

  // A POST with the session's CSRF token; the refusal's detail, or null when done.
  async post(path, body) {
    const response = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": Console.page.csrf },
      body: JSON.stringify(body),
    });
    if (response.status === 401) { location.assign("/login"); return null; }
    if (response.ok) return null;
    const answer = await response.json().catch(() => ({ detail: response.statusText }));
    return answer.detail || answer.error || String(response.status);
  },
};
