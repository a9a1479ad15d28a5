// @ts-check
// The workers that polled in the last hour.
import { listWorkers } from "./api.mjs";
import { count } from "./format.mjs";
import { usePoll, useTitle } from "./live.mjs";
import { queueLink } from "./routes.mjs";
import { Problem, Time, html } from "./widgets.mjs";

export function Workers() {
  const [data, error] = usePoll(listWorkers, ["workers"]);
  useTitle("Workers");
  const workers = data ? data.workers : null;
  return html`
    <section class="page">
      <h1>Workers</h1>
      <p class="hint">The workers that polled in the last hour, by the name they give (<code>worker</code> in their poll).</p>
      <${Problem} error=${error} />
      ${workers &&
      html`<div class="table-wrap"><table>
        <thead><tr><th scope="col">Worker</th><th scope="col">Queues</th><th scope="col">Last poll</th><th scope="col">In progress</th></tr></thead>
        <tbody>
          ${workers.map(
            (w) => html`<tr key=${w.name}>
              <td>${w.name}</td>
              <td>${w.queues.map((q, i) => html`${i ? ", " : ""}<a href=${queueLink(q)}>${q}</a>`)}</td>
              <td><${Time} iso=${w.last_poll} /></td>
              <td><a href=${queueLink(w.queues[0] || "", { status: "in progress", worker: w.name })}>${count(w.in_progress)}</a></td>
            </tr>`,
          )}
        </tbody>
      </table></div>`}
      ${workers && workers.length === 0 && html`<p class="muted">No worker has polled in the last hour.</p>`}
    </section>
  `;
}
