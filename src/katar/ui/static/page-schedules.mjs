// @ts-check
// The schedules: tasks enqueued at the ticks of a cron.
import { useState } from "./hooks.mjs";
import { listSchedules, setSchedulePaused } from "./api.mjs";
import { usePoll, useTitle } from "./live.mjs";
import { may } from "./rights.mjs";
import { queueLink, taskLink } from "./routes.mjs";
import { Problem, Time, html } from "./widgets.mjs";

/** @param {{who: import("./rights.mjs").Token}} props */
export function Schedules({ who }) {
  const [data, error, refresh] = usePoll(listSchedules, ["schedules"]);
  const [failure, setFailure] = useState(/** @type {unknown} */ (null));
  useTitle("Schedules");
  /**
   * @param {string} name
   * @param {boolean} paused
   */
  async function pause(name, paused) {
    try {
      await setSchedulePaused(name, paused);
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
              <td><a href=${queueLink(x.queue)}>${x.queue}</a></td>
              <td>${x.next_ticks.length ? html`<${Time} iso=${x.next_ticks[0]} />` : "–"}</td>
              <td><${Time} iso=${x.last_tick} /></td>
              <td>${x.last_task ? html`<a href=${taskLink(x.queue, x.last_task)}>#${x.last_task}</a>` : "–"}</td>
              <td>
                ${x.error ? html`<span class="badge warn">cannot run</span>` : x.paused ? html`<span class="badge">paused</span>` : "active"}
                ${may(who, "pauseSchedule") &&
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
