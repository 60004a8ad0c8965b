// The policy playground. Everything shown that came from a user or the model
// goes in as text (textContent, createTextNode), never as HTML.
"use strict";

const KEY = "safeguard-api-key";
const $ = (id) => document.getElementById(id);

// ---- small DOM helpers ----

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  return node;
}

function fmt(x, digits = 3) {
  return x === null || x === undefined || Number.isNaN(x) ? "—" : Number(x).toFixed(digits);
}

function say(message, error = false) {
  const status = $("status");
  status.textContent = message;
  status.classList.toggle("error", error);
}

function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// ---- the API ----

class ApiError extends Error {}

function headers(json) {
  const h = {};
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = "Bearer " + key;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function call(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: headers(body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    $("key-panel").hidden = false;
    $("api-key").focus();
    throw new ApiError("this server needs its API key: enter it above");
  }
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      const body = await response.json();
      if (body.error && body.error.message) message = body.error.message;
    } catch (_) { /* not JSON: keep the status line */ }
    throw new ApiError(message);
  }
  return response;
}

async function json(method, path, body) {
  return (await call(method, path, body)).json();
}

// Server-sent events over fetch (EventSource cannot send the key).
async function events(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
      if (!data || data === "[DONE]") continue;
      onEvent(JSON.parse(data));
    }
  }
}

function guard(task) {
  return async (...args) => {
    try {
      await task(...args);
    } catch (e) {
      say(e.message || String(e), true);
    }
  };
}

// ---- tabs ----

const TABS = ["policy", "try", "eval", "export"];

function showTab(name, focus) {
  for (const t of TABS) {
    const tab = $("tab-" + t);
    const on = t === name;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $("view-" + t).hidden = !on;
    if (on && focus) tab.focus();
  }
  if (name === "export") renderPreview();
}

function setupTabs() {
  TABS.forEach((t, i) => {
    const tab = $("tab-" + t);
    tab.addEventListener("click", () => showTab(t));
    tab.addEventListener("keydown", (e) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[e.key];
      if (step) showTab(TABS[(i + step + TABS.length) % TABS.length], true);
    });
  });
}

// ---- policy editor ----

const policy = { template: "", shipped: [], saved: [], versions: [], lintTimer: 0, lintSeq: 0 };

function policyText() {
  return $("policy-text").value;
}

function policyName() {
  return $("policy-name").value.trim() || "draft";
}

async function loadList(select) {
  const list = await json("GET", "/v1/policies");
  policy.template = list.template;
  policy.shipped = list.shipped;
  policy.saved = list.saved;
  const pick = $("policy-pick");
  pick.replaceChildren(el("option", { value: "", text: "— choose a policy —" }));
  const saved = el("optgroup", { label: "Saved" });
  for (const p of list.saved) saved.append(el("option", { value: p.name, text: p.name + " (v" + (p.latest ? p.latest.version : "?") + ")" }));
  const shipped = el("optgroup", { label: "Shipped" });
  for (const p of list.shipped) shipped.append(el("option", { value: p.name, text: p.name + " — " + p.title }));
  if (list.saved.length) pick.append(saved);
  pick.append(shipped);
  if (select) pick.value = select;
}

async function openPolicy(name) {
  if (!name) return;
  const p = await json("GET", "/v1/policies/" + encodeURIComponent(name));
  $("policy-text").value = p.text;
  $("policy-name").value = p.kind === "shipped" ? p.name + "-copy" : p.name;
  showVersions(p.kind === "saved" ? p.name : null, p.versions);
  localStorage.setItem("safeguard-last-policy", name);
  say("opened " + (p.kind === "shipped" ? "the shipped policy " : "") + name + (p.version ? " v" + p.version.version : ""));
  scheduleLint(0);
}

