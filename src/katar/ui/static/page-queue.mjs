// @ts-check
// A queue's page: its tasks a page at a time, by status and filters; and for a token that
// may, pause, enqueue, purge, and act on the selected or the matching tasks.
import { useEffect, useState } from "./hooks.mjs";
import {
  bulk,
  enqueue,
  getNotifyStatus,
  getPushStatus,
  listQueues,
  listTasks,
  redrive,
  rotatePushSecret,
} from "./api.mjs";
import { count, duration } from "./format.mjs";
import { usePoll, useTitle } from "./live.mjs";
import { may } from "./rights.mjs";
import { queueLink, taskLink } from "./routes.mjs";
import {
  ACTIONS,
  FILTERS,
  STATUSES,
  bulkFilter,
  earlierError,
  earlierWorker,
  filtered,
  listParams,
  offeredActions,
  redriveDone,
  redriveFilter,
} from "./tasks.mjs";
import { Dialog, Earlier, PauseButton, Problem, Status, Time, html } from "./widgets.mjs";

/** The tasks on a page. */
const PAGE = 50;

/** @typedef {import("./api.mjs").BulkAction} BulkAction */
/** @typedef {import("./api.mjs").Status} Status */
/** @typedef {import("./tasks.mjs").Filter} Filter */
/** @typedef {InputEvent & {currentTarget: HTMLInputElement | HTMLTextAreaElement}} Input */

/**
 * Asks the server how many tasks a bulk action would change (dry run), says so, then acts.
 * @param {{queue: string, action: BulkAction, filter: Filter, what: string, onClose: () => void,
 *   onDone: (message: string) => void}} props
 */
