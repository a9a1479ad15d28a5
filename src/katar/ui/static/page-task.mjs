// @ts-check
// A task's page: its record, data, result, deliveries and the tasks it waits for or that wait
// for it; and for a token that may, retry, cancel or delete it.
import { useState } from "./hooks.mjs";
import { deleteTask, getTask, linkedTasks, retryWithData, setTaskStatus } from "./api.mjs";
import { count, json } from "./format.mjs";
import { usePoll, useTitle } from "./live.mjs";
import { may } from "./rights.mjs";
import { queueLink, taskLink } from "./routes.mjs";
import { earlierError, earlierWorker, messageAttributes, taskActions } from "./tasks.mjs";
import { Block, Dialog, Problem, Status, Time, html } from "./widgets.mjs";

/** The linked tasks on a page. */
const LINKED_PAGE = 20;

/** @param {{value: unknown}} props */
function Progress({ value }) {
  if (value === null || value === undefined) return html`<span class="muted">–</span>`;
  if (typeof value === "number") {
    const max = value <= 1 ? 1 : 100;
    return html`<progress value=${value} max=${max}></progress> ${max === 1 ? Math.round(value * 100) : value}%`;
  }
  return html`<code>${json(value)}</code>`;
}

/**
 * A task's children (the tasks that named it in their `after`) or its parents (those it
 * named, still there), of the queues the token may see, a page at a time; nothing when
 * there are none.
 * @param {{queue: string, id: string, kind: "children" | "parents", title: string, children?: any}} props
 */