function showVersions(name, versions) {
  policy.versions = versions || [];
  const list = $("versions");
  list.replaceChildren();
  if (!name || !versions.length) {
    list.append(el("li", { class: "muted", text: "Not saved yet: each save keeps a version." }));
    return;
  }
  for (const v of [...versions].reverse()) {
    const label = "v" + v.version;
    list.append(el("li", { "data-version": String(v.version) },
      el("strong", { text: label }),
      el("span", { text: v.date }),
      el("span", { class: "sha", title: v.sha256, text: v.sha256.slice(0, 12) }),
      el("button", { type: "button", text: "Open", "aria-label": "Open " + label, onclick: guard(() => openVersion(name, v.version)) }),
      el("button", { type: "button", text: "Diff", "aria-label": "Diff " + label + " with the editor", onclick: guard(() => diffVersion(name, v.version)) }),
    ));
  }
}

async function openVersion(name, version) {
  const v = await json("GET", "/v1/policies/" + encodeURIComponent(name) + "/versions/" + version);
  $("policy-text").value = v.text;
  say("opened " + name + " v" + version);
  scheduleLint(0);
}

async function diffVersion(name, version) {
  const v = await json("GET", "/v1/policies/" + encodeURIComponent(name) + "/versions/" + version);
  const out = $("diff");
  out.replaceChildren();
  for (const [kind, line] of diffLines(v.text.split("\n"), policyText().split("\n"))) {
    const mark = { add: "+ ", del: "- ", same: "  " }[kind];
    out.append(el("span", { class: kind, text: mark + line }));
  }
  $("diff-title").textContent = "Diff: " + name + " v" + version + " → editor";
  $("diff-panel").hidden = false;
}

// Longest common subsequence of lines: short texts, so the table is small.
function diffLines(a, b) {
  const n = a.length, m = b.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0, j = 0;
  while (i < n && j < m) {
    if (a[i] === b[j]) { out.push(["same", a[i]]); i++; j++; }
    else if (lcs[i + 1][j] >= lcs[i][j + 1]) out.push(["del", a[i++]]);
    else out.push(["add", b[j++]]);
  }
  while (i < n) out.push(["del", a[i++]]);
  while (j < m) out.push(["add", b[j++]]);
  return out;
}

async function savePolicy() {
  const name = policyName();
  const saved = await json("PUT", "/v1/policies/" + encodeURIComponent(name), { text: policyText() });
  const p = await json("GET", "/v1/policies/" + encodeURIComponent(name));
  showVersions(name, p.versions);
  await loadList(name);
  localStorage.setItem("safeguard-last-policy", name);
  say(saved.created ? "saved " + name + " v" + saved.version.version : "unchanged: " + name + " v" + saved.version.version + " holds this text");
}

async function deletePolicy() {
  const name = policyName();
  if (!confirm("Delete the saved policy " + name + " and all its versions?")) return;
  await json("DELETE", "/v1/policies/" + encodeURIComponent(name));
  showVersions(null, []);
  await loadList();
  say("deleted " + name);
}

function scheduleLint(delay = 300) {
  clearTimeout(policy.lintTimer);
  policy.lintTimer = setTimeout(guard(lint), delay);
}

async function lint() {
  const text = policyText();
  const seq = ++policy.lintSeq;
  if (!text.trim()) {
    $("lint-summary").textContent = "Empty policy: start from a template or a shipped policy.";
    $("lint-findings").replaceChildren();
    return;
  }
  const result = await json("POST", "/v1/policies/lint", { text });
  if (seq !== policy.lintSeq) return;
  const errors = result.findings.filter((f) => f.severity === "error").length;
  const warnings = result.findings.length - errors;
  $("lint-summary").textContent = (result.estimated ? "~" : "") + result.tokens + " tokens (400–600 advised) · " + errors + " error(s), " + warnings + " warning(s)";
  $("lint-tokens").value = Math.min(result.tokens, 1000);
  const declared = result.declared;
  $("lint-declared").textContent = declared
    ? "Declared: output " + (declared.output || "binary") + "; violates " + (declared.violates.join(", ") || "1") + "; safe " + (declared.safe.join(", ") || "0") + (declared.escalate.length ? "; escalate " + declared.escalate.join(", ") : "")
    : "No front matter: answers 1 (violates) / 0 (safe).";
  const lines = text.split("\n");
  const list = $("lint-findings");
  list.replaceChildren();
  for (const f of result.findings) {
    const item = el("li", { class: f.severity });
    if (f.line) {
      item.append(el("button", { type: "button", class: "link", text: "line " + f.line, "aria-label": "Go to line " + f.line, onclick: () => goToLine(f.line) }), " ");
    }
    item.append(document.createTextNode(f.message + " [" + f.rule + "]"));
    if (f.line && lines[f.line - 1] !== undefined) item.append(highlightHedges(lines[f.line - 1], f.rule === "hedge"));
    list.append(item);
  }
}

