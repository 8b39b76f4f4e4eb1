// The tnrwatch dashboard: reads the projections API with the key the user gives
// (kept in sessionStorage, so it leaves with the tab) and draws it with Chart.js.
"use strict";

const KEY = "tnrwatch.apiKey";
const charts = {};
const state = { filters: { yearFrom: "", yearTo: "", groups: [], countries: [] } };
const COLORS = ["#9b1c31", "#2f5d8a", "#c97b1a", "#3d7a4f", "#6b4c9a", "#7a7a7a", "#b3446c", "#1f8a8a"];

const $ = (id) => document.getElementById(id);

function setState(value) { document.body.dataset.state = value; }

function say(text) {
  const box = $("message");
  box.textContent = text || "";
  box.hidden = !text;
}

function apiKey() { return sessionStorage.getItem(KEY); }

async function api(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of params || []) url.searchParams.append(name, value);
  const response = await fetch(url, { headers: { Authorization: `Bearer ${apiKey()}` } });
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (_) { /* not JSON */ }
    const error = new Error(detail);
    error.status = response.status;
    throw error;
  }
  return response.json();
}

function filterParams() {
  const f = state.filters;
  const params = [];
  if (f.yearFrom) params.push(["from", `${f.yearFrom}-01-01`]);
  if (f.yearTo) params.push(["to", `${f.yearTo}-12-31`]);
  if (f.groups.length) params.push(["group", f.groups.join(",")]);
  if (f.countries.length) params.push(["country", f.countries.join(",")]);
  return params;
}

function draw(id, config) {
  if (charts[id]) charts[id].destroy();
  charts[id] = new Chart($(id), config);
}

function countryChart(stats) {
  const visible = stats.cells.filter((c) => c.incidents !== null).sort((a, b) => b.incidents - a.incidents);
  const hidden = stats.cells.filter((c) => c.incidents === null);
  const labels = [...visible.map((c) => c.country), ...hidden.map((c) => `${c.country} (hidden)`)];
  const values = [...visible.map((c) => c.incidents), ...hidden.map(() => 0)];
  draw("chart-country", {
    type: "bar",
    data: { labels, datasets: [{ label: "incidents", data: values, backgroundColor: COLORS[0] }] },
    options: { indexAxis: "y", maintainAspectRatio: false, animation: false,
               plugins: { legend: { display: false } }, scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
  });
  const note = $("suppression-note");
  note.hidden = !stats.suppressed;
  note.textContent = stats.suppressed
    ? `Groups of fewer than ${stats.k} incidents are hidden (and, where needed, a neighbour too), so that no one can be singled out.` : "";
}

function overTime(id, stats, dimension, none) {
  const years = [...new Set(stats.cells.map((c) => c.year))].sort();
  const series = [...new Set(stats.cells.map((c) => c[dimension] ?? none))].sort();
  const datasets = series.map((name, i) => ({
    label: name,
    backgroundColor: COLORS[i % COLORS.length],
    data: years.map((year) => {
      const cell = stats.cells.find((c) => c.year === year && (c[dimension] ?? none) === name);
      return cell && cell.incidents !== null ? cell.incidents : 0;
    }),
  }));
  draw(id, {
    type: "bar",
    data: { labels: years.map(String), datasets },
    options: { maintainAspectRatio: false, animation: false,
               scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, ticks: { precision: 0 } } } },
  });
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    td.append(span);
  } else {
    td.textContent = text ?? "";
  }
  row.append(td);
}

async function loadAlerts() {
  const body = $("alerts-table").querySelector("tbody");
  body.replaceChildren();
  const note = $("alerts-note");
  try {
    const { alerts } = await api("/v1/dashboard/alerts", [["status", "open"], ["status", "acknowledged"]]);
    for (const alert of alerts) {
      const row = document.createElement("tr");
      cell(row, alert.severity, `severity-${alert.severity}`);
      cell(row, alert.rule);
      cell(row, alert.summary);
      const target = document.createElement("td");
      if (alert.target_ref) {
        const link = document.createElement("a");
        link.href = "#";
        link.textContent = alert.target_ref;
        link.addEventListener("click", (event) => { event.preventDefault(); showTimeline(alert.target_ref); });
        target.append(link);
      } else {
        target.textContent = alert.place ?? "";
      }
      row.append(target);
      cell(row, alert.last_seen.slice(0, 10));
      cell(row, alert.deadline ?? "");
      body.append(row);
    }
    note.hidden = alerts.length > 0;
    note.textContent = alerts.length ? "" : "No open alerts.";
  } catch (error) {
    note.hidden = false;
    note.textContent = error.status === 403 ? "This key may not read alerts (alerts:read)." : `Alerts: ${error.message}`;
  }
}

