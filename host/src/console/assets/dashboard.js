// The operations dashboard: per pipeline, answers by layer over the last
// day, completion rate, time to value, cost per answered request and per
// day, error-budget burn with alert state, the serving generation and its
// stage digests, candidates with promote and roll back (confirmed first),
// shadow status, and the audit log.
"use strict";

(() => {
  const { el, say, api } = Console;
  const app = document.getElementById("app");
  const SVG = "http://www.w3.org/2000/svg";
  const LAYERS = ["rules", "cache", "generation", "human"];
  const colour = (layer) => `var(--${LAYERS.includes(layer) ? layer : "other"})`;

  const svg = (tag, attrs) => {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    return node;
  };

  const money = (usd) => (usd === null || usd === undefined ? "–" : `$${usd < 0.01 ? usd.toFixed(6) : usd.toFixed(2)}`);
  const percent = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)} %`);
  const millis = (ms) => (ms === null || ms === undefined ? "–" : ms < 1000 ? `${Math.round(ms)} ms` : ms < 60000 ? `${(ms / 1000).toFixed(1)} s` : `${(ms / 60000).toFixed(1)} min`);

  function figure(label, value, id) {
    return el("div", { class: "figure", id }, el("div", { class: "value" }, value), el("div", { class: "label" }, label));
  }

  // Stacked bars of answers by layer per bucket, escalations and refusals
  // on top, drawn as SVG from the host's own records.
  function chart(traffic) {
    const width = 720, height = 180, pad = 24;
    const buckets = traffic.buckets;
    const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "answers by layer per hour" });
    if (buckets.length === 0) {
      const text = svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", fill: "#5b6474" });
      text.textContent = "No requests in the last day.";
      root.append(text);
      return root;
    }
    const slots = Math.max(1, Math.round((Date.now() - traffic.since) / traffic.bucket_millis));
    const totals = buckets.map((b) => Object.values(b.answered).reduce((a, n) => a + n, 0) + b.escalated + b.refused);
    const top = Math.max(1, ...totals);
    const barWidth = (width - 2 * pad) / slots;
    for (const b of buckets) {
      const slot = Math.floor((b.start - traffic.since) / traffic.bucket_millis);
      let y = height - pad;
      const parts = [...Object.entries(b.answered).map(([layer, n]) => [colour(layer), n, layer]),
        ["var(--warn)", b.escalated, "waiting for a person"], ["var(--bad)", b.refused, "rejected or failed"]];
      for (const [fill, n, what] of parts) {
        if (!n) continue;
        const h = (n / top) * (height - 2 * pad);
        y -= h;
        const rect = svg("rect", { x: pad + slot * barWidth + 1, y, width: Math.max(1, barWidth - 2), height: h, fill });
        const title = svg("title", {});
        title.textContent = `${new Date(b.start).toLocaleString()}: ${n} ${what}`;
        rect.append(title);
        root.append(rect);
      }
    }
    const axis = svg("text", { x: pad, y: 14, fill: "#5b6474", "font-size": 11 });
    axis.textContent = `peak ${top} requests per ${traffic.bucket_millis / 3600000} h`;
    root.append(axis);
    return root;
  }

  function legend() {
    // Colours come from the stylesheet (the page's policy allows no inline
    // style): one class per layer.
    return el("div", { class: "legend" }, [...LAYERS, "waiting", "refused"].map((layer) =>
      el("span", { class: `swatch-${layer}` }, layer)));
  }

  function burn(slo) {
    const rows = (slo.alerts || []).map((a) => el("tr", {},
      el("td", {}, `${a.long_s / 3600} h / ${a.short_s / 60} min`),
      el("td", {}, a.long.burn_rate.toFixed(2)),
      el("td", {}, a.short.burn_rate.toFixed(2)),
      el("td", {}, a.threshold),
      el("td", { class: a.firing ? "firing" : "calm" }, a.firing ? "FIRING" : "ok")));
    return el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, ["windows", "long burn", "short burn", "alert at", "state"].map((h) => el("th", {}, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 5 }, "No traffic counted yet.")))));
  }

  function stages(pipeline) {
    return el("div", { class: "scroll" }, el("table", {},
      el("thead", {}, el("tr", {}, ["stage", "layer", "digest", "candidate", ""].map((h) => el("th", {}, h)))),
      el("tbody", {}, pipeline.stages.map((s) => el("tr", { id: `stage-${pipeline.name}-${s.name}` },
        el("td", {}, s.name),
        el("td", {}, s.layer),
        el("td", {}, el("code", { title: s.digest }, s.digest.slice(0, 19))),
        el("td", {}, s.candidate
          ? `${s.candidate.mode} ${s.candidate.percent} % · ${s.candidate.digest.slice(0, 19)}`
          : "–"),
        el("td", {}, s.candidate ? [
          el("button", { type: "button", class: "promote", id: `promote-${pipeline.name}-${s.name}`, onclick: () => settle(pipeline.name, s.name, "promote") }, "Promote"),
          " ",
          el("button", { type: "button", class: "danger", id: `rollback-${pipeline.name}-${s.name}`, onclick: () => settle(pipeline.name, s.name, "rollback") }, "Roll back"),
        ] : null))))));
  }

  let busy = false;
  async function settle(pipeline, stage, action) {
    if (busy) return;
    const what = action === "promote"
      ? `Promote the candidate of stage "${stage}" in pipeline "${pipeline}"? It will serve all traffic and the manifest is edited.`
      : `Roll back the candidate of stage "${stage}" in pipeline "${pipeline}"? It stops serving and is removed from the manifest.`;
    if (!window.confirm(what)) { say("Nothing changed."); return; }
    busy = true;
    document.querySelectorAll("button.promote, button.danger").forEach((b) => { b.disabled = true; });
    try {
      const report = await api("POST", `/admin/pipelines/${encodeURIComponent(pipeline)}/stages/${encodeURIComponent(stage)}/${action}`, {});
      say(`${action === "promote" ? "Promoted" : "Rolled back"}: "${stage}" in "${pipeline}"; generation ${report.generation || report.to_generation || "updated"}.`, "ok");
    } catch (e) {
      say(`${action === "promote" ? "Promoting" : "Rolling back"} "${stage}": ${e.message}`, "error");
    } finally {
      busy = false;
      await load();
    }
  }

  async function pipelineSection(pipeline) {
    const name = encodeURIComponent(pipeline.name);
    const [traffic, slo, shadow] = await Promise.all([
      api("GET", `/admin/pipelines/${name}/traffic?hours=24`),
      api("GET", `/admin/pipelines/${name}/slo`),
      api("GET", `/admin/pipelines/${name}/shadow`).catch(() => null),
    ]);
    const days = Math.max(1 / 24, (Date.now() - traffic.since) / 86400000);
    const shadowed = shadow && Array.isArray(shadow.stages) ? shadow.stages : [];
    return el("section", { class: "pipeline", id: `pipeline-${pipeline.name}` },
      el("h2", {}, `Pipeline ${pipeline.name}`),
      el("div", { class: "grid" },
        figure("requests, last 24 h", String(traffic.requests), `requests-${pipeline.name}`),
        figure("completion rate", percent(traffic.completion_rate), `completion-${pipeline.name}`),
        figure("time to value p50", millis(traffic.time_to_value_p50_ms)),
        figure("time to value p99", millis(traffic.time_to_value_p99_ms)),
        figure("cost per answered request", money(traffic.cost_per_answered_usd)),
        figure("cost per day", money(traffic.cost_usd / days)),
        figure("waiting for a person", String(traffic.escalated))),
      el("h3", {}, "Answers by layer, last 24 hours"),
      legend(),
      chart(traffic),
      el("h3", {}, `Error budget (target ${percent(slo.target)}, ${slo.latency_ms} ms)`),
      burn(slo),
      el("h3", {}, "Stages"),
      stages(pipeline),
      shadowed.length ? el("p", { class: "meta" }, `Shadow comparisons: ${shadowed.map((s) => `${s.stage}: ${s.runs} compared, ${s.differing} differ`).join("; ")}`) : null);
  }

  function auditLog(entries) {
    return el("div", { class: "scroll" }, el("table", { id: "audit" },
      el("thead", {}, el("tr", {}, ["when", "action", "by", "result", "generation"].map((h) => el("th", {}, h)))),
      el("tbody", {}, entries.length ? entries.map((e) => el("tr", {},
        el("td", {}, new Date(e.at).toLocaleString()),
        el("td", {}, e.action),
        el("td", {}, `${e.actor} (${e.trigger})`),
        el("td", {}, e.result),
        el("td", {}, `${e.from_generation ?? "–"} → ${e.to_generation ?? "–"}`))) : el("tr", {}, el("td", { colspan: 5 }, "Nothing recorded yet.")))));
  }

  // Teams (`[teams.NAME]`): spend against budget, cost per answered request.
  function teamsTable(teams) {
    if (!teams.length) return null;
    return [el("h2", {}, "Teams"), el("div", { class: "scroll" }, el("table", { id: "teams" },
      el("thead", {}, el("tr", {}, ["team", "today", "this month", "requests (month)", "cost per answered", "over budget"].map((h) => el("th", {}, h)))),
      el("tbody", {}, teams.map((t) => el("tr", {},
        el("td", {}, t.name),
        el("td", {}, `${money(t.spend.today_usd)}${t.budget.usd_per_day ? ` of ${money(t.budget.usd_per_day)}` : ""}`),
        el("td", {}, `${money(t.spend.month_usd)}${t.budget.usd_per_month ? ` of ${money(t.budget.usd_per_month)}` : ""}`),
        el("td", {}, `${t.month.requests} (${t.month.answered} answered)`),
        el("td", {}, money(t.month.cost_per_answered_usd)),
        el("td", { class: t.over_budget_now ? "firing" : "calm" }, t.over_budget_now ? `yes: ${t.over_budget}` : "no"))))))];
  }

  // Hosts serving as one (`[shared]`): what each serves and its last
  // operation; nothing when this host serves alone.
  async function clusterSection() {
    let cluster;
    try {
      cluster = await api("GET", "/admin/cluster");
    } catch (e) {
      if (e.code === "no_cluster") return [];
      return [el("h2", {}, "Cluster"), el("p", { id: "cluster-summary", class: "firing" }, e.message)];
    }
    const where = `cluster ${cluster.cluster}, Redis ${cluster.redis}`;
    const calm = cluster.connected && cluster.in_step;
    const summary = !cluster.connected
      ? `This host has lost the cluster (${where}): ${cluster.error || "unreachable"}; it serves and operates alone.`
      : (cluster.in_step ? `Every live host is in step (${where}).` : `Not every host is in step (${where}).`);
    return [el("h2", {}, "Cluster"),
      el("p", { id: "cluster-summary", class: calm ? "calm" : "firing" }, summary),
      el("div", { class: "scroll" }, el("table", { id: "cluster" },
        el("thead", {}, el("tr", {}, ["host", "generation", "manifest", "in step", "last operation"].map((h) => el("th", {}, h)))),
        el("tbody", {}, cluster.hosts.map((h) => {
          const last = h.last_operation;
          const operation = last ? `${last.action} ${last.result} (${last.trigger})${last.error ? `: ${last.error}` : ""}` : "–";
          const step = h.stale ? "stale" : (h.in_step ? "in step" : "out of step");
          return el("tr", {},
            el("td", {}, h.host === cluster.host ? `${h.host} (this host)` : h.host),
            el("td", {}, String(h.generation)),
            el("td", {}, el("code", {}, String(h.manifest_sha256).slice(0, 16))),
            el("td", { class: h.in_step && !h.stale ? "calm" : "firing" }, step),
            el("td", {}, operation));
        }))))];
  }

  async function load() {
    try {
      const [serving, audit, teams, cluster] = await Promise.all([
        api("GET", "/admin/pipelines"), api("GET", "/admin/audit?limit=20"), api("GET", "/admin/teams"),
        clusterSection()]);
      const sections = await Promise.all(serving.pipelines.map(pipelineSection));
      app.replaceChildren(
        el("p", { id: "generation" }, `Serving generation ${serving.generation}, loaded ${new Date(serving.loaded_at).toLocaleString()}, manifest sha256 `,
          el("code", {}, String(serving.manifest.sha256).slice(0, 16))),
        ...(sections.length ? sections : [el("div", { class: "empty" }, "The manifest defines no pipelines.")]),
        ...(teamsTable(teams.teams) || []),
        ...cluster,
        el("h2", {}, "Audit log"),
        auditLog(audit.entries));
    } catch (e) {
      say(e.message, "error");
    }
  }

  load();
  setInterval(() => { if (!busy) load(); }, 30000);
})();