const HEDGE = /\b(generally|usually|typically|often|sometimes|mostly|normally|probably|possibly|perhaps|likely|somewhat|arguably|in most cases|tends to)\b/gi;

function highlightHedges(line, mark) {
  const code = el("code");
  if (!mark) { code.textContent = line; return code; }
  let at = 0;
  for (const m of line.matchAll(HEDGE)) {
    code.append(document.createTextNode(line.slice(at, m.index)), el("mark", { text: m[0] }));
    at = m.index + m[0].length;
  }
  code.append(document.createTextNode(line.slice(at)));
  return code;
}

function goToLine(line) {
  const area = $("policy-text");
  const lines = area.value.split("\n");
  const start = lines.slice(0, line - 1).reduce((n, l) => n + l.length + 1, 0);
  area.focus();
  area.setSelectionRange(start, start + (lines[line - 1] || "").length);
  const height = area.scrollHeight / Math.max(lines.length, 1);
  area.scrollTop = Math.max(0, (line - 3) * height);
}

// ---- try ----

function tryMode() {
  return document.querySelector('input[name="try-mode"]:checked').value;
}

function addMessage(role = "user", content = "") {
  const row = el("div", { class: "conv-row" });
  const n = $("conv").children.length + 1;
  const select = el("select", { "aria-label": "Role of message " + n });
  for (const r of ["user", "assistant", "system"]) select.append(el("option", { text: r }));
  select.value = role;
  const input = el("input", { "aria-label": "Message " + n });
  input.value = content;
  const remove = el("button", { type: "button", text: "Remove", "aria-label": "Remove message " + n, onclick: () => row.remove() });
  row.append(select, input, remove);
  $("conv").append(row);
  return input;
}

function tryItems() {
  if (tryMode() === "conversation") {
    const messages = [...$("conv").children].map((row) => ({
      role: row.querySelector("select").value,
      content: row.querySelector("input").value,
    })).filter((m) => m.content.trim());
    if (!messages.length) throw new ApiError("write at least one message");
    return [{ id: "1", messages }];
  }
  const text = $("try-text").value;
  const texts = $("try-many").checked ? text.split("\n").filter((t) => t.trim()) : [text];
  if (!texts.length || !texts[0].trim()) throw new ApiError("write some content to classify");
  return texts.map((t, i) => ({ id: String(i + 1), text: t }));
}

const trial = { results: [], reasoning: [], shown: 0 };

function showTrialItem(index) {
  trial.shown = index;
  const reasoning = $("try-reasoning");
  reasoning.textContent = trial.reasoning[index] || "";
  reasoning.scrollTop = reasoning.scrollHeight;
  const r = trial.results[index];
  const outcome = $("try-outcome");
  outcome.className = "big";
  if (!r) {
    outcome.textContent = "…";
    for (const id of ["try-p-text", "try-category", "try-rules", "try-rationale", "try-tokens", "try-latency"]) $(id).textContent = "—";
    $("try-p").value = 0;
  } else {
    outcome.textContent = r.outcome || "no verdict" + (r.error ? ": " + r.error : "");
    if (r.outcome === "violates") outcome.classList.add("violates");
    if (r.outcome === "safe") outcome.classList.add("safe");
    $("try-p").value = r.p_violation ?? 0;
    $("try-p-text").textContent = fmt(r.p_violation);
    $("try-category").textContent = r.policy_category || "—";
    $("try-rules").textContent = (r.rule_ids || []).join(", ") || "—";
    $("try-rationale").textContent = r.rationale || "—";
    $("try-tokens").textContent = r.usage.prompt_tokens + " prompt (" + r.usage.cached_tokens + " cached) · " + r.usage.completion_tokens + " generated";
    $("try-latency").textContent = r.latency_ms + " ms";
  }
  for (const row of $("try-table").tBodies[0].rows) row.setAttribute("aria-selected", String(Number(row.dataset.index) === index));
}