function BulkDialog({ queue, action, filter, what, onClose, onDone }) {
  const [preview, setPreview] = useState(/** @type {import("./api.mjs").BulkAnswer | null} */ (null));
  const [error, setError] = useState(/** @type {unknown} */ (null));
  const [busy, setBusy] = useState(false);
  const spec = ACTIONS[action];
  useEffect(() => {
    bulk(queue, action, filter, true).then(setPreview).catch(setError);
  }, []);
  async function confirm() {
    setBusy(true);
    try {
      const answer = await bulk(queue, action, filter, false);
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

/**
 * Confirms a redrive of a dead-letter queue's tasks back where they came from, then moves.
 * @param {{queue: string, sources: string[], filter: Filter, what: string, onClose: () => void,
 *   onDone: (message: string) => void}} props
 */
function RedriveDialog({ queue, sources, filter, what, onClose, onDone }) {
  const [error, setError] = useState(/** @type {unknown} */ (null));
  const [busy, setBusy] = useState(false);
  async function confirm() {
    setBusy(true);
    try {
      onDone(redriveDone(await redrive(queue, filter), count));
      onClose();
    } catch (e) {
      setError(e);
      setBusy(false);
    }
  }
  return html`
    <${Dialog} title="Redrive ${what}" onClose=${onClose}>
      <p>
        Each task goes back to the queue it failed in
        (${sources.length ? sources.map((s, i) => html`${i ? ", " : ""}<code>${s}</code>`) : "its origin"}),
        queued, with a fresh set of attempts. Tasks enqueued here directly have no origin and stay.
      </p>
      <${Problem} error=${error} />
      <div class="buttons">
        <button type="button" onClick=${onClose}>Keep them here</button>
        <button type="button" class="primary" disabled=${busy} onClick=${confirm}>Redrive</button>
      </div>
    <//>
  `;
}

/** @param {{queue: string, onClose: () => void, onDone: (message: string) => void}} props */
function EnqueueDialog({ queue, onClose, onDone }) {
  const [text, setText] = useState('{\n  "data": {}\n}');
  const [error, setError] = useState(/** @type {unknown} */ (null));
  /** @param {SubmitEvent} event */
  async function submit(event) {
    event.preventDefault();
    try {
      JSON.parse(text);
    } catch (e) {
      setError(new Error(`That is not valid JSON: ${/** @type {Error} */ (e).message}`));
      return;
    }
    try {
      const answer = await enqueue(queue, text);
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
          onInput=${(/** @type {Input} */ e) => setText(e.currentTarget.value)}
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

/** @param {{queue: string, status: Status | "", query: URLSearchParams}} props */
function Filters({ queue, status, query }) {
  const [values, setValues] = useState(() => Object.fromEntries(FILTERS.map((f) => [f, query.get(f) || ""])));
  /** @param {string} name */
  const set = (name) => (/** @type {Input} */ e) => setValues({ ...values, [name]: e.currentTarget.value });
  /** @param {SubmitEvent} event */
  function apply(event) {
    event.preventDefault();
    location.hash = queueLink(queue, { status, ...values });
  }
  function clear() {
    setValues(Object.fromEntries(FILTERS.map((f) => [f, ""])));
    location.hash = queueLink(queue, { status });
  }
  /**
   * @param {string} name
   * @param {string} label
   */
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

/** The grace period of a rotated secret that the dashboard asks for: a day. */
const GRACE_S = 86400;

/**
 * Rotates a push queue's secret after a confirmation, and shows the new one once.
 * @param {{queue: string, onClose: () => void}} props
 */
function RotateDialog({ queue, onClose }) {
  const [secret, setSecret] = useState(/** @type {import("./api.mjs").PushSecret | null} */ (null));
  const [error, setError] = useState(/** @type {unknown} */ (null));
  const [busy, setBusy] = useState(false);
  async function rotate() {
    setBusy(true);
    try {
      setSecret(await rotatePushSecret(queue, GRACE_S));
    } catch (e) {
      setError(e);
    }
    setBusy(false);
  }
  return html`
    <${Dialog} title="Rotate the signing secret of ${queue}" onClose=${onClose}>
      ${!secret &&
      html`<p>
        The queue gets a new secret. For a day, both the old and the new one sign each push, so
        deploy the new one to the receivers within that day.
      </p>`}
      ${secret &&
      html`<p>The new secret (shown once here; an admin can read it again):</p>
        <p><code class="secret">${secret.secret}</code></p>
        <p class="muted">The old one signs too until <${Time} iso=${secret.previous_until} />.</p>`}
      <${Problem} error=${error} />
      <div class="buttons">
        <button type="button" onClick=${onClose}>${secret ? "Close" : "Keep the secret"}</button>
        ${!secret &&
        html`<button type="button" class="primary" disabled=${busy} onClick=${rotate}>Rotate</button>`}
      </div>
    <//>
  `;
}

/**
 * A push queue's endpoint, its error rate and the server's last pushes to it.
 * @param {{who: import("./rights.mjs").Token, queue: string}} props
 */
function PushPanel({ who, queue }) {
  const [status, error] = usePoll(() => getPushStatus(queue), ["push", queue]);
  const [rotating, setRotating] = useState(false);
  return html`
    <section class="push" aria-label="Push delivery">
      <h2>Pushed to ${status ? html`<code>${status.url}</code>` : "its endpoint"}</h2>
      <${Problem} error=${error} />
      ${status &&
      html`<p class="muted">
        Timeout ${count(status.timeout)} ms${"; error rate of the last pushes: "}
        ${status.error_rate === null ? "–" : `${Math.round(status.error_rate * 100)}%`}
        ${may(who, "rotateSecret") &&
        html` <button type="button" onClick=${() => setRotating(true)}>Rotate secret…</button>`}
      </p>`}
      ${status &&
      html`<${RecentAnswers} caption="The last pushes, newest first" answers=${status.recent} />`}
      ${rotating && html`<${RotateDialog} queue=${queue} onClose=${() => setRotating(false)} />`}
    </section>
  `;
}

/**
 * The server's last answers from an endpoint (a push queue's pushes, a queue's completion
 * webhooks), newest first, at most ten; with an "Event" column when `event` renders one.
 * @template {import("./api.mjs").PushAnswer | import("./api.mjs").NotifyAnswer} A
 * @param {{caption: string, answers: A[], event?: (answer: A) => unknown}} props
 */
function RecentAnswers({ caption, answers, event }) {
  if (answers.length === 0) return null;
  return html`<div class="table-wrap">
    <table>
      <caption class="visually-hidden">${caption}</caption>
      <thead>
        <tr>
          <th scope="col">When</th>
          ${event && html`<th scope="col">Event</th>`}
          <th scope="col">Outcome</th>
          <th scope="col">Status</th>
          <th scope="col">ms</th>
          <th scope="col">Error</th>
        </tr>
      </thead>
      <tbody>
        ${answers.slice(0, 10).map(
          (answer) => html`<tr>
            <td><${Time} iso=${answer.at} /></td>
            ${event && html`<td>${event(answer)}</td>`}
            <td>${answer.outcome}</td>
            <td>${answer.status ?? html`<span class="muted">–</span>`}</td>
            <td>${count(answer.ms)}</td>
            <td class="error-text" title=${answer.error || ""}>${answer.error || ""}</td>
          </tr>`,
        )}
      </tbody>
    </table>
  </div>`;
}

/**
 * A queue's completion-webhook endpoint, the events waiting in its outbox, and the server's
 * last sends to it.
 * @param {{queue: string}} props
 */
function NotifyPanel({ queue }) {
  const [status, error] = usePoll(() => getNotifyStatus(queue), ["notify", queue]);
  return html`
    <section class="notify" aria-label="Completion webhooks">
      <h2>Completion webhooks to ${status ? html`<code>${status.url}</code>` : "its endpoint"}</h2>
      <${Problem} error=${error} />
      ${status &&
      html`<p class="muted">
        ${`Events: ${status.events.join(", ")}. Waiting to be sent: `}
        <strong class="pending">${count(status.pending)}</strong>
        ${status.failing > 0 && ` (${count(status.failing)} after a failed send)`}
        ${`; error rate of the last sends: `}
        ${status.error_rate === null ? "–" : `${Math.round(status.error_rate * 100)}%`}
      </p>`}
      ${status &&
      html`<${RecentAnswers}
        caption="The last sends, newest first"
        answers=${status.recent}
        event=${(/** @type {import("./api.mjs").NotifyAnswer} */ answer) =>
          html`${answer.type}${" "}${answer.type === "task.dead_lettered"
            ? answer.task
            : html`<a href=${taskLink(queue, answer.task)}>${answer.task}</a>`}`}
      />`}
    </section>
  `;
}

/**
 * @typedef {{kind: "bulk", action: BulkAction, filter: Filter, what: string} | {kind: "enqueue"}
 *   | {kind: "redrive", filter: Filter, what: string}} Open
 */

/** @param {{who: import("./rights.mjs").Token, name: string, query: URLSearchParams}} props */
export function QueuePage({ who, name, query }) {
  const status = /** @type {Status | ""} */ (query.get("status") || "");
  const canChange = may(who, "changeTasks");
  const [cursors, setCursors] = useState(/** @type {(string | null)[]} */ ([null])); // the cursor of each page seen, for "Newer"
  const cursor = cursors[cursors.length - 1];
  const [selected, setSelected] = useState(/** @type {Set<string>} */ (new Set()));
  const [dialog, setDialog] = useState(/** @type {Open | null} */ (null));
  const [message, setMessage] = useState("");
  const params = listParams(status, query, cursor, PAGE);
  const [page, error, refresh] = usePoll(() => listTasks(name, params), ["tasks", params.toString()]);
  const [queues] = usePoll(listQueues, ["queues"]);
  const info = queues && queues.queues.find((q) => q.name === name);
  useTitle(name);
  useEffect(() => {
    setCursors([null]);
    setSelected(new Set());
  }, [query.toString()]);
  const tasks = page ? page.tasks : [];
  /** @param {string} id */
  const toggle = (id) => {
    const next = new Set(selected);
    next.has(id) ? next.delete(id) : next.add(id);
    setSelected(next);
  };
  const allShown = tasks.length > 0 && tasks.every((t) => selected.has(t._id));
  /** @param {string} text */
  const done = (text) => {
    setMessage(text);
    setSelected(new Set());
    refresh();
  };
  const scope = `${status ? `${status} ` : ""}task of ${name}${filtered(query) ? " matching the filter" : ""}`;
  /**
   * @param {BulkAction} action
   * @param {string[] | null} ids
   */
  const act = (action, ids) =>
    setDialog({
      kind: "bulk",
      action,
      filter: bulkFilter(ids ? "" : status, ids ? new URLSearchParams() : query, ids),
      what: ids ? `${ids.length} selected tasks` : `every ${scope}`,
    });
  const paused = Boolean(info && info.options && info.options.paused);
  const offered = offeredActions(status);
  const sources = (info && info.dead_letter_sources) || [];
  const target = info && info.options ? info.options.dead_letter : null;
  const redriven = sources.length > 0 ? redriveFilter(status, query) : null;
  return html`
    <section class="page">
      <nav class="crumbs" aria-label="Breadcrumb"><a href="#/">Queues</a> › <span>${name}</span></nav>
      <header class="title">
        <h1>${name}</h1>
        ${paused && html`<span class="badge paused">paused</span>`}
        ${info && html`<span class="muted">oldest queued: ${duration(info.oldest_queued_age)}</span>`}
        ${(may(who, "pauseQueue") || may(who, "enqueue") || canChange) &&
        html`<div class="buttons">
          ${may(who, "pauseQueue") && html`<${PauseButton} queue=${name} paused=${paused} onChanged=${refresh} />`}
          ${may(who, "enqueue") && html`<button type="button" onClick=${() => setDialog({ kind: "enqueue" })}>Enqueue…</button>`}
          ${canChange &&
          html`<button
            type="button"
            class="danger"
            onClick=${() => setDialog({ kind: "bulk", action: "delete", filter: {}, what: `every task of ${name} (purge)` })}
          >
            Purge…
          </button>`}
        </div>`}
      </header>
      ${(sources.length > 0 || target) &&
      html`<p class="dead-letters">
        ${sources.length > 0 &&
        html`Dead-letter queue of ${sources.map((s, i) => html`${i ? ", " : ""}<a href=${queueLink(s)}>${s}</a>`)}: the tasks that failed
          there for good come here.`}
        ${target && html` Tasks that fail here for good move to <a href=${queueLink(target)}>${target}</a>.`}
      </p>`}
      ${info && info.options && info.options.push && html`<${PushPanel} who=${who} queue=${name} />`}
      ${info && info.options && info.options.notify && html`<${NotifyPanel} queue=${name} />`}
      <nav class="tabs" aria-label="Status">
        ${/** @type {(Status | "")[]} */ (["", ...STATUSES]).map(
          (s) => html`<a
            href=${queueLink(name, { ...Object.fromEntries(query), status: s })}
            aria-current=${s === status ? "page" : undefined}
            >${s || "all"}${info && s ? html` <span class="n">${count(info.counts[s])}</span>` : ""}</a
          >`,
        )}
      </nav>
      <${Filters} key=${query.toString()} queue=${name} status=${status} query=${query} />
      ${message && html`<p class="notice" role="status">${message}</p>`}
      <${Problem} error=${error} />
      ${canChange &&
      offered.length > 0 &&
      html`<div class="toolbar" role="group" aria-label="Actions">
        <span class="muted">${selected.size ? `${selected.size} selected:` : `Every ${scope}:`}</span>
        ${offered.map(
          ([action, spec]) => html`<button
            type="button"
            class=${action === "delete" ? "danger" : ""}
            onClick=${() => act(action, selected.size ? [...selected] : null)}
          >
            ${spec.verb} ${selected.size ? "selected" : "all"}…
          </button>`,
        )}
        ${redriven &&
        !selected.size &&
        html`<button
          type="button"
          onClick=${() => setDialog({ kind: "redrive", filter: redriven, what: `every ${status ? scope : `queued or failed task of ${name}`}` })}
        >
          Redrive all…
        </button>`}
      </div>`}
      <div class="table-wrap">
        <table>
          <caption class="visually-hidden">Every ${scope}, newest first</caption>
          <thead>
            <tr>
              ${canChange &&
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
                ${canChange &&
                html`<td>
                  <input
                    type="checkbox"
                    aria-label="Select task ${task._id}"
                    checked=${selected.has(task._id)}
                    onChange=${() => toggle(task._id)}
                  />
                </td>`}
                <td><a href=${taskLink(name, task._id)}>#${task._id}</a></td>
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
          onClick=${() => page && setCursors([...cursors, page.next])}
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
      dialog.kind === "redrive" &&
      html`<${RedriveDialog}
        queue=${name}
        sources=${sources}
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
