// scanside status page. Every value is placed with textContent: DICOM strings (a
// PatientName can hold markup) are shown as text, never parsed as HTML.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
  }
  return node;
}

function replace(container, children, empty) {
  container.replaceChildren(...(children.length ? children : [el("p", { class: "muted" }, empty)]));
}

const since = (seconds) => {
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  return s < 90 ? `${s} s ago` : s < 5400 ? `${Math.round(s / 60)} min ago` : `${Math.round(s / 3600)} h ago`;
};

function renderHealth(snapshot) {
  const h = snapshot.health;
  const state = $("state");
  state.textContent = h.state;
  state.className = `badge ${h.state}`;
  $("appliance").textContent = `${snapshot.appliance_id} · ${snapshot.version}`;
  const rows = [];
  for (const [modality, model] of Object.entries(h.models || {})) {
    rows.push([`${modality} model`, model.error
      ? `cannot be used: ${model.error}`
      : `${model.name} ${model.version} on ${model.backend} (${model.why})`]);
  }
  rows.push(["broker", `${h.broker.url} · ${h.broker.connected ? "connected" : "NOT CONNECTED"}`]);
  rows.push(["inbox", `${h.inbox}${h.inbox_free ? ` · ${h.inbox_free} free` : ""}`]);
  rows.push(["state", `${h.state_dir}${h.state_free ? ` · ${h.state_free} free` : ""}`]);
  rows.push(["outbox", `${h.outbox_backlog ?? 0} unsent`]);
  if (h.detail) rows.push(["attention", h.detail]);
  rows.push(["last error", h.last_error || "none"]);
  $("health").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function renderArriving(arriving) {
  replace($("arriving"), arriving.map((a) => {
    const total = a.expected || a.received;
    return el("div", { class: "card" },
      el("div", { class: "title" }, `${a.modality} ${a.description || ""}`),
      a.patient ? el("div", {}, a.patient) : "",
      el("progress", { max: String(total), value: String(a.analysed) }),
      el("div", { class: "muted" },
        `${a.received}${a.expected ? ` of ${a.expected}` : ""} slices received, ` +
        `${a.analysed} analysed · ${a.series_uid}`));
  }), "No series arriving.");
}

function lesionTable(findings) {
  return el("table", {},
    el("tr", {}, el("th", {}, "size"), el("th", {}, "volume"), el("th", {}, "probability"),
      el("th", {}, "slices")),
    ...findings.map((f) => el("tr", {},
      el("td", {}, `${f.diameter_mm.toFixed(0)} mm`),
      el("td", {}, f.volume_mm3 == null ? "–" : `${(f.volume_mm3 / 1000).toFixed(1)} ml`),
      el("td", {}, f.probability.toFixed(2)),
      el("td", {}, `${f.slices[0]}–${f.slices[1]}`))));
}

function renderResults(results) {
  replace($("results"), results.map((r) => {
    const card = el("div", { class: `card ${r.status}` });
    const verdict = { positive: "TUMOUR SUSPECTED", negative: "no finding",
                      failed: "NOT ANALYSED" }[r.status] || r.status;
    if (r.status === "positive") {
      const thumb = el("img", { src: `/api/series/${encodeURIComponent(r.series_uid)}/images/key.png`,
                                alt: "key slice with lesion overlay" });
      thumb.addEventListener("click", () => openViewer(r));
      card.append(thumb);
    }
    card.append(
      el("div", {}, el("span", { class: "verdict" }, verdict),
        el("span", { class: "title" }, `${r.modality} · ${r.n_slices} slices · v${r.version}`)),
      el("div", { class: "muted" }, `${r.series_uid} · ${new Date(r.analysed_at).toLocaleTimeString()}`));
    if (r.patient) card.append(el("div", {}, `${r.patient.name} · ${r.patient.id}`));
    if (r.reason) card.append(el("div", {}, r.status === "failed" ? `reason: ${r.reason}` : r.reason));
    if (r.findings && r.findings.length) card.append(lesionTable(r.findings));
    return card;
  }), "No series analysed yet.");
}

function openViewer(result) {
  $("viewer-title").textContent = `${result.modality} ${result.series_uid}`;
  const uid = encodeURIComponent(result.series_uid);
  const slices = [...new Set(result.findings.flatMap((f) => {
    const out = [];
    for (let k = f.slices[0]; k <= f.slices[1]; k++) out.push(k);
    return out;
  }))].slice(0, 24);
  $("viewer-images").replaceChildren(...slices.map((k) =>
    el("img", { src: `/api/series/${uid}/images/slice-${k}.png`, alt: `slice ${k}` })));
  $("viewer").showModal();
}

function renderAlerts(alerts) {
  const items = alerts.slice(0, 15).map((a) => el("li", {},
    `${a.kind === "final" ? "FINAL" : "provisional"} · ${a.modality} · ${a.findings.length} ` +
    `lesion${a.findings.length === 1 ? "" : "s"} · ${new Date(a.raised_at).toLocaleTimeString()} · ${a.series_uid}`));
  $("alerts").replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "None.")]));
}

function renderTimings(timings) {
  const stages = ["read", "preprocess", "infer", "postprocess", "publish"];
  $("timings").replaceChildren(...stages.map((s) =>
    el("tr", {}, el("th", {}, s), el("td", {}, s in timings ? `${timings[s]} ms` : "–"))));
}

function renderQuarantine(files) {
  const items = files.slice(0, 20).map((q) => el("li", {},
    el("div", {}, q.path), el("div", { class: "muted" }, `${q.reason} · ${since(q.at)}`)));
  $("quarantine").replaceChildren(...(items.length ? items : [el("li", { class: "muted" }, "None.")]));
}

function render(snapshot) {
  renderHealth(snapshot);
  renderArriving(snapshot.arriving);
  renderResults(snapshot.results);
  renderAlerts(snapshot.alerts);
  renderTimings(snapshot.last_series_timings_ms);
  renderQuarantine(snapshot.quarantine);
}

async function poll() {
  try {
    const response = await fetch("/api/status", { cache: "no-store" });
    if (response.ok) render(await response.json());
    $("live").textContent = "refreshing every 5 s";
  } catch (error) {
    $("state").textContent = "unreachable";
    $("state").className = "badge unreachable";
  }
}

function live() {
  if (!window.EventSource) {
    poll();
    setInterval(poll, 5000);
    return;
  }
  const source = new EventSource("/api/events");
  source.addEventListener("snapshot", (event) => {
    render(JSON.parse(event.data));
    $("live").textContent = "live";
  });
  source.onerror = () => {
    source.close();
    poll();
    const timer = setInterval(poll, 5000);
    setTimeout(() => { clearInterval(timer); live(); }, 30000);
  };
}

live();
