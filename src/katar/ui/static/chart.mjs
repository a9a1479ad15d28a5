// @ts-check
// A small live chart of a queue's throughput: enqueued, done and failed per second over the
// last minutes, drawn as SVG. Written here rather than vendored: three lines on one axis need
// no charting library, and SVG takes its colours from the style sheet, so light and dark
// themes need no code.
import { niceMax, rate } from "./format.mjs";
import { html } from "./widgets.mjs";

/** @typedef {"enqueued" | "done" | "failed"} Series */
/** @typedef {{at: number} & Record<Series, number>} Sample */

/** @type {Series[]} */
const SERIES = ["enqueued", "done", "failed"];
const WIDTH = 300;
const HEIGHT = 80;

/**
 * samples: the rates per second at `at` (milliseconds since the epoch), oldest first.
 * span: the seconds the x axis covers, ending now.
 * @param {{label: string, samples: Sample[], span: number}} props
 */
export function Chart({ label, samples, span }) {
  const now = Date.now();
  // The x axis always covers the whole `span`, as its label says: the time before the first
  // sample (a server or a page that has just started) is left blank rather than stretched.
  const start = now - span * 1000;
  const shown = samples.filter((s) => s.at >= start);
  const top = niceMax(Math.max(0, ...shown.flatMap((s) => SERIES.map((k) => s[k] || 0))));
  const x = (/** @type {number} */ at) => (((at - start) / (span * 1000)) * WIDTH).toFixed(1);
  const y = (/** @type {number} */ v) => (HEIGHT - (v / top) * HEIGHT).toFixed(1);
  const last = shown.length ? shown[shown.length - 1] : null;
  const now_ = SERIES.map((k) => `${k} ${last ? rate(last[k] || 0) : 0} per second`).join(", ");
  const minutes = Math.round(span / 60);
  return html`
    <figure class="chart">
      <div class="scale" aria-hidden="true">
        <span>per second, last ${minutes} min</span><span>${rate(top)}</span>
      </div>
      <svg
        viewBox="0 0 ${WIDTH} ${HEIGHT}"
        preserveAspectRatio="none"
        role="img"
        aria-label="${label}: throughput over the last ${minutes} minutes; now ${now_}"
      >
        <line class="grid" x1="0" y1="0.5" x2=${WIDTH} y2="0.5" />
        <line class="grid" x1="0" y1=${HEIGHT / 2} x2=${WIDTH} y2=${HEIGHT / 2} />
        <line class="axis" x1="0" y1=${HEIGHT - 0.5} x2=${WIDTH} y2=${HEIGHT - 0.5} />
        ${[...SERIES].reverse().map(
          (k) =>
            html`<polyline
              class="line ${k}"
              points=${shown.map((s) => `${x(s.at)},${y(s[k] || 0)}`).join(" ")}
            />`,
        )}
      </svg>
      <figcaption>
        ${SERIES.map(
          (k) =>
            html`<span class="key ${k}"><i aria-hidden="true"></i>${k} ${last ? rate(last[k] || 0) : 0}/s</span>`,
        )}
      </figcaption>
    </figure>
  `;
}