function tableRow(index, item) {
  const text = item.text ?? item.messages.map((m) => m.role + ": " + m.content).join(" / ");
  const row = el("tr", { "data-index": String(index), tabindex: "0" },
    el("td", { text: String(index + 1) }), el("td", { text }), el("td", { text: "…" }),
    el("td"), el("td"), el("td"), el("td"));
  const pick = () => showTrialItem(index);
  row.addEventListener("click", pick);
  row.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); pick(); } });
  return row;
}

function fillRow(index, r) {
  const row = $("try-table").tBodies[0].rows[index];
  const cells = row.cells;
  cells[2].textContent = r.outcome || "no verdict";
  cells[3].replaceChildren(el("meter", { min: "0", max: "1", low: "0.3", high: "0.7", optimum: "0", value: String(r.p_violation ?? 0), "aria-label": "P(violation) of item " + (index + 1) }), " " + fmt(r.p_violation));
  cells[4].textContent = r.policy_category || "—";
  cells[5].textContent = String(r.usage.completion_tokens);
  cells[6].textContent = r.latency_ms + " ms";
}

async function runTry() {
  const items = tryItems();
  const button = $("try-run");
  button.disabled = true;
  trial.results = [];
  trial.reasoning = items.map(() => "");
  const table = $("try-table");
  table.hidden = items.length < 2;
  table.tBodies[0].replaceChildren(...items.map((item, i) => tableRow(i, item)));
  showTrialItem(0);
  $("try-reasoning").setAttribute("aria-busy", "true");
  say("classifying " + items.length + " item(s)…");
  try {
    const response = await call("POST", "/v1/try", {
      policy: policyText(),
      input: items,
      effort: $("try-effort").value || undefined,
    });
    await events(response, (event) => {
      if (event.type === "start" && event.index !== trial.shown) showTrialItem(event.index);
      if (event.type === "reasoning") {
        trial.reasoning[event.index] += event.text;
        if (event.index === trial.shown) {
          const box = $("try-reasoning");
          box.append(document.createTextNode(event.text));
          box.scrollTop = box.scrollHeight;
        }
      }
      if (event.type === "result") {
        trial.results[event.index] = event.result;
        fillRow(event.index, event.result);
        if (event.index === trial.shown) showTrialItem(event.index);
      }
      if (event.type === "error") throw new ApiError(event.error.message);
    });
    say("done: " + trial.results.filter(Boolean).length + " of " + items.length + " classified");
  } finally {
    button.disabled = false;
    $("try-reasoning").setAttribute("aria-busy", "false");
  }
}

// ---- evaluate ----

const evaluation = { id: null, running: null, result: null, items: [], previous: null };

async function readSetFile() {
  const file = $("eval-file").files[0];
  if (!file) return;
  $("eval-set").value = await file.text();
  const ext = file.name.split(".").pop().toLowerCase();
  if (["jsonl", "csv", "tsv"].includes(ext)) $("eval-format").value = ext;
  if (ext === "ndjson") $("eval-format").value = "jsonl";
  say("read " + file.name);
}