async function showTimeline(targetRef) {
  $("target-ref").value = targetRef;
  const list = $("timeline");
  list.replaceChildren();
  const note = $("timeline-note");
  note.hidden = true;
  try {
    const timeline = await api(`/v1/targets/${encodeURIComponent(targetRef)}/timeline`);
    const countries = Object.fromEntries(timeline.incidents.map((i) => [i.incident_id, i.country]));
    for (const act of timeline.acts) {
      const item = document.createElement("li");
      const when = document.createElement("time");
      when.textContent = act.on;
      item.append(when, `${act.type.replaceAll("_", " ")} — ${act.status}, ${act.actor}, in ${countries[act.incident_id] ?? "?"}`);
      item.dataset.incidentId = act.incident_id;
      list.append(item);
    }
  } catch (error) {
    note.hidden = false;
    note.textContent = error.status === 403 ? "Timelines need a key with incidents:read."
      : error.status === 404 ? "No incidents for this target." : error.message;
  }
}

function fillOptions(containerId, name, values, chosen) {
  const box = $(containerId);
  box.replaceChildren();
  for (const value of values) {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.name = name;
    input.value = value;
    input.checked = chosen.includes(value);
    label.append(input, ` ${value.replaceAll("_", " ")}`);
    box.append(label);
  }
}

function fillYears(years) {
  for (const id of ["year-from", "year-to"]) {
    const select = $(id);
    const current = select.value;
    select.replaceChildren(new Option("any", ""), ...years.map((y) => new Option(String(y), String(y))));
    select.value = current;
  }
}

async function refresh() {
  if (!apiKey()) { setState("needs-key"); say("Enter an API key to see the data."); return; }
  setState("loading");
  say("");
  try {
    const filters = filterParams();
    const [byCountry, byMethod, byIr, total, choices] = await Promise.all([
      api("/v1/stats", [["by", "country"], ...filters]),
      api("/v1/stats", [["by", "pace_method,year"], ...filters]),
      api("/v1/stats", [["by", "ir_category,year"], ...filters]),
      api("/v1/stats", [["by", ""], ...filters]),
      api("/v1/stats", [["by", "country,group,year"]]),
    ]);
    const sorted = (key) => [...new Set(choices.cells.map((c) => c[key]).filter((v) => v !== null))].sort();
    fillYears(sorted("year"));
    fillOptions("group-options", "group", sorted("group"), state.filters.groups);
    fillOptions("country-options", "country", sorted("country"), state.filters.countries);
    const all = total.cells[0];
    $("total-incidents").textContent = all && all.incidents !== null ? String(all.incidents) : (all ? `<${total.k}` : "0");
    countryChart(byCountry);
    overTime("chart-method", byMethod, "pace_method", "unclassified");
    overTime("chart-ir", byIr, "ir_category", "no IR category");
    await loadAlerts();
    $("key-status").textContent = "key in use";
    setState("ready");
  } catch (error) {
    setState("error");
    say(error.status === 401 ? "The key was not accepted." : `Could not load the data: ${error.message}`);
  }
}

function readFilters() {
  const checked = (name) => [...document.querySelectorAll(`input[name=${name}]:checked`)].map((i) => i.value);
  state.filters = { yearFrom: $("year-from").value, yearTo: $("year-to").value,
                    groups: checked("group"), countries: checked("country") };
}

window.addEventListener("DOMContentLoaded", () => {
  if (typeof Chart === "undefined") {
    setState("error");
    say("The charting library is missing: the dashboard was not built (see docs/projections.md).");
    return;
  }
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    $("api-key").value = "";
    refresh();
  });
  $("forget-key").addEventListener("click", () => { sessionStorage.removeItem(KEY); window.location.reload(); });
  $("filter-form").addEventListener("submit", (event) => { event.preventDefault(); readFilters(); refresh(); });
  $("clear-filters").addEventListener("click", () => {
    state.filters = { yearFrom: "", yearTo: "", groups: [], countries: [] };
    $("year-from").value = ""; $("year-to").value = "";
    refresh();
  });
  $("timeline-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const ref = $("target-ref").value.trim();
    if (ref) showTimeline(ref);
  });
  refresh();
});
