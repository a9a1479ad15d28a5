// @ts-check
// The small components the pages share: times, statuses, problems, a modal dialog, the
// pause button of a queue; and `html`, the templates they are written in.
import { h } from "./preact.mjs";
import { useEffect, useRef, useState } from "./hooks.mjs";
import htm from "./htm.mjs";
import { setQueuePaused } from "./api.mjs";
import { ago, json } from "./format.mjs";
import { statusClass } from "./tasks.mjs";

/** Preact's elements written as tagged templates: no build step. */
export const html = htm.bind(h);

/**
 * An instant as "5 min ago", the exact time in its tooltip.
 * @param {{iso: string | null | undefined}} props
 */
export function Time({ iso }) {
  if (!iso) return html`<span class="muted">–</span>`;
  return html`<time datetime=${iso} title=${iso}>${ago(iso)}</time>`;
}

/** @param {{status: import("./api.mjs").Status}} props */
export function Status({ status }) {
  return html`<span class="status ${statusClass(status)}">${status}</span>`;
}

/**
 * `children`, said to belong to an earlier attempt when `when`.
 * @param {{when: boolean, children?: any}} props
 */
export function Earlier({ when, children }) {
  return when ? html`<span class="muted">earlier attempt: </span>${children}` : children;
}

/**
 * An error as an alert; nothing without one.
 * @param {{error: any}} props
 */
export function Problem({ error }) {
  if (!error) return null;
  return html`<p class="problem" role="alert">${error.message || String(error)}</p>`;
}

/**
 * A labelled block of data, as text or JSON; nothing without a value.
 * @param {{label: string, value: unknown}} props
 */
export function Block({ label, value }) {
  if (value === null || value === undefined) return null;
  return html`<section class="block" aria-label=${label}><h2>${label}</h2><pre tabindex="0">${typeof value === "string" ? value : json(value)}</pre></section>`;
}

/**
 * A modal <dialog>: focus stays in it, Escape closes it.
 * @param {{title: string, onClose: () => void, children?: any}} props
 */
export function Dialog({ title, onClose, children }) {
  const ref = useRef(/** @type {HTMLDialogElement | null} */ (null));
  useEffect(() => {
    const dialog = /** @type {HTMLDialogElement} */ (ref.current);
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

/**
 * Pause or resume a queue.
 * @param {{queue: string, paused: boolean, onChanged: () => void}} props
 */
export function PauseButton({ queue, paused, onChanged }) {
  const [error, setError] = useState(/** @type {unknown} */ (null));
  async function toggle() {
    try {
      await setQueuePaused(queue, !paused);
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
