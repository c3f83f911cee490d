// Slipway console: a small single-page app over /api/v1. No framework and
// no build step: plain DOM, hash routes, one view function per page.
// Untrusted text (log lines, tags, messages) only ever goes in as text
// nodes, never as HTML.

const API = "/api/v1";
const TOKEN_KEY = "slipway.token";
const THEME_KEY = "slipway.theme";
const ROW = 18; // px per log row, as in app.css
const main = document.getElementById("main");
let stopView = () => {}; // ends the current page's polling

// ---------- DOM helpers ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function show(...nodes) {
  main.replaceChildren(...nodes);
}

function badge(state) {
  return h("span", { class: `badge state-${state}` }, state.replace("_", " "));
}

function when(ms) {
  if (!ms) return "";
  return new Date(ms).toLocaleString();
}

function duration(from, to) {
  if (!from) return "";
  const s = Math.max(0, Math.round(((to || Date.now()) - from) / 1000));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
}

function size(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function shortDigest(d) {
  if (!d) return "";
  const at = d.indexOf("sha256:");
  return at >= 0 ? d.slice(0, at) + d.slice(at, at + 19) : d;
}

function table(head, rows, empty) {
  if (!rows.length) return h("p", { class: "muted" }, empty);
  return h("div", { class: "table-wrap" },
    h("table", {},
      h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows)));
}

// ---------- API ----------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

async function api(path, opts = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(API + path, {
    method: opts.method || "GET",
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    signal: opts.signal,
  });
  if (r.status === 204) return null;
  let body = null;
  try { body = await r.json(); } catch { body = null; }
  if (!r.ok) {
    const msg = (body && body.message) || `HTTP ${r.status}`;
    if (r.status === 401 && !opts.signingIn) {
      signOut("The token stopped working here; sign in again.");
    }
    throw new ApiError(r.status, msg);
  }
  return body;
}

// ---------- sign in / out, theme ----------

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  location.hash = "#/signin";
  renderSignIn(message);
}

function renderSignIn(message) {
  stopView();
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  const input = h("input", {
    id: "token", type: "password", name: "token", autocomplete: "off",
    required: true, "aria-describedby": "token-help",
  });
  const err = h("p", { id: "signin-error", class: "error", role: "alert" }, message || "");
  const form = h("form", {
    onsubmit: async (e) => {
      e.preventDefault();
      const t = input.value.trim();
      if (!t) return;
      sessionStorage.setItem(TOKEN_KEY, t);
      try {
        await api("/runs?limit=1", { signingIn: true });
        location.hash = "#/pools";
        route();
      } catch (x) {
        sessionStorage.removeItem(TOKEN_KEY);
        err.textContent = x.status === 401
          ? "That token is not valid on this server. Use an API token (slipway token create, or DATA/admin-token)."
          : `Signing in failed: ${x.message}`;
        input.focus();
      }
    },
  },
  h("label", { for: "token" }, "API token"),
  input,
  h("p", { id: "token-help", class: "muted" },
    "Kept in this tab's session storage only. The console sees what the token's scopes allow."),
  h("button", { type: "submit", class: "primary" }, "Sign in"),
  err);
  show(h("section", { class: "signin" }, h("h1", {}, "Sign in to Slipway"), form));
  input.focus();
}

function applyTheme() {
  const t = localStorage.getItem(THEME_KEY) || "auto";
  if (t === "auto") document.documentElement.removeAttribute("data-theme");
  else document.documentElement.setAttribute("data-theme", t);
  document.getElementById("theme").textContent = `Theme: ${t}`;
}

document.getElementById("theme").addEventListener("click", () => {
  const order = ["auto", "light", "dark"];
  const now = localStorage.getItem(THEME_KEY) || "auto";
  localStorage.setItem(THEME_KEY, order[(order.indexOf(now) + 1) % order.length]);
  applyTheme();
});
document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));

// ---------- pages ----------

