// @ts-check
// The frame around every page once signed in: the main menu, the token in words, sign-out,
// and the page the address names.
import { useRoute } from "./live.mjs";
import { Overview } from "./page-queues.mjs";
import { QueuePage } from "./page-queue.mjs";
import { Schedules } from "./page-schedules.mjs";
import { TaskPage } from "./page-task.mjs";
import { Workers } from "./page-workers.mjs";
import { describe } from "./rights.mjs";
import { place, section } from "./routes.mjs";
import { html } from "./widgets.mjs";

/**
 * The page `where` names.
 * @param {import("./routes.mjs").Place} where
 * @param {import("./rights.mjs").Token} who
 */
function pageAt(where, who) {
  switch (where.page) {
    case "queue":
      return html`<${QueuePage} key=${where.name} who=${who} name=${where.name} query=${where.query} />`;
    case "task":
      return html`<${TaskPage} key=${`${where.queue}/${where.id}`} who=${who} queue=${where.queue} id=${where.id} />`;
    case "workers":
      return html`<${Workers} />`;
    case "schedules":
      return html`<${Schedules} who=${who} />`;
    default:
      return html`<${Overview} who=${who} />`;
  }
}

/** @param {{who: import("./rights.mjs").Token, onSignOut: () => void}} props */
export function Shell({ who, onSignOut }) {
  const where = place(useRoute());
  const current = section(where);
  const { role, scope } = describe(who);
  /** @param {"queues" | "workers" | "schedules"} name */
  const here = (name) => (current === name ? "page" : undefined);
  return html`
    <a class="skip" href="#main" onClick=${(/** @type {MouseEvent} */ e) => {
      e.preventDefault();
      /** @type {HTMLElement} */ (document.getElementById("main")).focus();
    }}>Skip to content</a>
    <header class="top">
      <a class="brand" href="#/"><img src="/ui/favicon.svg" alt="" width="22" height="22" /> Katar</a>
      <nav aria-label="Main">
        <a href="#/" aria-current=${here("queues")}>Queues</a>
        <a href="#/workers" aria-current=${here("workers")}>Workers</a>
        <a href="#/schedules" aria-current=${here("schedules")}>Schedules</a>
      </nav>
      <span class="who" title=${`Token ${who.name || ""}: ${role}, ${scope}`}>
        ${who.auth ? html`${who.name ? `${who.name} · ` : ""}${role} · ${scope}` : "open server (no tokens)"}
      </span>
      ${who.auth && html`<button type="button" onClick=${onSignOut}>Sign out</button>`}
    </header>
    <main id="main" tabindex="-1">${pageAt(where, who)}</main>
  `;
}
