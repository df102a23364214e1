// The sign-in page: the token becomes a session cookie; the token itself is
// never stored by the page.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("login");
  const notice = document.getElementById("notice");
  const button = document.getElementById("sign-in");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    notice.textContent = "";
    try {
      const response = await fetch("/console/login", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ token: document.getElementById("token").value }),
        credentials: "same-origin",
      });
      const data = await response.json().catch(() => null);
      if (!response.ok) {
        notice.textContent = (data && data.error && data.error.message) || `Sign-in failed (HTTP ${response.status}).`;
        return;
      }
      location.assign(document.getElementById("next").value || "/console");
    } catch (e) {
      notice.textContent = `The host could not be reached: ${e.message}`;
    } finally {
      button.disabled = false;
    }
  });
});
