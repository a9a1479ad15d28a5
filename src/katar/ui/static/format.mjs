// @ts-check
// How the dashboard writes numbers, rates, durations, times and data. No DOM: tested with
// node --test.

const numbers = new Intl.NumberFormat();

/**
 * A count with the reader's digit grouping; none is 0.
 * @param {number | null | undefined} n
 */
export function count(n) {
  return numbers.format(n || 0);
}

/**
 * Seconds in words at the two largest units: "42 s", "3 min 5 s", "2 h 0 min", "1 d 4 h";
 * "–" for none.
 * @param {number | null | undefined} seconds
 */
export function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60 ? `${s % 60} s` : ""}`.trim();
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

/**
 * An instant relative to `now`: "5 s ago", "in 2 min"; "–" for none.
 * @param {string | null | undefined} iso
 * @param {number} [now] milliseconds since the epoch
 */
export function ago(iso, now = Date.now()) {
  if (!iso) return "–";
  const seconds = (now - Date.parse(iso)) / 1000;
  return seconds >= 0 ? `${duration(seconds)} ago` : `in ${duration(-seconds)}`;
}

/**
 * A value as indented JSON; "" for none.
 * @param {unknown} value
 */
export function json(value) {
  return value === undefined ? "" : JSON.stringify(value, null, 2);
}

/**
 * A rate per second: whole numbers as they are, fractions to three significant digits or so.
 * @param {number} value
 */
export function rate(value) {
  if (Number.isInteger(value)) return value.toLocaleString();
  if (value >= 100) return Math.round(value).toLocaleString();
  if (value >= 10) return value.toFixed(1);
  return value.toFixed(value === 0 ? 0 : 2);
}

/**
 * The top of a chart's scale: the smallest 1, 2 or 5 times a power of ten at least `value`
 * (at least 1).
 * @param {number} value
 */
export function niceMax(value) {
  if (value <= 1) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

/**
 * A queue's flow-control limits in words, and whether its concurrency is all taken; null for
 * a queue without limits.
 * @param {import("./api.mjs").Limits | null | undefined} limits
 * @returns {{text: string, full: boolean} | null}
 */
export function limitsSummary(limits) {
  if (!limits) return null;
  const parts = [];
  if (limits.concurrency != null) parts.push(`${count(limits.in_progress)} of ${count(limits.concurrency)} running`);
  else parts.push(`${count(limits.in_progress)} running`);
  if (limits.tokens != null) parts.push(`rate: ${limits.tokens} deliveries available now`);
  if (limits.keys_at_limit) parts.push(`${count(limits.keys_at_limit)} keys at their limit`);
  if (limits.keys_rate_limited) parts.push(`key rate: ${count(limits.keys_rate_limited)} keys waiting for a token`);
  const full = limits.concurrency != null && limits.in_progress >= limits.concurrency;
  return { text: `${parts.join(" · ")}${full ? " (full)" : ""}`, full };
}