function notFound(what) {
  show(h("section", {},
    h("h1", {}, "Not found"),
    h("p", { class: "notice error", role: "alert" }, what),
    h("p", {}, h("a", { href: "#/runs" }, "All runs"))));
}

function failed(x) {
  if (x.status === 404) return notFound(x.message);
  show(h("section", {},
    h("h1", {}, x.status === 403 ? "Not allowed" : "Something went wrong"),
    h("p", { class: "notice error", role: "alert" }, x.message)));
}

// Re-run `load` every `ms` until the page changes.
function every(ms, load) {
  let alive = true;
  let timer = null;
  const tick = async () => {
    if (!alive) return;
    try { await load(); } catch (x) { if (alive) failed(x); return; }
    if (alive) timer = setTimeout(tick, ms);
  };
  stopView = () => { alive = false; clearTimeout(timer); };
  tick();
}

async function pools() {
  const list = await api("/pools");
  const details = await Promise.all(list.map((p) => api(`/pools/${encodeURIComponent(p.name)}`)));
  const cards = details.map(({ pool, agents }) => h("article", { class: "card", "aria-label": `pool ${pool.name}` },
    h("h2", {}, pool.name),
    h("dl", { class: "facts" },
      h("dt", {}, "Tier"), h("dd", {}, pool.tier),
      h("dt", {}, "Agents wanted"), h("dd", {}, pool.count),
      h("dt", {}, "Queued"), h("dd", {}, h("a", { href: `#/runs?pool=${encodeURIComponent(pool.name)}&state=queued` }, pool.queued)),
      h("dt", {}, "Running"), h("dd", {}, h("a", { href: `#/runs?pool=${encodeURIComponent(pool.name)}&state=running` }, pool.running))),
    table(["Agent", "Status", "Last heartbeat", "Run"],
      agents.map((a) => h("tr", {},
        h("td", { class: "mono" }, a.id),
        h("td", {}, badge(a.status)),
        h("td", {}, when(a.last_heartbeat)),
        h("td", {}, a.current_run ? h("a", { href: `#/runs/${a.current_run}` }, a.current_run) : ""))),
      "No agent has checked in.")));
  show(h("section", {}, h("h1", {}, "Pools"),
    cards.length ? h("div", { class: "cards" }, cards) : h("p", { class: "muted" }, "No pool this token may build on.")));
}

function runsPage(params) {
  const q = new URLSearchParams(params);
  const poolSel = h("select", { id: "f-pool", name: "pool" }, h("option", { value: "" }, "all"));
  const stateSel = h("select", { id: "f-state", name: "state" },
    ["", "queued", "running", "succeeded", "failed", "canceled", "timed-out", "error"]
      .map((s) => h("option", { value: s }, s || "all")));
  const text = h("input", { id: "f-text", name: "q", type: "search", placeholder: "id, tag, message, who" });
  stateSel.value = q.get("state") || "";
  text.value = q.get("q") || "";
  const form = h("form", {
    class: "filters", role: "search",
    onsubmit: (e) => {
      e.preventDefault();
      const p = new URLSearchParams();
      if (poolSel.value) p.set("pool", poolSel.value);
      if (stateSel.value) p.set("state", stateSel.value);
      if (text.value.trim()) p.set("q", text.value.trim());
      location.hash = `#/runs?${p}`;
    },
  },
  h("label", {}, "Pool", poolSel),
  h("label", {}, "State", stateSel),
  h("label", {}, "Text", text),
  h("button", { type: "submit" }, "Filter"));
  const body = h("div", {}, h("p", { class: "muted" }, "Loading…"));
  show(h("section", {}, h("h1", {}, "Runs"), form, body));
  api("/pools").then((ps) => {
    for (const p of ps) poolSel.append(h("option", { value: p.name }, p.name));
    poolSel.value = q.get("pool") || "";
  }).catch(() => {});
  const query = new URLSearchParams();
  for (const k of ["pool", "state", "q"]) if (q.get(k)) query.set(k, q.get(k));
  query.set("limit", "200");
  every(4000, async () => {
    const runs = await api(`/runs?${query}`);
    body.replaceChildren(table(["Run", "Pool", "State", "Image", "Started by", "Created", "Duration"],
      runs.map((r) => h("tr", {},
        h("td", {}, h("a", { href: `#/runs/${r.id}` }, r.id)),
        h("td", {}, r.pool),
        h("td", {}, badge(r.state)),
        h("td", { class: "mono" }, (r.build.tags || []).join(" "), r.image_digest ? h("div", { class: "muted", title: r.image_digest }, shortDigest(r.image_digest)) : ""),
        h("td", {}, r.submitted_by || ""),
        h("td", {}, when(r.created_at)),
        h("td", {}, duration(r.started_at, r.finished_at)))),
      "No run matches."));
  });
}