async function runEval() {
  const set = $("eval-set").value;
  if (!set.trim()) throw new ApiError("paste or choose a labelled set first");
  const format = $("eval-format").value;
  const previous = evaluation.result && evaluation.setText === set ? evaluation.id : null;
  const started = await json("POST", "/v1/evals", {
    policy: policyText(),
    policy_name: policyName(),
    set,
    set_name: "set." + format,
    effort: $("eval-effort").value || undefined,
    baseline: previous || undefined,
  });
  if (previous) evaluation.previous = { id: previous, policy: evaluation.result.manifest.policy };
  else evaluation.previous = null;
  evaluation.running = started.id;
  evaluation.setText = set;
  $("eval-run").disabled = true;
  $("eval-cancel").disabled = false;
  const progress = $("eval-progress");
  progress.max = started.total;
  progress.value = 0;
  let last = null;
  try {
    const response = await call("GET", "/v1/evals/" + started.id + "/events");
    await events(response, (event) => {
      last = event;
      if (event.status === "running") {
        progress.value = event.done;
        $("eval-progress-text").textContent = event.done + " of " + event.total + (event.eta_s !== null && event.done < event.total ? " · about " + Math.ceil(event.eta_s) + " s left" : "");
      }
    });
  } finally {
    $("eval-run").disabled = false;
    $("eval-cancel").disabled = true;
    evaluation.running = null;
  }
  if (!last || last.status !== "done") {
    throw new ApiError(last && last.status === "failed" ? "eval failed: " + last.error : "eval " + (last ? last.status : "stopped"));
  }
  progress.value = progress.max;
  $("eval-progress-text").textContent = "done: " + progress.max + " examples";
  evaluation.id = started.id;
  evaluation.result = await json("GET", "/v1/evals/" + started.id);
  evaluation.items = (await json("GET", "/v1/evals/" + started.id + "/items")).items;
  showEval();
  say("eval finished: " + evaluation.items.length + " examples");
}

async function cancelEval() {
  if (!evaluation.running) return;
  await json("DELETE", "/v1/evals/" + evaluation.running);
  say("eval cancelled");
}

const METRICS = ["accuracy", "precision", "recall", "f1", "specificity", "balanced_accuracy", "mcc", "kappa", "roc_auc", "average_precision", "brier", "ece"];

function estimate(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return fmt(v);
  const interval = v.low !== undefined && v.low !== null ? " [" + fmt(v.low) + ", " + fmt(v.high) + "]" : "";
  return fmt(v.value) + interval;
}

function cellOf(item) {
  if (item.outcome !== "violates" && item.outcome !== "safe") return "none";
  const predicted = item.outcome === "violates";
  if (item.gold === 1) return predicted ? "tp" : "fn";
  return predicted ? "fp" : "tn";
}

function showEval() {
  const e = evaluation.result;
  const m = e.metrics;
  $("eval-results").hidden = false;
  const body = $("eval-metrics").tBodies[0];
  body.replaceChildren(el("tr", {}, el("th", { scope: "row", text: "n" }), el("td", { text: String(m.n) })));
  for (const name of METRICS) {
    if (!(name in m)) continue;
    body.append(el("tr", {}, el("th", { scope: "row", text: name.replace("_", " ") }), el("td", { text: estimate(m[name]) })));
  }
  const c = m.confusion;
  const counts = { tp: c.tp, fp: c.fp, fn: c.fn, tn: c.tn, none: c.violating_unread + c.safe_unread + c.violating_escalated + c.safe_escalated };
  for (const [cell, n] of Object.entries(counts)) $("cell-" + cell).textContent = String(n);
  $("cell-items").replaceChildren(el("li", { class: "muted", text: "Select a cell above." }));
  drawCurve();
  setThreshold(Number($("eval-threshold").value));
  showMistakes(e.mistakes);
  showComparison(e.comparison);
}

function listCell(cell) {
  const list = $("cell-items");
  list.replaceChildren();
  const names = { tp: "gold violates, predicted violates", fn: "gold violates, predicted safe", fp: "gold safe, predicted violates", tn: "gold safe, predicted safe", none: "no answer" };
  $("cell-title").textContent = "Items: " + names[cell];
  for (const item of evaluation.items.filter((i) => cellOf(i) === cell)) {
    list.append(el("li", { "data-id": item.id }, el("strong", { text: item.id + ": " }), document.createTextNode(item.text),
      el("span", { class: "muted", text: " · P(violation) " + fmt(item.p_violation) })));
  }
  if (!list.children.length) list.append(el("li", { class: "muted", text: "none" }));
}

