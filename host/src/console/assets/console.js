// Shared by every console page: calls to the host's API with the session's
// CSRF token, messages in the status bar, and DOM building without HTML
// strings (every text goes in as text, never as markup).
"use strict";

const Console = (() => {
  const meta = (name) => {
    const tag = document.querySelector(`meta[name="${name}"]`);
    return tag ? tag.content : "";
  };

  // el("li", {class: "x", onclick: f}, "text", child, ...)
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  let statusTimer = null;
  function say(text, kind) {
    const bar = document.getElementById("status");
    if (!bar) return;
    bar.replaceChildren(el("div", { class: `msg ${kind || ""}`, id: "status-message" }, text));
    clearTimeout(statusTimer);
    if (kind !== "error") statusTimer = setTimeout(() => bar.replaceChildren(), 6000);
  }

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // One call to the API. A session that ended sends the user to sign in,
  // saying why; every other refusal is thrown with the host's message.
  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      headers["Content-Type"] = "application/json";
      headers["X-CSRF-Token"] = meta("csrf-token");
    }
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: method === "GET" ? undefined : JSON.stringify(body || {}),
        credentials: "same-origin",
      });
    } catch (e) {
      throw new ApiError(0, "network", `The host could not be reached: ${e.message}`);
    }
    let data = null;
    const text = await response.text();
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!response.ok) {
      const error = (data && data.error) || {};
      if (response.status === 401) {
        location.assign(`/console/login?why=expired`);
      }
      throw new ApiError(response.status, error.code || "error", error.message || `HTTP ${response.status}`);
    }
    return data;
  }

  function age(seconds) {
    if (seconds < 60) return `${seconds}s`;
    if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
    if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ${Math.floor((seconds % 3600) / 60)}m`;
    return `${Math.floor(seconds / 86400)}d`;
  }

  function wireLogout() {
    const button = document.getElementById("logout");
    if (!button) return;
    button.addEventListener("click", async () => {
      try { await api("POST", "/console/logout", {}); } catch (_) { /* the cookie goes anyway */ }
      location.assign("/console/login?why=signed-out");
    });
  }

  document.addEventListener("DOMContentLoaded", wireLogout);
  return { el, say, api, age, meta, ApiError };
})();