// ANSI SGR colours → spans; every other escape is dropped.
function ansiLine(text) {
  const out = [];
  const re = /\x1b\[([0-9;]*)m/g;
  let last = 0, fg = null, bold = false, m;
  const push = (s) => {
    if (!s) return;
    s = s.replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
    if (!fg && !bold) { out.push(s); return; }
    out.push(h("span", { class: [fg ? `ansi-${fg}` : "", bold ? "ansi-b" : ""].join(" ").trim() }, s));
  };
  while ((m = re.exec(text))) {
    push(text.slice(last, m.index));
    last = re.lastIndex;
    for (const code of (m[1] || "0").split(";").map(Number)) {
      if (code === 0) { fg = null; bold = false; }
      else if (code === 1) bold = true;
      else if (code === 22) bold = false;
      else if (code === 39) fg = null;
      else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) fg = code;
    }
  }
  push(text.slice(last));
  return out;
}

// A log that renders only the rows in view, so 100,000 lines stay fast.
class LogView {
  constructor() {
    this.lines = [];
    this.partial = "";
    this.rows = h("div", { class: "log-rows" });
    this.spacer = h("div", { class: "log-spacer" }, this.rows);
    this.el = h("div", {
      class: "log", tabindex: "0", role: "log", "aria-label": "Build log", "aria-live": "off",
      onscroll: () => this.render(),
    }, this.spacer);
    this.follow = true;
  }
  append(data) {
    const atBottom = this.el.scrollTop + this.el.clientHeight >= this.el.scrollHeight - ROW * 2;
    const parts = (this.partial + data).split("\n");
    this.partial = parts.pop();
    for (const p of parts) this.lines.push(p.replace(/\r$/, ""));
    this.spacer.style.height = `${(this.lines.length + (this.partial ? 1 : 0)) * ROW}px`;
    if (this.follow && atBottom) this.el.scrollTop = this.el.scrollHeight;
    this.render();
  }
  all() {
    return this.partial ? [...this.lines, this.partial] : this.lines;
  }
  render() {
    const lines = this.all();
    const first = Math.max(0, Math.floor(this.el.scrollTop / ROW) - 20);
    const last = Math.min(lines.length, first + Math.ceil((this.el.clientHeight || 600) / ROW) + 40);
    if (first === this.first && last === this.last && lines.length === this.count) return;
    this.first = first; this.last = last; this.count = lines.length;
    this.rows.style.top = `${first * ROW}px`;
    const frag = [];
    for (let i = first; i < last; i++) {
      frag.push(h("div", { class: "log-row", "data-line": i + 1 },
        h("span", { class: "n" }, i + 1), ansiLine(lines[i])));
    }
    this.rows.replaceChildren(...frag);
  }
  text() {
    return this.all().join("\n") + "\n";
  }
}