// Precision, recall, F1 of "violates when P(violation) >= threshold", over the items with a probability.
function atThreshold(t) {
  let tp = 0, fp = 0, fn = 0;
  for (const item of evaluation.items) {
    if (item.p_violation === null || item.p_violation === undefined) continue;
    const predicted = item.p_violation >= t;
    if (predicted && item.gold === 1) tp++;
    else if (predicted) fp++;
    else if (item.gold === 1) fn++;
  }
  const precision = tp + fp ? tp / (tp + fp) : null;
  const recall = tp + fn ? tp / (tp + fn) : null;
  const f1 = precision !== null && recall !== null && precision + recall > 0 ? 2 * precision * recall / (precision + recall) : null;
  return { precision, recall, f1 };
}

const PLOT = { x0: 36, y0: 210, w: 270, h: 190 };

function drawCurve() {
  const chart = $("eval-pr");
  chart.replaceChildren();
  const { x0, y0, w, h } = PLOT;
  chart.append(svg("line", { class: "axis", x1: x0, y1: y0, x2: x0 + w, y2: y0 }), svg("line", { class: "axis", x1: x0, y1: y0, x2: x0, y2: y0 - h }));
  const label = (x, y, text, anchor = "middle") => { const t = svg("text", { x, y, "text-anchor": anchor }); t.textContent = text; chart.append(t); };
  label(x0 + w / 2, 234, "recall");
  const side = svg("text", { x: 12, y: y0 - h / 2, "text-anchor": "middle", transform: "rotate(-90 12 " + (y0 - h / 2) + ")" });
  side.textContent = "precision";
  chart.append(side);
  for (const v of [0, 0.5, 1]) { label(x0 + v * w, y0 + 12, String(v)); label(x0 - 4, y0 - v * h + 3, String(v), "end"); }
  const thresholds = [...new Set(evaluation.items.map((i) => i.p_violation).filter((p) => p !== null && p !== undefined))].sort((a, b) => b - a);
  // From recall 0 at precision 1 (a threshold above every probability), as scikit-learn draws it.
  const points = [{ precision: 1, recall: 0 }, ...thresholds.map(atThreshold).filter((p) => p.precision !== null && p.recall !== null)];
  if (points.length > 1) {
    const d = points.map((p, i) => (i ? "L" : "M") + (x0 + p.recall * w).toFixed(1) + " " + (y0 - p.precision * h).toFixed(1)).join(" ");
    chart.append(svg("path", { class: "curve", d }));
  }
  chart.append(svg("circle", { id: "pr-marker", class: "marker", r: 5, cx: x0, cy: y0 }));
  const strip = $("eval-strip");
  strip.replaceChildren();
  strip.append(svg("line", { class: "axis", x1: 10, y1: 30, x2: 310, y2: 30 }));
  evaluation.items.forEach((item, i) => {
    if (item.p_violation === null || item.p_violation === undefined) return;
    strip.append(svg("circle", { class: item.gold === 1 ? "pos" : "neg", r: 3, cx: 10 + item.p_violation * 300, cy: item.gold === 1 ? 20 + (i % 5) : 40 - (i % 5) }));
  });
  strip.append(svg("line", { id: "strip-thr", class: "thr", x1: 160, y1: 4, x2: 160, y2: 56 }));
}

