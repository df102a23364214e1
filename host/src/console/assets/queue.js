// The review queue: tickets by state with their age against the SLA;
// claim, release, resolve (the draft pre-filled, a diff of draft against
// the final answer), accept or reject proposed corrections, use a similar
// approved answer, resolve identical questions together; j/k, c, Enter, Esc.
"use strict";

(() => {
  const { el, say, api, age, meta } = Console;
  const me = meta("caller");
  const admin = meta("role") === "admin";
  // Age colours: green under 5 minutes, amber under 30, red beyond.
  const SLA_WARN_S = 5 * 60;
  const SLA_BAD_S = 30 * 60;
  const TABS = [
    ["open", "Open and mine"],
    ["mine", "Mine"],
    ["claimed", "Claimed"],
    ["resolved", "Resolved"],
  ];

  const state = { tab: "open", tickets: [], selected: 0, busy: false, similar: {} };
  const app = document.getElementById("app");

  const normalise = (text) => text.toLowerCase().replace(/[^\p{L}\p{N}]+/gu, " ").trim();
  const sla = (seconds) => (seconds < SLA_WARN_S ? "sla-ok" : seconds < SLA_BAD_S ? "sla-warn" : "sla-bad");
  const current = () => state.tickets[state.selected];
  const theirs = (t) => t.state === "claimed" && t.claimed_by && t.claimed_by !== me;
  const mine = (t) => t.state === "claimed" && t.claimed_by === me;

  // Open escalations asking the same question as `ticket`, itself excluded.
  function identical(ticket) {
    if (ticket.kind !== "escalation") return [];
    const key = normalise(ticket.input);
    return state.tickets.filter((t) => t.id !== ticket.id && t.kind === "escalation"
      && t.pipeline === ticket.pipeline && (t.state === "open" || mine(t)) && normalise(t.input) === key);
  }

  async function load(keepId) {
    // "Open" keeps the reviewer's own claimed tickets in view beside the
    // unclaimed ones, so claiming one does not take it off the screen.
    const query = { open: "pending", mine: "claimed" }[state.tab] || state.tab;
    try {
      const data = await api("GET", `/v1/tickets?state=${query}&limit=500`);
      let tickets = data.tickets;
      if (state.tab === "mine") tickets = tickets.filter(mine);
      if (state.tab === "open") tickets = tickets.filter((t) => t.state === "open" || mine(t));
      state.tickets = tickets;
      const index = keepId === undefined ? -1 : tickets.findIndex((t) => t.id === keepId);
      state.selected = index >= 0 ? index : Math.min(state.selected, Math.max(tickets.length - 1, 0));
      render();
    } catch (e) {
      say(e.message, "error");
    }
  }

  function tabs() {
    return el("div", { class: "tabs", role: "tablist" }, TABS.map(([key, label]) =>
      el("button", {
        type: "button", role: "tab", id: `tab-${key}`, "aria-selected": state.tab === key ? "true" : "false",
        // The old tab's tickets go at once, so nothing stale is clicked.
        onclick: () => { state.tab = key; state.selected = 0; state.tickets = []; render(); load(); },
      }, label)));
  }

  function list() {
    if (state.tickets.length === 0) {
      const what = {
        open: "No open tickets. Escalated requests and proposed corrections appear here as they arrive; tickets you claim stay here until you resolve or release them.",
        mine: "You hold no tickets. Claim one from the Open tab (select it and press c).",
        claimed: "Nobody holds a ticket right now.",
        resolved: "Nothing resolved yet.",
      }[state.tab];
      return el("div", { class: "empty", id: "empty" }, what);
    }
    return el("ul", { class: "list", id: "tickets" }, state.tickets.map((t, i) => {
      const group = t.state !== "resolved" ? identical(t).length : 0;
      return el("li", {
        id: `ticket-${t.id}`, class: sla(t.age_seconds), "aria-selected": i === state.selected ? "true" : "false",
        onclick: () => { state.selected = i; render(); },
      },
      el("div", { class: "q" }, t.input),
      el("div", { class: "meta" },
        el("span", {}, `#${t.id}`),
        el("span", { class: "badge" }, t.kind),
        el("span", {}, t.pipeline),
        el("span", { title: "age" }, age(t.age_seconds)),
        mine(t) ? el("span", { class: "badge mine" }, "yours") : null,
        theirs(t) ? el("span", { class: "badge theirs" }, `claimed by ${t.claimed_by}`) : null,
        group > 0 ? el("span", { class: "badge group" }, `+${group} identical`) : null));
    }));
  }

  // A word diff of `before` against `after`, as <del> and <ins>.
  function diff(before, after) {
    const a = before.split(/(\s+)/);
    const b = after.split(/(\s+)/);
    if (a.length * b.length > 250000) {
      return el("div", { class: "diff" }, el("del", {}, before), "\n", el("ins", {}, after));
    }
    const table = Array.from({ length: a.length + 1 }, () => new Int32Array(b.length + 1));
    for (let i = a.length - 1; i >= 0; i--) {
      for (let j = b.length - 1; j >= 0; j--) {
        table[i][j] = a[i] === b[j] ? table[i + 1][j + 1] + 1 : Math.max(table[i + 1][j], table[i][j + 1]);
      }
    }
    const out = [];
    let i = 0, j = 0;
    while (i < a.length || j < b.length) {
      if (i < a.length && j < b.length && a[i] === b[j]) { out.push(a[i]); i++; j++; }
      else if (j < b.length && (i === a.length || table[i][j + 1] >= table[i + 1][j])) { out.push(el("ins", {}, b[j])); j++; }
      else { out.push(el("del", {}, a[i])); i++; }
    }
    return el("div", { class: "diff", id: "diff" }, out);
  }

  function detail() {
    const t = current();
    if (!t) return el("div", { class: "card detail empty" }, "Select a ticket to see it here.");
    const draft = t.state === "resolved" || t.state === "rejected" ? (t.resolution || "") : (t.draft || "");
    const answer = el("textarea", { id: "answer", "aria-label": "Answer", disabled: t.state === "resolved" || t.state === "rejected" || theirs(t) }, draft);
    const diffBox = el("div", { id: "diff-box" }, diff(t.draft || "", draft));
    answer.addEventListener("input", () => diffBox.replaceChildren(diff(t.draft || "", answer.value)));
    const group = identical(t);
    const together = group.length > 0
      ? el("label", { class: "together" },
        el("input", { type: "checkbox", id: "together", checked: true }),
        `Also resolve the ${group.length} identical question${group.length > 1 ? "s" : ""} (#${group.map((g) => g.id).join(", #")}) with this answer`)
      : null;
    const similar = el("ul", { class: "similar", id: "similar" }, el("li", { class: "loading" }, "Looking in the answer bank…"));
    showSimilar(t, similar, answer, diffBox);

    const correction = t.kind === "correction";
    const open = t.state === "open" || t.state === "claimed";
    const actions = el("div", { class: "actions" },
      t.state === "open" ? el("button", { type: "button", id: "claim", onclick: claim }, "Claim (c)") : null,
      (mine(t) || (admin && t.state === "claimed")) ? el("button", { type: "button", id: "release", class: "secondary", onclick: release }, "Release (Esc)") : null,
      open && !theirs(t) ? el("button", { type: "button", id: "resolve", onclick: resolve }, correction ? "Accept correction (Enter)" : "Resolve (Enter)") : null,
      open && !theirs(t) && correction ? el("button", { type: "button", id: "reject", class: "danger", onclick: reject }, "Reject correction") : null);

    return el("section", { class: "card detail", id: "detail", "data-ticket": t.id },
      el("h2", {}, `#${t.id} · ${correction ? "proposed correction" : "escalation"} · ${t.pipeline}${t.stage ? ` · ${t.stage}` : ""}`),
      theirs(t) ? el("p", { class: "badge theirs", id: "theirs" }, `Claimed by ${t.claimed_by} ${age(Math.max(0, Math.floor((Date.now() - Date.parse(t.claimed_at)) / 1000)))} ago: theirs to answer.`) : null,
      t.state === "resolved" ? el("p", { class: "badge", id: "resolved-by" }, `Resolved by ${t.resolved_by}`) : null,
      el("h3", {}, "Question"),
      el("div", { class: "question", id: "question" }, t.input),
      el("p", { class: "meta" }, `Why: ${t.reason}`, correction && t.proposed_by ? ` · proposed by ${t.proposed_by}` : ""),
      el("label", { for: "answer" }, correction ? "Proposed answer (edit before accepting if needed)" : "Answer (the draft, to edit)"),
      answer,
      el("h3", {}, "Draft → answer"),
      diffBox,
      together,
      actions,
      el("h3", {}, "Similar approved answers"),
      similar,
      el("p", { class: "keys" }, el("kbd", {}, "j"), "/", el("kbd", {}, "k"), " next/previous · ",
        el("kbd", {}, "c"), " claim · ", el("kbd", {}, "Enter"), " resolve (", el("kbd", {}, "Ctrl"), "+", el("kbd", {}, "Enter"),
        " in the answer) · ", el("kbd", {}, "Esc"), " release"));
  }

  async function showSimilar(t, box, answer, diffBox) {
    try {
      const data = state.similar[t.id] || await api("GET", `/v1/tickets/${t.id}/similar`);
      state.similar[t.id] = data;
      if (data.similar.length === 0) {
        box.replaceChildren(el("li", { class: "empty" }, "No approved answer in this pipeline's bank fits this question yet."));
        return;
      }
      box.replaceChildren(...data.similar.map((m) => el("li", {},
        el("div", {}, m.answer),
        el("div", { class: "meta" }, `${m.label ? `${m.label} · ` : ""}score ${m.score.toFixed(2)}${m.trusted ? " · trusted" : ""} `,
          answer.disabled ? null : el("button", { type: "button", class: "secondary use", onclick: () => {
            answer.value = m.answer;
            diffBox.replaceChildren(diff(t.draft || "", answer.value));
            say("The bank's answer is in the editor; resolve to send it.");
          } }, "Use")))));
    } catch (e) {
      box.replaceChildren(el("li", { class: "empty" }, `The answer bank could not be asked: ${e.message}`));
    }
  }

  function render() {
    app.replaceChildren(tabs(), el("div", { class: "queue" }, list(), detail()));
    const selected = document.querySelector('#tickets li[aria-selected="true"]');
    if (selected) selected.scrollIntoView({ block: "nearest" });
  }

  // Run one action; buttons stay disabled until it is done, so a double
  // click sends it once.
  async function act(label, work) {
    if (state.busy) return;
    state.busy = true;
    document.querySelectorAll(".actions button").forEach((b) => { b.disabled = true; });
    const keep = current() && current().id;
    try {
      say(await work(), "ok");
    } catch (e) {
      say(`${label}: ${e.message}`, "error");
    } finally {
      state.busy = false;
      delete state.similar[keep];
      await load(keep);
    }
  }

  function claim() {
    const t = current();
    if (!t || t.state !== "open") return;
    act(`Claiming #${t.id}`, async () => {
      await api("POST", `/v1/tickets/${t.id}/claim`, {});
      return `Ticket #${t.id} is yours.`;
    });
  }

  function release() {
    const t = current();
    if (!t || t.state !== "claimed" || !(mine(t) || admin)) return;
    act(`Releasing #${t.id}`, async () => {
      await api("POST", `/v1/tickets/${t.id}/release`, {});
      return `Ticket #${t.id} is back in the queue.`;
    });
  }

  function resolve() {
    const t = current();
    if (!t || !(t.state === "open" || mine(t))) return;
    const text = document.getElementById("answer").value;
    if (!text.trim()) { say("Write an answer first: it must not be empty.", "error"); return; }
    const box = document.getElementById("together");
    const also = box && box.checked ? identical(t) : [];
    act(`Resolving #${t.id}`, async () => {
      await api("POST", `/v1/tickets/${t.id}/resolve`, { answer: text });
      const failed = [];
      for (const other of also) {
        try { await api("POST", `/v1/tickets/${other.id}/resolve`, { answer: text }); }
        catch (e) { failed.push(`#${other.id} (${e.message})`); }
      }
      if (failed.length) throw new Error(`#${t.id} resolved, but not ${failed.join(", ")}`);
      const what = t.kind === "correction" ? "Correction accepted" : "Resolved";
      return `${what}: #${[t.id, ...also.map((o) => o.id)].join(", #")}. The client gets the answer; the bank learns the question.`;
    });
  }

  function reject() {
    const t = current();
    if (!t || t.kind !== "correction") return;
    act(`Rejecting #${t.id}`, async () => {
      await api("POST", `/v1/tickets/${t.id}/reject`, { note: "rejected in the console" });
      return `The correction in #${t.id} was turned down; the answer stays as it was.`;
    });
  }

  document.addEventListener("keydown", (event) => {
    const typing = event.target instanceof HTMLTextAreaElement || event.target instanceof HTMLInputElement;
    if (typing) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); resolve(); }
      else if (event.key === "Escape") event.target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const moves = { j: 1, k: -1 };
    if (event.key in moves) {
      const next = state.selected + moves[event.key];
      if (next >= 0 && next < state.tickets.length) { state.selected = next; render(); }
    } else if (event.key === "c") claim();
    else if (event.key === "Enter" && !(event.target instanceof HTMLButtonElement)) { event.preventDefault(); resolve(); }
    else if (event.key === "Escape") release();
  });

  load();
  // New tickets arrive while a reviewer works.
  // An answer being written (focused, or edited) is never redrawn away.
  setInterval(() => {
    const answer = document.getElementById("answer");
    const editing = answer && (document.activeElement === answer || answer.value !== answer.defaultValue);
    if (!state.busy && !editing) load(current() && current().id);
  }, 15000);
})();