// Steps as the log shows them while the run is going (the run record has
// them once it ends).
function stepsFromLog(lines) {
  const steps = [];
  for (const l of lines) {
    const m = /^(?:\x1b\[1m)?#### \[(\d+\/\d+)\] (.*?)(?:\x1b\[0m)?$/.exec(l);
    if (!m) continue;
    const [, id, what] = m;
    const s = steps.findLast((x) => x.id === id);
    if (what === "CACHED" && s) s.state = "cached";
    else if (what.startsWith("DONE ") && s) { s.state = "succeeded"; s.took = what.slice(5); }
    else {
      for (const x of steps) if (x.state === "running") x.state = "succeeded";
      steps.push({ id, message: what, state: "running" });
    }
  }
  return steps;
}

function stepsTable(run, log) {
  const recorded = run.steps && run.steps.length ? run.steps : null;
  const steps = recorded || stepsFromLog(log.all());
  return table(["Step", "What", "State", "Time"],
    steps.map((s) => h("tr", {},
      h("td", { class: "mono" }, s.id),
      h("td", { class: "mono" }, s.message || s.kind || ""),
      h("td", {}, badge(s.state)),
      h("td", {}, s.took || (s.started_at ? duration(s.started_at, s.finished_at) : "")))),
    "No steps yet.");
}

async function runPage(id) {
  const run = await api(`/runs/${encodeURIComponent(id)}`);
  const log = new LogView();
  const facts = h("dl", { class: "facts" });
  const stepsBox = h("div", {});
  const status = h("span", { class: "muted", role: "status" });
  const cancel = h("button", {
    type: "button", class: "danger", id: "cancel",
    onclick: async () => {
      if (!confirm(`Cancel run ${id}?`)) return;
      cancel.disabled = true;
      try { await api(`/runs/${encodeURIComponent(id)}/cancel`, { method: "POST" }); }
      catch (x) { status.textContent = `Cancel failed: ${x.message}`; cancel.disabled = false; }
    },
  }, "Cancel run");
  const download = h("button", {
    type: "button",
    onclick: () => {
      const url = URL.createObjectURL(new Blob([log.text()], { type: "text/plain" }));
      const a = h("a", { href: url, download: `${id}.log` });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    },
  }, "Download log");
  const heading = h("h1", {}, `Run ${id} `, badge(run.state));
  show(h("section", {}, heading, facts, h("div", { class: "actions" }, cancel, download),
    h("h2", {}, "Steps"), stepsBox,
    h("div", { class: "log-head" }, h("h2", {}, "Log"), status), log.el));

  let current = run;
  const paint = (r) => {
    current = r;
    heading.replaceChildren(`Run ${id} `, badge(r.state));
    const rows = [
      ["Pool", h("a", { href: `#/runs?pool=${encodeURIComponent(r.pool)}` }, r.pool)],
      ["Tags", h("span", { class: "mono" }, (r.build.tags || []).join(" ") || "(none)")],
      ["Image", r.image_digest ? h("span", { class: "mono" }, r.image_digest) : ""],
      ["Started by", r.submitted_by || ""],
      ["Created", when(r.created_at)],
      ["Duration", duration(r.started_at, r.finished_at)],
      ["Exit code", r.exit_code ?? ""],
      ["Message", r.message || ""],
    ];
    if (r.revision) rows.push(["Revision", h("span", { class: "mono" }, `${r.revision.commit}${r.revision.branch ? ` (${r.revision.branch})` : ""}`)]);
    facts.replaceChildren(...rows
      .filter(([, v]) => v !== "" && v !== null && v !== undefined)
      .flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    cancel.hidden = ["succeeded", "failed", "canceled", "timed-out", "error"].includes(r.state);
    stepsBox.replaceChildren(stepsTable(r, log));
  };
  paint(run);

  // Follow the log from the last position read: after a dropped
  // connection it resumes there, so no line is lost or shown twice.
  let alive = true;
  const ctl = new AbortController();
  stopView = () => { alive = false; ctl.abort(); };
  let pos = 0, backoff = 500;
  while (alive) {
    let page;
    try {
      page = await api(`/runs/${encodeURIComponent(id)}/logs?after=${pos}&wait=20`, { signal: ctl.signal });
      backoff = 500;
      status.textContent = "";
    } catch (x) {
      if (!alive) return;
      if (x.status === 404) return notFound(x.message);
      status.textContent = `Connection lost (${x.message}); reconnecting…`;
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 8000);
      continue;
    }
    if (page.chunks.length) log.append(page.chunks.map((c) => c.data).join(""));
    pos = page.next;
    if (page.state !== current.state || page.done || !current.steps?.length) {
      try { paint(await api(`/runs/${encodeURIComponent(id)}`)); } catch { /* the log goes on */ }
    }
    if (page.done) {
      status.textContent = "End of log.";
      return;
    }
  }
}

async function tasksPage() {
  const list = await api("/tasks");
  show(h("section", {}, h("h1", {}, "Tasks"),
    table(["Task", "Pool", "Status", "Context", "Updated"],
      list.map((t) => h("tr", {},
        h("td", {}, h("a", { href: `#/tasks/${encodeURIComponent(t.name)}` }, t.name)),
        h("td", {}, t.pool),
        h("td", {}, badge(t.status === "Enabled" ? "enabled" : "disabled")),
        h("td", { class: "mono" }, t.context || ""),
        h("td", {}, when(t.updated_at)))),
      "No task (slipway task create NAME -f acb.yaml).")));
}

async function taskPage(name) {
  const t = await api(`/tasks/${encodeURIComponent(name)}`);
  const runs = h("div", {});
  show(h("section", {}, h("h1", {}, `Task ${t.name} `, badge(t.status === "Enabled" ? "enabled" : "disabled")),
    h("dl", { class: "facts" },
      h("dt", {}, "Pool"), h("dd", {}, t.pool),
      h("dt", {}, "Context"), h("dd", { class: "mono" }, t.context || "(given at run)"),
      h("dt", {}, "Timeout"), h("dd", {}, t.timeout_secs ? `${t.timeout_secs}s` : "the server's")),
    h("p", { class: "muted" }, "Run it with ", h("code", {}, `slipway task run ${t.name}`)),
    h("h2", {}, "Runs"), runs,
    h("h2", {}, `Task file (${t.task.origin || "acb.yaml"})`),
    h("pre", { class: "log mono", tabindex: "0" }, t.task.file)));
  every(5000, async () => {
    const list = await api(`/tasks/${encodeURIComponent(name)}/runs?limit=50`);
    runs.replaceChildren(table(["Run", "State", "Created", "Duration"],
      list.map((r) => h("tr", {},
        h("td", {}, h("a", { href: `#/runs/${r.id}` }, r.id)),
        h("td", {}, badge(r.state)),
        h("td", {}, when(r.created_at)),
        h("td", {}, duration(r.started_at, r.finished_at)))),
      "No runs yet."));
  });
}

async function repositories() {
  const repos = await api("/repositories");
  show(h("section", {}, h("h1", {}, "Repositories"),
    table(["Repository", "Tags"], repos.map((r) => h("tr", {},
      h("td", {}, h("a", { href: `#/repositories/${r.name}` }, r.name)),
      h("td", { class: "num" }, r.tags))),
    "No repository this token may pull from.")));
}

function pullBox(ref) {
  const input = h("input", { value: `docker pull ${ref}`, readonly: true, "aria-label": `pull command for ${ref}`, class: "mono" });
  const copy = h("button", {
    type: "button",
    onclick: async () => {
      input.select();
      try { await navigator.clipboard.writeText(input.value); copy.textContent = "Copied"; }
      catch { document.execCommand && document.execCommand("copy"); copy.textContent = "Selected"; }
      setTimeout(() => { copy.textContent = "Copy"; }, 1500);
    },
  }, "Copy");
  return h("div", { class: "pull" }, input, copy);
}

async function repository(name) {
  const tags = await api(`/repositories/${name}`);
  show(h("section", {}, h("h1", {}, name),
    table(["Tag", "Digest", "Size", "Created", "Platforms", "Pull"],
      tags.map((t) => h("tr", {},
        h("td", { class: "mono" }, t.tag),
        h("td", { class: "mono", title: t.digest }, shortDigest(t.digest)),
        h("td", { class: "num" }, size(t.size)),
        h("td", {}, t.created ? new Date(t.created).toLocaleString() : ""),
        h("td", {}, (t.platforms || []).join(", ")),
        h("td", {}, pullBox(`${location.host}/${name}:${t.tag}`)))),
      "No tags.")));
}

async function tokens() {
  let list;
  try { list = await api("/tokens"); }
  catch (x) {
    if (x.status === 403) {
      return show(h("section", {}, h("h1", {}, "Tokens"),
        h("p", { class: "notice" }, "Only an admin token manages tokens.")));
    }
    throw x;
  }
  const name = h("input", { id: "t-name", required: true, maxlength: 100 });
  const admin = h("input", { id: "t-admin", type: "checkbox" });
  const grants = h("textarea", { id: "t-grants", rows: 3, placeholder: "pool:ci:build\nrepository:team/*:pull,push" });
  const result = h("div", { role: "status" });
  const form = h("form", {
    class: "card",
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        const t = await api("/tokens", {
          method: "POST",
          body: { name: name.value.trim(), admin: admin.checked, grants: grants.value.split(/\s+/).filter(Boolean) },
        });
        result.replaceChildren(h("p", { class: "notice" }, "Token created; it is shown only now: ",
          h("code", {}, t.token)));
        tokens().then(() => main.querySelector(".card").after(result)).catch(failed);
      } catch (x) {
        result.replaceChildren(h("p", { class: "notice error", role: "alert" }, x.message));
      }
    },
  },
  h("h2", {}, "New token"),
  h("p", {}, h("label", { for: "t-name" }, "Name "), name),
  h("p", {}, h("label", {}, admin, " admin (everything)")),
  h("p", {}, h("label", { for: "t-grants" }, "Grants, one per line"), h("br"), grants),
  h("button", { type: "submit", class: "primary" }, "Create"),
  result);
  show(h("section", {}, h("h1", {}, "Tokens"), form, h("h2", {}, "Existing"),
    table(["Name", "Admin", "Grants", "Created", ""],
      list.map((t) => h("tr", {},
        h("td", {}, t.name),
        h("td", {}, t.admin ? "yes" : ""),
        h("td", { class: "mono" }, t.grants.join(" ")),
        h("td", {}, when(t.created * 1000)),
        h("td", {}, h("button", {
          type: "button", class: "danger", "aria-label": `delete token ${t.name}`,
          onclick: async () => {
            if (!confirm(`Delete token ${t.name}? Anything using it stops working.`)) return;
            try { await api(`/tokens/${t.id}`, { method: "DELETE" }); tokens().catch(failed); }
            catch (x) { alert(x.message); }
          },
        }, "Delete")))),
      "No tokens.")));
}

