// The Katar dashboard: sign-in, queues, a queue's tasks, a task, workers. Every datum comes
// from the HTTP API with the visitor's token; what the token may not do is not offered.
import { h, render } from "./preact.mjs";
import { useEffect, useRef, useState } from "./hooks.mjs";
import htm from "./htm.mjs";
import { ApiError, api, clearToken, getToken, queuePath, setToken } from "./api.mjs";
import { Chart, SERIES } from "./chart.mjs";

const html = htm.bind(h);

const STATUSES = ["failed", "queued", "in progress", "paused", "done", "cancelled"];
const POLL_MS = 2000;
const PAGE = 50;
const CHART_SECONDS = 600;
const numbers = new Intl.NumberFormat();

// -- small helpers ---------------------------------------------------------------------------

function count(n) {
  return numbers.format(n || 0);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60 ? `${s % 60} s` : ""}`.trim();
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function ago(iso) {
  if (!iso) return "–";
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  return seconds >= 0 ? `${duration(seconds)} ago` : `in ${duration(-seconds)}`;
}

function Time({ iso }) {
  if (!iso) return html`<span class="muted">–</span>`;
  return html`<time datetime=${iso} title=${iso}>${ago(iso)}</time>`;
}

function json(value) {
  return value === undefined ? "" : JSON.stringify(value, null, 2);
}

function Status({ status }) {
  return html`<span class="status s-${status.replace(" ", "-")}">${status}</span>`;
}

// A task's record keeps the error of its last failed attempt and the worker that last held
// it. Once it is queued again (retried, or waiting for its next attempt) they belong to an
// earlier attempt, and are shown as such rather than as the task's present state.
const earlierError = (task) => task.error && !["failed", "cancelled"].includes(task.status);
const earlierWorker = (task) => task.worker && ["queued", "paused"].includes(task.status);

function Earlier({ when, children }) {
  return when ? html`<span class="muted">earlier attempt: </span>${children}` : children;
}

function Problem({ error }) {
  if (!error) return null;
  return html`<p class="problem" role="alert">${error.message || String(error)}</p>`;
}

/** Run `load` now and every POLL_MS while the tab is visible; again at once when it shows. */
function usePoll(load, deps) {
  const [state, setState] = useState({ data: null, error: null, key: null });
  const [round, setRound] = useState(0);
  const key = JSON.stringify(deps);
  useEffect(() => {
    let alive = true;
    let timer = 0;
    let busy = false;
    async function run() {
      clearTimeout(timer);
      if (!alive || busy || document.hidden) return; // resumed by visibilitychange
      busy = true;
      try {
        const data = await load();
        if (alive) setState({ data, error: null, key });
      } catch (error) {
        if (alive) setState((s) => ({ data: s.key === key ? s.data : null, error, key }));
      } finally {
        busy = false;
      }
      if (alive) timer = setTimeout(run, POLL_MS);
    }
    const shown = () => !document.hidden && run();
    document.addEventListener("visibilitychange", shown);
    run();
    return () => {
      alive = false;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", shown);
    };
  }, [key, round]);
  const data = state.key === key ? state.data : null;
  return [data, state.error, () => setRound((r) => r + 1)];
}

// -- routing (in the URL's fragment: the server serves one page) ---------------------------

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(query) };
}

export function link(parts, query) {
  const q = query ? new URLSearchParams(Object.entries(query).filter(([, v]) => v)).toString() : "";
  return `#/${parts.map(encodeURIComponent).join("/")}${q ? `?${q}` : ""}`;
}

