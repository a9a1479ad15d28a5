// @ts-check
// The overview: every queue the token may see, its tasks by status, its limits and a chart of
// its throughput.
import { useEffect, useState } from "./hooks.mjs";
import { getThroughput, listQueues } from "./api.mjs";
import { Chart } from "./chart.mjs";
import { count, duration, limitsSummary } from "./format.mjs";
import { usePoll, useTitle } from "./live.mjs";
import { may } from "./rights.mjs";
import { queueLink } from "./routes.mjs";
import { STATUSES } from "./tasks.mjs";
import { PauseButton, Problem, html } from "./widgets.mjs";

/** The seconds each chart spans: all the history the server keeps. */
const CHART_SECONDS = 600;

/** @typedef {import("./chart.mjs").Sample} Sample */

/**
 * The server's throughput history (GET /v1/throughput) as samples per queue, asked again
 * whenever the queues are.
 * @param {import("./api.mjs").Queue[] | null} queues
 * @returns {Record<string, Sample[]>}
 */
function useThroughput(queues) {
  const [samples, setSamples] = useState(/** @type {Record<string, Sample[]>} */ ({}));
  useEffect(() => {
    if (!queues) return;
    let alive = true;
    getThroughput(CHART_SECONDS).then(
      (answer) => {
        /** @type {Record<string, Sample[]>} */
        const found = {};
        for (const sample of answer.samples) {
          const at = Date.parse(sample.at);
          for (const [name, rates] of Object.entries(sample.queues)) {
            (found[name] ||= []).push({ at, ...rates });
          }
        }
        if (alive) setSamples(found);
      },
      // The charts keep their last samples; the queues' poll shows why the server failed.
      () => {},
    );
    return () => {
      alive = false;
    };
  }, [queues]);
  return samples;
}

/** @param {{limits: import("./api.mjs").Limits | null}} props */
function Limits({ limits }) {
  const summary = limitsSummary(limits);
  if (!summary) return html`<span class="muted">none</span>`;
  return html`<span class=${summary.full ? "warn" : ""}>${summary.text}</span>`;
}

/**
 * @param {{queue: import("./api.mjs").Queue, samples: Sample[] | undefined, canPause: boolean,
 *   onChanged: () => void}} props
 */
function QueueCard({ queue, samples, canPause, onChanged }) {
  const paused = Boolean(queue.options && queue.options.paused);
  return html`
    <article class="card queue" aria-labelledby="q-${queue.name}">
      <header>
        <h2 id="q-${queue.name}"><a href=${queueLink(queue.name)}>${queue.name}</a></h2>
        ${paused && html`<span class="badge paused">paused</span>`}
        ${canPause && html`<${PauseButton} queue=${queue.name} paused=${paused} onChanged=${onChanged} />`}
      </header>
      <ul class="counts" aria-label="Tasks of ${queue.name} by status">
        ${STATUSES.map(
          (status) => html`
            <li class=${status === "failed" && queue.counts.failed ? "has-failed" : ""}>
              <a href=${queueLink(queue.name, { status })}>
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
        ${queue.options && queue.options.dead_letter &&
        html`<div><dt>Dead letters to</dt><dd><a href=${queueLink(queue.options.dead_letter)}>${queue.options.dead_letter}</a></dd></div>`}
        ${queue.dead_letter_sources && queue.dead_letter_sources.length > 0 &&
        html`<div><dt>Dead letters of</dt><dd>${queue.dead_letter_sources.join(", ")}</dd></div>`}
      </dl>
      <${Chart} label=${queue.name} samples=${samples || []} span=${CHART_SECONDS} />
    </article>
  `;
}

/** @param {{who: import("./rights.mjs").Token}} props */
export function Overview({ who }) {
  const [data, error, refresh] = usePoll(listQueues, ["queues"]);
  const queues = data ? data.queues : null;
  const samples = useThroughput(queues);
  useTitle("Queues");
  return html`
    <section class="page">
      <h1>Queues</h1>
      <${Problem} error=${error} />
      ${queues === null && !error && html`<p class="muted" aria-busy="true">Loading…</p>`}
      ${queues && queues.length === 0 && html`<p class="muted">No queues yet. A queue appears once it is declared or a task is enqueued.</p>`}
      <div class="cards">
        ${(queues || []).map(
          (queue) => html`<${QueueCard}
            key=${queue.name}
            queue=${queue}
            samples=${samples[queue.name]}
            canPause=${may(who, "pauseQueue")}
            onChanged=${refresh}
          />`,
        )}
      </div>
    </section>
  `;
}