function Linked({ queue, id, kind, title, children }) {
  const [cursors, setCursors] = useState(/** @type {(string | null)[]} */ ([null]));
  const cursor = cursors[cursors.length - 1];
  const [page, error] = usePoll(() => linkedTasks(queue, id, kind, LINKED_PAGE, cursor), [kind, queue, id, cursor]);
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
              <td><a href=${taskLink(t.queue, t._id)}>#${t._id}</a></td>
              <td><a href=${queueLink(t.queue)}>${t.queue}</a></td>
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

/**
 * The message attributes a send over the SQS API kept with the task; nothing for a task
 * enqueued natively, or sent without any.
 * @param {{task: import("./api.mjs").Task}} props
 */
function Attributes({ task }) {
  const rows = messageAttributes(task);
  if (rows.length === 0) return null;
  return html`
    <section class="block" aria-label="Message attributes">
      <h2>Message attributes</h2>
      <p class="hint">Sent with the message over the SQS API, and received with it there.</p>
      <div class="table-wrap"><table>
        <thead><tr><th scope="col">Name</th><th scope="col">Type</th><th scope="col">Value</th></tr></thead>
        <tbody>
          ${rows.map(
            (row) => html`<tr key=${`${row.system}:${row.name}`}>
              <td><code>${row.name}</code>${row.system ? html` <span class="muted">(system)</span>` : ""}</td>
              <td>${row.type}</td>
              <td><code>${row.value}</code>${row.binary ? html` <span class="muted">(base64)</span>` : ""}</td>
            </tr>`,
          )}
        </tbody>
      </table></div>
    </section>
  `;
}

/** @typedef {InputEvent & {currentTarget: HTMLTextAreaElement}} Input */

/**
 * Edit and retry: the task's data, as JSON, to change before it runs again.
 * @param {{queue: string, id: string, data: unknown, onClose: () => void, onDone: () => void}} props
 */
function EditDialog({ queue, id, data, onClose, onDone }) {
  const [text, setText] = useState(() => JSON.stringify(data, null, 2));
  const [error, setError] = useState(/** @type {unknown} */ (null));
  /** @param {SubmitEvent} event */
  async function submit(event) {
    event.preventDefault();
    let parsed;
    try {
      parsed = JSON.parse(text);
    } catch (e) {
      setError(new Error(`That is not valid JSON: ${/** @type {Error} */ (e).message}`));
      return;
    }
    try {
      await retryWithData(queue, id, parsed);
      onDone();
      onClose();
    } catch (e) {
      setError(e);
    }
  }
  return html`
    <${Dialog} title="Edit and retry task #${id}" onClose=${onClose}>
      <form onSubmit=${submit}>
        <label for="edit-data">Data as JSON</label>
        <p class="hint" id="edit-hint">
          The task runs again with this data and a fresh set of attempts; its earlier deliveries stay in its history.
        </p>
        <textarea
          id="edit-data"
          rows="10"
          spellcheck="false"
          aria-describedby="edit-hint"
          value=${text}
          onInput=${(/** @type {Input} */ e) => setText(e.currentTarget.value)}
        ></textarea>
        <${Problem} error=${error} />
        <div class="buttons">
          <button type="button" onClick=${onClose}>Close</button>
          <button type="submit" class="primary">Retry with this data</button>
        </div>
      </form>
    <//>
  `;
}

/** @param {{who: import("./rights.mjs").Token, queue: string, id: string}} props */
export function TaskPage({ who, queue, id }) {
  const [task, error, refresh] = usePoll(() => getTask(queue, id), ["task", queue, id]);
  const [failure, setFailure] = useState(/** @type {unknown} */ (null));
  const [message, setMessage] = useState("");
  const [confirming, setConfirming] = useState(false);
  const [editing, setEditing] = useState(false);
  const canChange = may(who, "changeTasks");
  useTitle(`Task ${id} · ${queue}`);
  /**
   * @param {string} done what to say once it is done
   * @param {() => Promise<unknown>} change
   */
  async function act(done, change) {
    try {
      await change();
      setFailure(null);
      setMessage(done);
      refresh();
    } catch (e) {
      setFailure(e);
    }
  }
  async function remove() {
    try {
      await deleteTask(queue, id);
      setFailure(null);
      location.hash = queueLink(queue);
    } catch (e) {
      setFailure(e);
    }
  }
  const offered = task && taskActions(task);
  return html`
    <section class="page">
      <nav class="crumbs" aria-label="Breadcrumb">
        <a href="#/">Queues</a> › <a href=${queueLink(queue)}>${queue}</a> › <span>#${id}</span>
      </nav>
      <header class="title">
        <h1>Task #${id}</h1>
        ${task && html`<${Status} status=${task.status} />`}
        ${task && task.cancel_requested && html`<span class="badge warn">cancel requested</span>`}
        ${canChange &&
        offered &&
        html`<div class="buttons">
          <button type="button" disabled=${!offered.retry} onClick=${() => act("Queued again.", () => setTaskStatus(queue, id, "queued"))}>
            Retry
          </button>
          <button type="button" disabled=${!offered.edit} onClick=${() => setEditing(true)}>Edit and retry…</button>
          <button type="button" disabled=${!offered.cancel} onClick=${() => act("Cancelled.", () => setTaskStatus(queue, id, "cancelled"))}>
            Cancel
          </button>
          <button type="button" class="danger" disabled=${!offered.delete} onClick=${() => setConfirming(true)}>Delete…</button>
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
          <div><dt>Lease ends</dt><dd><${Time} iso=${task.lease_expires_at} /></dd></div>
          ${task.dead_letter &&
          html`<div class="dead-letter">
            <dt>Dead letter from</dt>
            <dd>
              <a href=${queueLink(task.dead_letter.queue)}>${task.dead_letter.queue}</a>, after
              ${count(task.dead_letter.attempts)} ${task.dead_letter.attempts === 1 ? "delivery" : "deliveries"}, moved
              <${Time} iso=${task.dead_letter.at} />
            </dd>
          </div>`}
          ${task.debounce_key &&
          html`<div><dt>Debounce key</dt><dd title="While it waits, never delivered, an enqueue of this key replaces its data and due time"><code>${task.debounce_key}</code></dd></div>`}
          ${task.attributes &&
          task.attributes.MessageDeduplicationId &&
          html`<div><dt>Deduplication id</dt><dd title="The SQS API's MessageDeduplicationId of the message (a FIFO queue)"><code>${task.attributes.MessageDeduplicationId}</code></dd></div>`}
          ${task.schedule &&
          html`<div><dt>Schedule</dt><dd><a href="#/schedules">${task.schedule}</a>, tick <${Time} iso=${task.scheduled_for} /></dd></div>`}
        </dl>
        <${Block} label=${earlierError(task) ? "Error of an earlier attempt" : "Error"} value=${task.error} />
        <${Block} label="Data" value=${task.data} />
        <${Attributes} task=${task} />
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
      ${editing &&
      task &&
      html`<${EditDialog}
        queue=${queue}
        id=${id}
        data=${task.data}
        onClose=${() => setEditing(false)}
        onDone=${() => {
          setFailure(null);
          setMessage("Queued again with the new data.");
          refresh();
        }}
      />`}
      ${confirming &&
      html`<${Dialog} title="Delete task #${id}?" onClose=${() => setConfirming(false)}>
        <p>The task and its history are removed for good.</p>
        <div class="buttons">
          <button type="button" onClick=${() => setConfirming(false)}>Keep it</button>
          <button type="button" class="danger" onClick=${remove}>Delete</button>
        </div>
      <//>`}
    </section>
  `;
}