function useRoute() {
  const [route, setRoute] = useState(parseHash);
  useEffect(() => {
    const changed = () => setRoute(parseHash());
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}

// -- dialogs -------------------------------------------------------------------------------

/** A modal <dialog>: focus stays in it, Escape closes it. */
function Dialog({ title, onClose, children }) {
  const ref = useRef(null);
  useEffect(() => {
    const dialog = ref.current;
    if (!dialog.open) dialog.showModal();
    const closed = () => onClose();
    dialog.addEventListener("close", closed);
    return () => dialog.removeEventListener("close", closed);
  }, []);
  return html`
    <dialog ref=${ref} aria-labelledby="dialog-title">
      <h2 id="dialog-title">${title}</h2>
      ${children}
    </dialog>
  `;
}

// -- sign-in -------------------------------------------------------------------------------

function SignIn({ notice, onToken }) {
  const [value, setValue] = useState("");
  const [busy, setBusy] = useState(false);
  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    await onToken(value.trim());
    setBusy(false);
  }
  return html`
    <main class="signin">
      <h1><img src="/ui/favicon.svg" alt="" width="28" height="28" /> Katar</h1>
      <form onSubmit=${submit}>
        <label for="token">Token</label>
        <p class="hint" id="token-hint">
          This server asks for a token. Paste one your operator gave you (made with <code>katar token</code>).
          It is kept in this tab only, until you sign out or close it.
        </p>
        <input
          id="token"
          name="token"
          type="password"
          autocomplete="off"
          spellcheck="false"
          required
          aria-describedby="token-hint"
          value=${value}
          onInput=${(e) => setValue(e.currentTarget.value)}
        />
        ${notice && html`<p class="problem" role="alert">${notice}</p>`}
        <button class="primary" type="submit" disabled=${busy || !value.trim()}>Sign in</button>
      </form>
    </main>
  `;
}

// -- throughput ----------------------------------------------------------------------------

/** Samples per queue: from GET /v1/throughput when the server has it, else from the changes
 * in the counts this page sees (an estimate: a queue that deletes finished tasks shows them
 * only while they exist). */
function useThroughput(queues) {
  const serverHasIt = useRef(true);
  const previous = useRef(null);
  const [series, setSeries] = useState({ samples: {}, estimated: false });
  useEffect(() => {
    if (!queues) return;
    let alive = true;
    (async () => {
      if (serverHasIt.current) {
        try {
          const answer = await api("GET", `/v1/throughput?seconds=${CHART_SECONDS}`);
          const samples = {};
          for (const sample of answer.samples || []) {
            const at = Date.parse(sample.at);
            for (const [name, rates] of Object.entries(sample.queues || {})) {
              (samples[name] ||= []).push({ at, ...rates });
            }
          }
          if (alive) setSeries({ samples, estimated: false });
          return;
        } catch (error) {
          if (!(error instanceof ApiError) || ![404, 405].includes(error.status)) return;
          serverHasIt.current = false;
        }
      }
      const now = Date.now();
      const before = previous.current;
      previous.current = { at: now, queues };
      if (!before || !alive) return;
      const seconds = (now - before.at) / 1000;
      const total = (q) => Object.values(q.counts).reduce((a, b) => a + b, 0);
      setSeries((old) => {
        const samples = {};
        for (const queue of queues) {
          const was = before.queues.find((q) => q.name === queue.name);
          if (!was) continue;
          const gain = (n) => Math.max(0, n) / seconds;
          const sample = {
            at: now,
            enqueued: gain(total(queue) - total(was)),
            done: gain((queue.counts.done || 0) - (was.counts.done || 0)),
            failed: gain((queue.counts.failed || 0) - (was.counts.failed || 0)),
          };
          const kept = (old.samples[queue.name] || []).filter((s) => s.at > now - CHART_SECONDS * 1000);
          samples[queue.name] = [...kept, sample];
        }
        return { samples, estimated: true };
      });
    })();
    return () => {
      alive = false;
    };
  }, [queues]);
  return series;
}

// -- overview ------------------------------------------------------------------------------

function Limits({ limits, options }) {
  if (!limits) return html`<span class="muted">none</span>`;
  const parts = [];
  if (limits.concurrency != null) parts.push(`${count(limits.in_progress)} of ${count(limits.concurrency)} running`);
  else parts.push(`${count(limits.in_progress)} running`);
  if (limits.tokens != null) parts.push(`rate: ${limits.tokens} deliveries available now`);
  if (limits.keys_at_limit) parts.push(`${count(limits.keys_at_limit)} keys at their limit`);
  const full = limits.concurrency != null && limits.in_progress >= limits.concurrency;
  return html`<span class=${full ? "warn" : ""}>${parts.join(" · ")}${full ? " (full)" : ""}</span>`;
}

function QueueCard({ queue, samples, canAct, onChanged }) {
  const paused = queue.options && queue.options.paused;
  return html`
    <article class="card queue" aria-labelledby="q-${queue.name}">
      <header>
        <h2 id="q-${queue.name}"><a href=${link(["queue", queue.name])}>${queue.name}</a></h2>
        ${paused && html`<span class="badge paused">paused</span>`}
        ${canAct && html`<${PauseButton} queue=${queue.name} paused=${paused} onChanged=${onChanged} />`}
      </header>
      <ul class="counts" aria-label="Tasks of ${queue.name} by status">
        ${STATUSES.map(
          (status) => html`
            <li class=${status === "failed" && queue.counts.failed ? "has-failed" : ""}>
              <a href=${link(["queue", queue.name], { status })}>
                <span class="n" data-status=${status}>${count(queue.counts[status])}</span>
                <span class="label">${status}</span>
              </a>
            </li>
          `,
        )}
      </ul>
      <dl class="facts">
        <div><dt>Oldest queued</dt><dd>${duration(queue.oldest_queued_age)}</dd></div>
        <div><dt>Limits</dt><dd><${Limits} limits=${queue.limits} /></dd></div>
      </dl>
      <${Chart} label=${queue.name} samples=${samples || []} span=${CHART_SECONDS} />
    </article>
  `;
}

function PauseButton({ queue, paused, onChanged }) {
  const [error, setError] = useState(null);
  async function toggle() {
    try {
      await api("PATCH", queuePath(queue), { paused: !paused });
      setError(null);
      onChanged();
    } catch (e) {
      setError(e);
    }
  }
  return html`
    <button type="button" onClick=${toggle} aria-label="${paused ? "Resume" : "Pause"} queue ${queue}">
      ${paused ? "Resume" : "Pause"}
    </button>
    <${Problem} error=${error} />
  `;
}

function Overview({ who }) {
  const [data, error, refresh] = usePoll(() => api("GET", "/v1/queues"), ["queues"]);
  const queues = data ? data.queues : null;
  const { samples, estimated } = useThroughput(queues);
  useEffect(() => {
    document.title = "Queues · Katar";
  }, []);
  return html`
    <section class="page">
      <h1>Queues</h1>
      <${Problem} error=${error} />
      ${queues === null && !error && html`<p class="muted" aria-busy="true">Loading…</p>`}
      ${queues && queues.length === 0 && html`<p class="muted">No queues yet. A queue appears once it is declared or a task is enqueued.</p>`}
      ${estimated &&
      queues &&
      queues.length > 0 &&
      html`<p class="hint">Rates per second are estimated from the counts this page has seen since it opened.</p>`}
      <div class="cards">
        ${(queues || []).map(
          (queue) => html`<${QueueCard}
            key=${queue.name}
            queue=${queue}
            samples=${samples[queue.name]}
            canAct=${who.role === "admin"}
            onChanged=${refresh}
          />`,
        )}
      </div>
    </section>
  `;
}

// -- a queue's tasks -----------------------------------------------------------------------

const FILTERS = ["key", "worker", "error", "from", "to"];

function bulkFilter(status, query, ids) {
  const filter = {};
  if (ids) filter.ids = ids;
  if (status) filter.status = [status];
  for (const name of ["key", "worker", "error"]) if (query.get(name)) filter[name] = query.get(name);
  if (query.get("from")) filter.after = new Date(query.get("from")).toISOString();
  if (query.get("to")) filter.before = new Date(query.get("to")).toISOString();
  return filter;
}

// `statuses`: the tabs that offer the action, those of the tasks it applies to (a bulk action
// skips the others, so "Retry all" on the queued tab could only ever say "0 tasks").
const ACTIONS = {
  retry: { verb: "Retry", done: "retried", when: "failed or cancelled", statuses: ["failed", "cancelled"] },
  cancel: { verb: "Cancel", done: "cancelled", when: "paused or queued", statuses: ["paused", "queued"] },
  delete: {
    verb: "Delete",
    done: "deleted",
    when: "not in progress",
    statuses: STATUSES.filter((s) => s !== "in progress"),
  },
};

/** Asks the server how many tasks a bulk action would change (dry run), says so, then acts. */
function BulkDialog({ queue, action, filter, what, onClose, onDone }) {
  const [preview, setPreview] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const spec = ACTIONS[action];
  useEffect(() => {
    api("POST", queuePath(queue, "/tasks/bulk"), { action, filter, dry_run: true })
      .then(setPreview)
      .catch(setError);
  }, []);
  async function confirm() {
    setBusy(true);
    try {
      const answer = await api("POST", queuePath(queue, "/tasks/bulk"), { action, filter });
      onDone(`${count(answer.changed)} of ${count(answer.matched)} matching tasks ${spec.done}.`);
      onClose();
    } catch (e) {
      setError(e);
      setBusy(false);
    }
  }
  return html`
    <${Dialog} title="${spec.verb} ${what}" onClose=${onClose}>
      ${!preview && !error && html`<p aria-busy="true">Counting the tasks…</p>`}
      ${preview &&
      html`<p class="confirm-count">
        ${count(preview.matched)} tasks match; ${count(preview.changed)} will be ${spec.done}
        ${preview.changed < preview.matched ? html` (only those ${spec.when})` : ""}.
      </p>`}
      <${Problem} error=${error} />
      <div class="buttons">
        <button type="button" onClick=${onClose}>Keep them</button>
        <button
          type="button"
          class=${action === "delete" ? "danger" : "primary"}
          disabled=${busy || !preview || preview.changed === 0}
          onClick=${confirm}
        >
          ${spec.verb} ${preview ? count(preview.changed) : ""} tasks
        </button>
      </div>
    <//>
  `;
}

function EnqueueDialog({ queue, onClose, onDone }) {
  const [text, setText] = useState('{\n  "data": {}\n}');
  const [error, setError] = useState(null);
  async function submit(event) {
    event.preventDefault();
    try {
      JSON.parse(text);
    } catch (e) {
      setError(new Error(`That is not valid JSON: ${e.message}`));
      return;
    }
    try {
      const answer = await api("POST", queuePath(queue, "/tasks"), text);
      const ids = answer.tasks.map((t) => t._id).join(", ");
      onDone(`Enqueued task ${ids}.`);
      onClose();
    } catch (e) {
      setError(e);
    }
  }
  return html`
    <${Dialog} title="Enqueue a task on ${queue}" onClose=${onClose}>
      <form onSubmit=${submit}>
        <label for="enqueue-body">Task as JSON</label>
        <p class="hint" id="enqueue-hint">
          <code>{"data": ...}</code> with optional <code>priority</code>, <code>delay</code>,
          <code>key</code>…, or <code>{"tasks": [...]}</code> for many.
        </p>
        <textarea
          id="enqueue-body"
          rows="8"
          spellcheck="false"
          aria-describedby="enqueue-hint"
          value=${text}
          onInput=${(e) => setText(e.currentTarget.value)}
        ></textarea>
        <${Problem} error=${error} />
        <div class="buttons">
          <button type="button" onClick=${onClose}>Close</button>
          <button type="submit" class="primary">Enqueue</button>
        </div>
      </form>
    <//>
  `;
}

function Filters({ queue, status, query }) {
  const [values, setValues] = useState(() => Object.fromEntries(FILTERS.map((f) => [f, query.get(f) || ""])));
  const set = (name) => (e) => setValues({ ...values, [name]: e.currentTarget.value });
  function apply(event) {
    event.preventDefault();
    location.hash = link(["queue", queue], { status, ...values });
  }
  function clear() {
    setValues(Object.fromEntries(FILTERS.map((f) => [f, ""])));
    location.hash = link(["queue", queue], { status });
  }
  const field = (name, label, type = "search") => html`
    <div class=${type === "datetime-local" ? "field when" : "field"}>
      <label for="f-${name}">${label}</label>
      <input id="f-${name}" type=${type} value=${values[name]} onInput=${set(name)} />
    </div>
  `;
  return html`
    <form class="filters" onSubmit=${apply} aria-label="Filter tasks">
      ${field("key", "Key")} ${field("worker", "Worker")} ${field("error", "Error contains")}
      ${field("from", "Created from", "datetime-local")} ${field("to", "Created before", "datetime-local")}
      <div class="buttons">
        <button type="submit" class="primary">Filter</button>
        <button type="button" onClick=${clear}>Clear</button>
      </div>
    </form>
  `;
}

function QueuePage({ who, name, query }) {
  const status = query.get("status") || "";
  const canAct = who.role === "admin";
  const [cursors, setCursors] = useState([null]); // the cursor of each page seen, for "Newer"
  const cursor = cursors[cursors.length - 1];
  const [selected, setSelected] = useState(new Set());
  const [dialog, setDialog] = useState(null);
  const [message, setMessage] = useState("");
  const listQuery = new URLSearchParams({ order: "desc", limit: String(PAGE) });
  if (status) listQuery.set("status", status);
  for (const f of ["key", "worker", "error"]) if (query.get(f)) listQuery.set(f, query.get(f));
  if (query.get("from")) listQuery.set("created_after", new Date(query.get("from")).toISOString());
  if (query.get("to")) listQuery.set("created_before", new Date(query.get("to")).toISOString());
  if (cursor) listQuery.set("after", cursor);
  const [page, error, refresh] = usePoll(() => api("GET", queuePath(name, `/tasks?${listQuery}`)), [
    "tasks",
    listQuery.toString(),
  ]);
  const [queues] = usePoll(() => api("GET", "/v1/queues"), ["queues"]);
  const info = queues && queues.queues.find((q) => q.name === name);
  const filtered = FILTERS.some((f) => query.get(f));
  useEffect(() => {
    document.title = `${name} · Katar`;
  }, [name]);
  useEffect(() => {
    setCursors([null]);
    setSelected(new Set());
  }, [query.toString()]);
  const tasks = page ? page.tasks : [];
  const toggle = (id) => {
    const next = new Set(selected);
    next.has(id) ? next.delete(id) : next.add(id);
    setSelected(next);
  };
  const allShown = tasks.length > 0 && tasks.every((t) => selected.has(t._id));
  const done = (text) => {
    setMessage(text);
    setSelected(new Set());
    refresh();
  };
  const scope = `${status ? `${status} ` : ""}task of ${name}${filtered ? " matching the filter" : ""}`;
  const bulk = (action, ids) =>
    setDialog({
      kind: "bulk",
      action,
      filter: bulkFilter(ids ? "" : status, ids ? new URLSearchParams() : query, ids),
      what: ids ? `${ids.length} selected tasks` : `every ${scope}`,
    });
  const paused = info && info.options && info.options.paused;
  const offered = Object.entries(ACTIONS).filter(([, spec]) => !status || spec.statuses.includes(status));
  return html`
    <section class="page">
      <nav class="crumbs" aria-label="Breadcrumb"><a href="#/">Queues</a> › <span>${name}</span></nav>
      <header class="title">
        <h1>${name}</h1>
        ${paused && html`<span class="badge paused">paused</span>`}
        ${info && html`<span class="muted">oldest queued: ${duration(info.oldest_queued_age)}</span>`}
        ${canAct &&
        html`<div class="buttons">
          <${PauseButton} queue=${name} paused=${paused} onChanged=${refresh} />
          <button type="button" onClick=${() => setDialog({ kind: "enqueue" })}>Enqueue…</button>
          <button
            type="button"
            class="danger"
            onClick=${() => setDialog({ kind: "bulk", action: "delete", filter: {}, what: `every task of ${name} (purge)` })}
          >
            Purge…
          </button>
        </div>`}
      </header>
      <nav class="tabs" aria-label="Status">
        ${["", ...STATUSES].map(
          (s) => html`<a
            href=${link(["queue", name], { ...Object.fromEntries(query), status: s })}
            aria-current=${s === status ? "page" : undefined}
            >${s || "all"}${info && s ? html` <span class="n">${count(info.counts[s])}</span>` : ""}</a
          >`,
        )}
      </nav>
      <${Filters} key=${query.toString()} queue=${name} status=${status} query=${query} />
      ${message && html`<p class="notice" role="status">${message}</p>`}
      <${Problem} error=${error} />
      ${canAct &&
      offered.length > 0 &&
      html`<div class="toolbar" role="group" aria-label="Actions">
        <span class="muted">${selected.size ? `${selected.size} selected:` : `Every ${scope}:`}</span>
        ${offered.map(
          ([action, spec]) => html`<button
            type="button"
            class=${action === "delete" ? "danger" : ""}
            onClick=${() => bulk(action, selected.size ? [...selected] : null)}
          >
            ${spec.verb} ${selected.size ? "selected" : "all"}…
          </button>`,
        )}
      </div>`}
      <div class="table-wrap">
        <table>
          <caption class="visually-hidden">Every ${scope}, newest first</caption>
          <thead>
            <tr>
              ${canAct &&
              html`<th scope="col">
                <input
                  type="checkbox"
                  aria-label="Select every task on this page"
                  checked=${allShown}
                  onChange=${() => setSelected(allShown ? new Set() : new Set(tasks.map((t) => t._id)))}
                />
              </th>`}
              <th scope="col">Task</th>
              <th scope="col">Status</th>
              <th scope="col">Attempts</th>
              <th scope="col">Key</th>
              <th scope="col">Worker</th>
              <th scope="col">Error</th>
              <th scope="col">Updated</th>
            </tr>
          </thead>
          <tbody>
            ${tasks.map(
              (task) => html`<tr key=${task._id}>
                ${canAct &&
                html`<td>
                  <input
                    type="checkbox"
                    aria-label="Select task ${task._id}"
                    checked=${selected.has(task._id)}
                    onChange=${() => toggle(task._id)}
                  />
                </td>`}
                <td><a href=${link(["task", name, task._id])}>#${task._id}</a></td>
                <td><${Status} status=${task.status} /></td>
                <td>${task.attempts}</td>
                <td>${task.key ?? html`<span class="muted">–</span>`}</td>
                <td>${task.worker ? html`<${Earlier} when=${earlierWorker(task)}>${task.worker}<//>` : html`<span class="muted">–</span>`}</td>
                <td class="error-text" title=${task.error || ""}><${Earlier} when=${earlierError(task)}>${task.error || ""}<//></td>
                <td><${Time} iso=${task.updated_at} /></td>
              </tr>`,
            )}
          </tbody>
        </table>
        ${page && tasks.length === 0 && html`<p class="muted empty">No tasks here.</p>`}
      </div>
      <nav class="pager" aria-label="Pages">
        <button type="button" disabled=${cursors.length < 2} onClick=${() => setCursors(cursors.slice(0, -1))}>
          ‹ Newer
        </button>
        <span class="muted">Page ${cursors.length}</span>
        <button
          type="button"
          disabled=${!page || !page.next}
          onClick=${() => setCursors([...cursors, page.next])}
        >
          Older ›
        </button>
      </nav>
      ${dialog &&
      dialog.kind === "bulk" &&
      html`<${BulkDialog}
        queue=${name}
        action=${dialog.action}
        filter=${dialog.filter}
        what=${dialog.what}
        onClose=${() => setDialog(null)}
        onDone=${done}
      />`}
      ${dialog &&
      dialog.kind === "enqueue" &&
      html`<${EnqueueDialog} queue=${name} onClose=${() => setDialog(null)} onDone=${done} />`}
    </section>
  `;
}

// -- a task --------------------------------------------------------------------------------

function Block({ label, value }) {
  if (value === null || value === undefined) return null;
  return html`<section class="block" aria-label=${label}><h2>${label}</h2><pre tabindex="0">${typeof value === "string" ? value : json(value)}</pre></section>`;
}

function Progress({ value }) {
  if (value === null || value === undefined) return html`<span class="muted">–</span>`;
  if (typeof value === "number") {
    const max = value <= 1 ? 1 : 100;
    return html`<progress value=${value} max=${max}></progress> ${max === 1 ? Math.round(value * 100) : value}%`;
  }
  return html`<code>${json(value)}</code>`;
}

const LINKED_PAGE = 20;

/** A task's children (the tasks that named it in their `after`) or its parents (those it
 * named, still there), of the queues the token may see, a page at a time; nothing when
 * there are none. */
function Linked({ queue, id, kind, title, children }) {
  const [cursors, setCursors] = useState([null]);
  const cursor = cursors[cursors.length - 1];
  const query = new URLSearchParams({ limit: String(LINKED_PAGE) });
  if (cursor) query.set("after", cursor);
  const path = queuePath(queue, `/tasks/${encodeURIComponent(id)}/${kind}?${query}`);
  const [page, error] = usePoll(() => api("GET", path), [kind, path]);
  if (error) return html`<${Problem} error=${error} />`;
  if (!page || (page.tasks.length === 0 && cursors.length === 1 && !children)) return null;
  return html`
    <section class="block" aria-label=${title}>
      <h2>${title}</h2>
      ${children}
      ${page.tasks.length > 0 &&
      html`<div class="table-wrap"><table>
        <thead><tr><th scope="col">Task</th><th scope="col">Queue</th><th scope="col">Status</th><th scope="col">Updated</th></tr></thead>
        <tbody>
          ${page.tasks.map(
            (t) => html`<tr key=${t._id}>
              <td><a href=${link(["task", t.queue, t._id])}>#${t._id}</a></td>
              <td><a href=${link(["queue", t.queue])}>${t.queue}</a></td>
              <td><${Status} status=${t.status} />${t.waiting_for.length > 0 ? html` <span class="muted">(waits for ${count(t.waiting_for.length)})</span>` : ""}</td>
              <td><${Time} iso=${t.updated_at} /></td>
            </tr>`,
          )}
        </tbody>
      </table></div>`}
      ${(cursors.length > 1 || page.next) &&
      html`<nav class="pager" aria-label=${`Pages of ${title.toLowerCase()}`}>
        <button type="button" disabled=${cursors.length < 2} onClick=${() => setCursors(cursors.slice(0, -1))}>‹ Previous</button>
        <span class="muted">Page ${cursors.length}</span>
        <button type="button" disabled=${!page.next} onClick=${() => setCursors([...cursors, page.next])}>Next ›</button>
      </nav>`}
    </section>
  `;
}

function TaskPage({ who, queue, id }) {
  const [task, error, refresh] = usePoll(() => api("GET", queuePath(queue, `/tasks/${encodeURIComponent(id)}`)), [
    "task",
    queue,
    id,
  ]);
  const [failure, setFailure] = useState(null);
  const [message, setMessage] = useState("");
  const [confirming, setConfirming] = useState(false);
  const canAct = who.role === "admin";
  useEffect(() => {
    document.title = `Task ${id} · ${queue} · Katar`;
  }, [queue, id]);
  async function act(label, method, body) {
    try {
      await api(method, queuePath(queue, `/tasks/${encodeURIComponent(id)}`), body);
      setFailure(null);
      if (method === "DELETE") {
        location.hash = link(["queue", queue]);
        return;
      }
      setMessage(label);
      refresh();
    } catch (e) {
      setFailure(e);
    }
  }
  const s = task && task.status;
  return html`
    <section class="page">
      <nav class="crumbs" aria-label="Breadcrumb">
        <a href="#/">Queues</a> › <a href=${link(["queue", queue])}>${queue}</a> › <span>#${id}</span>
      </nav>
      <header class="title">
        <h1>Task #${id}</h1>
        ${task && html`<${Status} status=${task.status} />`}
        ${task && task.cancel_requested && html`<span class="badge warn">cancel requested</span>`}
        ${canAct &&
        task &&
        html`<div class="buttons">
          <button type="button" disabled=${!["failed", "cancelled"].includes(s)} onClick=${() => act("Queued again.", "PATCH", { status: "queued" })}>
            Retry
          </button>
          <button
            type="button"
            disabled=${!["paused", "queued", "in progress"].includes(s) || task.cancel_requested}
            onClick=${() => act("Cancelled.", "PATCH", { status: "cancelled" })}
          >
            Cancel
          </button>
          <button type="button" class="danger" disabled=${s === "in progress"} onClick=${() => setConfirming(true)}>Delete…</button>
        </div>`}
      </header>
      ${message && html`<p class="notice" role="status">${message}</p>`}
      <${Problem} error=${failure || error} />
      ${task &&
      html`
        <dl class="facts grid">
          <div><dt>Priority</dt><dd>${task.priority}</dd></div>
          <div><dt>Attempts</dt><dd>${task.attempts}${task.max_attempts ? ` of ${task.max_attempts}` : ""}</dd></div>
          <div><dt>Key</dt><dd>${task.key ?? "–"}</dd></div>
          <div><dt>${earlierWorker(task) ? "Worker (earlier attempt)" : "Worker"}</dt><dd>${task.worker ?? "–"}</dd></div>
          <div><dt>Progress</dt><dd><${Progress} value=${task.progress} /></dd></div>
          <div><dt>Created</dt><dd><${Time} iso=${task.created_at} /></dd></div>
          <div><dt>Updated</dt><dd><${Time} iso=${task.updated_at} /></dd></div>
          <div><dt>Runs at</dt><dd><${Time} iso=${task.run_at} /></dd></div>
          <div><dt>Lease ends</dt><dd><${Time} iso=${task.lease_expires_at ?? task.lease_until} /></dd></div>
          ${task.schedule &&
          html`<div><dt>Schedule</dt><dd><a href="#/schedules">${task.schedule}</a>, tick <${Time} iso=${task.scheduled_for} /></dd></div>`}
        </dl>
        <${Block} label=${earlierError(task) ? "Error of an earlier attempt" : "Error"} value=${task.error} />
        <${Block} label="Data" value=${task.data} />
        <${Block} label="Result" value=${task.result} />
        ${task.after !== null &&
        html`<${Linked} queue=${queue} id=${id} kind="parents" title="Tasks it waits for">
          <p class="hint">
            ${task.waiting_for.length > 0
              ? html`Not delivered until ${task.waiting_for.length === 1 ? "this task is" : `these ${count(task.waiting_for.length)} tasks are`} done: ${task.waiting_for.slice(0, 20).map((t, i) => html`${i ? ", " : ""}<code>#${t}</code>`)}${task.waiting_for.length > 20 ? "…" : ""}.`
              : "Every one is done: their results are below."}
          </p>
        <//>`}
        <${Block} label="Results of the tasks it waited for" value=${task.after && Object.keys(task.after).length ? task.after : null} />
        <${Linked} queue=${queue} id=${id} kind="children" title="Tasks waiting for it" />
        <section class="block" aria-label="Deliveries">
          <h2>Deliveries</h2>
          ${task.history && task.history.length
            ? html`<div class="table-wrap"><table>
                <thead><tr><th scope="col">Attempt</th><th scope="col">Worker</th><th scope="col">Started</th><th scope="col">Ended</th><th scope="col">Outcome</th><th scope="col">Error</th></tr></thead>
                <tbody>
                  ${task.history.map(
                    (d) => html`<tr>
                      <td>${d.attempt}</td><td>${d.worker ?? "–"}</td><td><${Time} iso=${d.started_at} /></td>
                      <td><${Time} iso=${d.ended_at} /></td><td>${d.outcome ?? "running"}</td><td class="error-text">${d.error || ""}</td>
                    </tr>`,
                  )}
                </tbody>
              </table></div>`
            : html`<p class="muted">No delivery recorded.</p>`}
        </section>
      `}
      ${confirming &&
      html`<${Dialog} title="Delete task #${id}?" onClose=${() => setConfirming(false)}>
        <p>The task and its history are removed for good.</p>
        <div class="buttons">
          <button type="button" onClick=${() => setConfirming(false)}>Keep it</button>
          <button type="button" class="danger" onClick=${() => act("", "DELETE")}>Delete</button>
        </div>
      <//>`}
    </section>
  `;
}

// -- workers -------------------------------------------------------------------------------

function Workers() {
  const [data, error] = usePoll(() => api("GET", "/v1/workers"), ["workers"]);
  useEffect(() => {
    document.title = "Workers · Katar";
  }, []);
  const workers = data ? data.workers : null;
  return html`
    <section class="page">
      <h1>Workers</h1>
      <p class="hint">The workers that polled in the last hour, by the name they give (<code>worker</code> in their poll).</p>
      ${error && error.status === 404
        ? html`<p class="problem" role="alert">This server does not list workers: it is older than this dashboard.</p>`
        : html`<${Problem} error=${error} />`}
      ${workers &&
      html`<div class="table-wrap"><table>
        <thead><tr><th scope="col">Worker</th><th scope="col">Queues</th><th scope="col">Last poll</th><th scope="col">In progress</th></tr></thead>
        <tbody>
          ${workers.map(
            (w) => html`<tr key=${w.name}>
              <td>${w.name}</td>
              <td>${w.queues.map((q, i) => html`${i ? ", " : ""}<a href=${link(["queue", q])}>${q}</a>`)}</td>
              <td><${Time} iso=${w.last_poll} /></td>
              <td><a href=${link(["queue", w.queues[0] || ""], { status: "in progress", worker: w.name })}>${count(w.in_progress)}</a></td>
            </tr>`,
          )}
        </tbody>
      </table></div>`}
      ${workers && workers.length === 0 && html`<p class="muted">No worker has polled in the last hour.</p>`}
    </section>
  `;
}

// -- schedules -----------------------------------------------------------------------------

function Schedules({ who }) {
  const [data, error, refresh] = usePoll(() => api("GET", "/v1/schedules"), ["schedules"]);
  const [failure, setFailure] = useState(null);
  useEffect(() => {
    document.title = "Schedules · Katar";
  }, []);
  async function pause(name, paused) {
    try {
      await api("PATCH", `/v1/schedules/${encodeURIComponent(name)}`, { paused });
      setFailure(null);
      refresh();
    } catch (e) {
      setFailure(e);
    }
  }
  const schedules = data ? data.schedules : null;
  return html`
    <section class="page">
      <h1>Schedules</h1>
      <p class="hint">Tasks enqueued at the ticks of a cron, once per tick however many servers run.</p>
      ${error && error.status === 403
        ? html`<p class="problem" role="alert">Schedules need an admin token.</p>`
        : html`<${Problem} error=${failure || error} />`}
      ${schedules &&
      html`<div class="table-wrap"><table>
        <thead><tr><th scope="col">Schedule</th><th scope="col">Cron</th><th scope="col">Queue</th><th scope="col">Next tick</th><th scope="col">Last tick</th><th scope="col">Last task</th><th scope="col">State</th></tr></thead>
        <tbody>
          ${schedules.map(
            (x) => html`<tr key=${x.name}>
              <td>${x.name}</td>
              <td><code>${x.cron}</code> <span class="muted">${x.timezone}</span></td>
              <td><a href=${link(["queue", x.queue])}>${x.queue}</a></td>
              <td>${x.next_ticks.length ? html`<${Time} iso=${x.next_ticks[0]} />` : "–"}</td>
              <td><${Time} iso=${x.last_tick} /></td>
              <td>${x.last_task ? html`<a href=${link(["task", x.queue, x.last_task])}>#${x.last_task}</a>` : "–"}</td>
              <td>
                ${x.error ? html`<span class="badge warn">cannot run</span>` : x.paused ? html`<span class="badge">paused</span>` : "active"}
                ${who.role === "admin" &&
                !x.error &&
                html` <button type="button" onClick=${() => pause(x.name, !x.paused)}>${x.paused ? "Resume" : "Pause"}</button>`}
                ${x.error && html`<p class="problem">${x.error}</p>`}
              </td>
            </tr>`,
          )}
        </tbody>
      </table></div>`}
      ${schedules && schedules.length === 0 && html`<p class="muted">No schedule yet: declare one in the file (<code>[schedules.NAME]</code>) or with <code>PUT /v1/schedules/NAME</code>.</p>`}
    </section>
  `;
}

// -- the frame -----------------------------------------------------------------------------

function Shell({ who, onSignOut }) {
  const route = useRoute();
  const [first, second, third] = route.parts;
  let page;
  let section = "queues";
  if (first === "queue" && second) page = html`<${QueuePage} key=${second} who=${who} name=${second} query=${route.query} />`;
  else if (first === "task" && second && third) page = html`<${TaskPage} key=${`${second}/${third}`} who=${who} queue=${second} id=${third} />`;
  else if (first === "workers") {
    section = "workers";
    page = html`<${Workers} />`;
  } else if (first === "schedules") {
    section = "schedules";
    page = html`<${Schedules} who=${who} />`;
  } else page = html`<${Overview} who=${who} />`;
  const scope = who.queues.includes("*") ? "every queue" : who.queues.join(", ");
  const role = who.role === "admin" ? "admin" : `${who.role}, read-only`;
  return html`
    <a class="skip" href="#main" onClick=${(e) => {
      e.preventDefault();
      document.getElementById("main").focus();
    }}>Skip to content</a>
    <header class="top">
      <a class="brand" href="#/"><img src="/ui/favicon.svg" alt="" width="22" height="22" /> Katar</a>
      <nav aria-label="Main">
        <a href="#/" aria-current=${section === "queues" ? "page" : undefined}>Queues</a>
        <a href="#/workers" aria-current=${section === "workers" ? "page" : undefined}>Workers</a>
        <a href="#/schedules" aria-current=${section === "schedules" ? "page" : undefined}>Schedules</a>
      </nav>
      <span class="who" title=${`Token ${who.name || ""}: ${role}, ${scope}`}>
        ${who.auth ? html`${who.name ? `${who.name} · ` : ""}${role} · ${scope}` : "open server (no tokens)"}
      </span>
      ${who.auth && html`<button type="button" onClick=${onSignOut}>Sign out</button>`}
    </header>
    <main id="main" tabindex="-1">${page}</main>
  `;
}

function App() {
  const [who, setWho] = useState(undefined); // undefined: checking; null: sign-in needed
  const [notice, setNotice] = useState("");
  const [failure, setFailure] = useState(null);
  async function check() {
    try {
      setWho(await api("GET", "/v1/token"));
      setFailure(null);
    } catch (error) {
      if (error.status === 401) {
        if (getToken()) setNotice(error.message);
        clearToken();
        setWho(null);
      } else {
        setFailure(error);
      }
    }
  }
  useEffect(() => {
    check();
    const refused = (event) => {
      clearToken();
      setNotice(`${event.detail} Sign in again.`);
      setWho(null);
    };
    addEventListener("katar:unauthorized", refused);
    return () => removeEventListener("katar:unauthorized", refused);
  }, []);
  if (failure) {
    return html`<main class="signin"><${Problem} error=${failure} /><button type="button" onClick=${check}>Try again</button></main>`;
  }
  if (who === undefined) return html`<main class="signin muted" aria-busy="true">Loading…</main>`;
  if (who === null) {
    return html`<${SignIn}
      notice=${notice}
      onToken=${async (token) => {
        setToken(token);
        setNotice("");
        await check();
      }}
    />`;
  }
  return html`<${Shell}
    who=${who}
    onSignOut=${() => {
      clearToken();
      setNotice("Signed out.");
      setWho(null);
    }}
  />`;
}

render(html`<${App} />`, document.getElementById("app"));
