// The navigation between the console's pages (every page has it): its labels in the page's
// language, each link keeping the language, the current page marked (aria-current, and by its
// look). Runs on its own: the page's own script does not need to know about it.
"use strict";

(() => {
  const LABELS = {
    "zh-CN": { alarms: "报警", devices: "设备", door: "门禁", gateway: "网关", nav: "页面" },
    en: { alarms: "Alarms", devices: "Devices", door: "Door", gateway: "Gateway", nav: "Pages" },
  };
  const PATHS = { alarms: "/", devices: "/devices", door: "/door", gateway: "/gateway" };

  function show() {
    const lang = document.documentElement.lang === "en" ? "en" : "zh-CN";
    const labels = LABELS[lang];
    const nav = document.getElementById("nav");
    if (!nav) return;
    nav.setAttribute("aria-label", labels.nav);
    for (const [name, path] of Object.entries(PATHS)) {
      const link = document.getElementById(`nav-${name}`);
      if (!link) continue;
      link.textContent = labels[name];
      link.href = `${path}?lang=${lang}`;
      if (location.pathname === path) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
  }

  // A page this gateway does not have (the door without face access) is not offered.
  async function hideMissing() {
    const response = await fetch("/api/state", { credentials: "same-origin" }).catch(() => null);
    if (!response || !response.ok) return;
    const state = await response.json().catch(() => null);
    if (!state || !Array.isArray(state.pages)) return;
    const door = document.getElementById("nav-door");
    if (door) door.hidden = !state.pages.includes("door");
  }

  document.addEventListener("DOMContentLoaded", () => { show(); hideMissing(); });
})();