function setThreshold(t) {
  t = Math.min(1, Math.max(0, t));
  $("eval-threshold").value = String(t);
  $("thr-value").textContent = t.toFixed(3);
  const { precision, recall, f1 } = atThreshold(t);
  $("thr-precision").textContent = fmt(precision);
  $("thr-recall").textContent = fmt(recall);
  $("thr-f1").textContent = fmt(f1);
  const scored = evaluation.items.filter((i) => i.p_violation !== null && i.p_violation !== undefined).length;
  $("thr-note").textContent = "Over the " + scored + " of " + evaluation.items.length + " items with a probability: violates when P(violation) ≥ threshold.";
  const marker = $("pr-marker");
  if (marker && precision !== null && recall !== null) {
    marker.setAttribute("cx", String(PLOT.x0 + recall * PLOT.w));
    marker.setAttribute("cy", String(PLOT.y0 - precision * PLOT.h));
  }
  const line = $("strip-thr");
  if (line) { line.setAttribute("x1", String(10 + t * 300)); line.setAttribute("x2", String(10 + t * 300)); }
}

function setupStripDrag() {
  const strip = $("eval-strip");
  const move = (e) => {
    const box = strip.getBoundingClientRect();
    const x = (e.clientX - box.left) / box.width * 320;
    setThreshold((x - 10) / 300);
  };
  strip.addEventListener("pointerdown", (e) => { strip.setPointerCapture(e.pointerId); move(e); });
  strip.addEventListener("pointermove", (e) => { if (strip.hasPointerCapture(e.pointerId)) move(e); });
}

function showMistakes(mistakes) {
  const box = $("eval-mistakes");
  box.replaceChildren();
  if (!mistakes.length) { box.append(el("p", { class: "muted", text: "No mistakes." })); return; }
  for (const m of mistakes) {
    const summary = el("summary", {},
      el("strong", { text: m.kind.replace("_", " ") + " · " + m.id + ": " }),
      document.createTextNode(m.text),
      el("span", { class: "muted", text: " (gold " + m.gold + ", predicted " + (m.predicted ?? "—") + ", P(violation) " + fmt(m.p_violation) + ")" }));
    const details = el("details", { "data-id": m.id }, summary);
    if (m.rationale) details.append(el("p", { text: "Rationale: " + m.rationale }));
    if (m.error) details.append(el("p", { text: "Error: " + m.error }));
    details.append(el("pre", { text: m.reasoning || "(no reasoning)" }));
    box.append(details);
  }
}

function flipItem(f) {
  return el("li", { "data-id": f.id }, el("strong", { text: f.id + ": " }), document.createTextNode(f.text),
    el("span", { class: "muted", text: " · gold " + f.gold + ", before " + (f.baseline ?? "—") + ", now " + (f.current ?? "—") }));
}

function showComparison(c) {
  const section = $("eval-compare");
  section.hidden = !c;
  if (!c) return;
  $("compare-about").textContent = "Before: " + c.baseline_policy + " (" + c.baseline_policy_sha256.slice(0, 12) + "…, " + c.baseline_date + ").";
  $("mcnemar").textContent = fmt(c.mcnemar_p, 4);
  $("compare-deltas").tBodies[0].replaceChildren(...c.metrics.map((d) => el("tr", {},
    el("th", { scope: "row", text: d.metric }), el("td", { text: fmt(d.baseline) }), el("td", { text: fmt(d.current) }),
    el("td", { text: d.delta === null ? "—" : (d.delta > 0 ? "+" : "") + fmt(d.delta) }))));
  $("flips-fixed").replaceChildren(...(c.fixed.length ? c.fixed.map(flipItem) : [el("li", { class: "muted", text: "none" })]));
  $("flips-broken").replaceChildren(...(c.broken.length ? c.broken.map(flipItem) : [el("li", { class: "muted", text: "none" })]));
}

async function downloadReport() {
  const response = await call("GET", "/v1/evals/" + evaluation.id + "/report");
  download(evaluation.id + ".html", "text/html", await response.text());
}

// ---- export / import ----

function preset() {
  const name = policyName();
  return {
    identifier: "@local:safeguard-" + name.toLowerCase(),
    name: "Safeguard: " + name,
    changed: true,
    operation: {
      fields: [
        { key: "llm.prediction.systemPrompt", value: policyText() },
        { key: "llm.prediction.temperature", value: 0 },
      ],
    },
    load: { fields: [] },
  };
}

function renderPreview() {
  $("export-preview").textContent = JSON.stringify(preset(), null, 2);
}