// ---------- router ----------

async function route() {
  stopView();
  stopView = () => {};
  if (!token()) return renderSignIn();
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
  const hash = location.hash.slice(1) || "/pools";
  const [path, query] = hash.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("nav a")) {
    a.toggleAttribute("aria-current", a.getAttribute("href").slice(2) === parts[0]);
    if (a.hasAttribute("aria-current")) a.setAttribute("aria-current", "page");
  }
  try {
    if (parts[0] === "signin") return renderSignIn();
    if (parts[0] === "pools" && parts.length === 1) return every(5000, pools);
    if (parts[0] === "runs" && parts.length === 1) return runsPage(query || "");
    if (parts[0] === "runs" && parts.length === 2) return await runPage(parts[1]);
    if (parts[0] === "tasks" && parts.length === 1) return await tasksPage();
    if (parts[0] === "tasks" && parts.length === 2) return await taskPage(parts[1]);
    if (parts[0] === "repositories" && parts.length === 1) return await repositories();
    if (parts[0] === "repositories") return await repository(parts.slice(1).join("/"));
    if (parts[0] === "tokens") return await tokens();
    notFound(`There is no page ${hash}.`);
  } catch (x) {
    failed(x);
  }
}

window.addEventListener("hashchange", () => { route(); main.focus({ preventScroll: true }); });
applyTheme();
route();