async function importPreset() {
  const file = $("import-preset").files[0];
  if (!file) return;
  let data;
  try {
    data = JSON.parse(await file.text());
  } catch (e) {
    throw new ApiError(file.name + " is not JSON: " + e.message);
  }
  const fields = (data.operation && data.operation.fields) || [];
  const prompt = fields.find((f) => f.key === "llm.prediction.systemPrompt");
  if (!prompt || typeof prompt.value !== "string") {
    throw new ApiError(file.name + " has no system prompt (operation.fields: llm.prediction.systemPrompt); is it an LM Studio preset?");
  }
  $("policy-text").value = prompt.value;
  const name = String(data.name || file.name).replace(/^Safeguard:\s*/, "").replace(/\.preset\.json$|\.json$/, "");
  $("policy-name").value = name.replace(/[^A-Za-z0-9_-]+/g, "-").replace(/^[-_]+/, "").slice(0, 64) || "imported";
  $("import-preset").value = "";
  renderPreview();
  scheduleLint(0);
  say("imported the preset " + file.name + " into the editor");
}

// ---- start ----

function setup() {
  setupTabs();
  $("key-open").addEventListener("click", () => { $("key-panel").hidden = !$("key-panel").hidden; if (!$("key-panel").hidden) $("api-key").focus(); });
  $("key-form").addEventListener("submit", guard(async (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value);
    $("api-key").value = "";
    $("key-panel").hidden = true;
    await start();
  }));
  $("policy-pick").addEventListener("change", guard((e) => openPolicy(e.target.value)));
  $("policy-new").addEventListener("click", () => {
    $("policy-text").value = policy.template;
    showVersions(null, []);
    scheduleLint(0);
    say("a new policy from the template: fill in the <...> parts");
  });
  $("policy-save").addEventListener("click", guard(savePolicy));
  $("policy-delete").addEventListener("click", guard(deletePolicy));
  $("policy-text").addEventListener("input", () => scheduleLint());
  for (const radio of document.querySelectorAll('input[name="try-mode"]')) {
    radio.addEventListener("change", () => {
      const conv = tryMode() === "conversation";
      $("try-text-box").hidden = conv;
      $("try-conv-box").hidden = !conv;
      $("try-many").disabled = conv;
      if (conv && !$("conv").children.length) addMessage();
    });
  }
  $("conv-add").addEventListener("click", () => addMessage().focus());
  $("try-run").addEventListener("click", guard(runTry));
  $("eval-file").addEventListener("change", guard(readSetFile));
  $("eval-run").addEventListener("click", guard(runEval));
  $("eval-cancel").addEventListener("click", guard(cancelEval));
  for (const cell of ["tp", "fp", "fn", "tn", "none"]) $("cell-" + cell).addEventListener("click", () => listCell(cell));
  $("eval-threshold").addEventListener("input", (e) => setThreshold(Number(e.target.value)));
  setupStripDrag();
  $("eval-json").addEventListener("click", () => download(evaluation.id + ".json", "application/json", JSON.stringify(evaluation.result, null, 2)));
  $("eval-html").addEventListener("click", guard(downloadReport));
  $("export-md").addEventListener("click", () => download(policyName() + ".md", "text/markdown", policyText()));
  $("export-preset").addEventListener("click", () => download(policyName() + ".preset.json", "application/json", JSON.stringify(preset(), null, 2) + "\n"));
  $("import-preset").addEventListener("change", guard(importPreset));
  guard(start)();
}

async function start() {
  const models = await json("GET", "/v1/models");
  $("model-name").textContent = models.data.map((m) => m.id).join(", ");
  const last = localStorage.getItem("safeguard-last-policy");
  await loadList(last || "");
  showVersions(null, []);
  if (last && !policyText()) await openPolicy(last).catch(() => localStorage.removeItem("safeguard-last-policy"));
  if (!policyText()) {
    $("policy-text").value = policy.template;
    scheduleLint(0);
  }
  say("ready");
}

document.addEventListener("DOMContentLoaded", setup);
