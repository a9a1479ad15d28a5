// @ts-check
// The Katar dashboard's entry: asks the server what the token may do (GET /v1/token), then
// shows the sign-in form or the pages. Every datum comes from the HTTP API with the visitor's
// token; what the token may not do is not offered. The modules, each loaded as it is (no
// build step): shell.mjs the frame and the page the address names, page-*.mjs the pages,
// widgets.mjs and chart.mjs what they share, live.mjs polling and the address, api.mjs one
// function per endpoint, and without DOM (tested with node --test) routes.mjs the addresses,
// rights.mjs what the token may do, tasks.mjs the tasks' statuses, actions and filters,
// format.mjs numbers and times.
import { render } from "./preact.mjs";
import { useEffect, useState } from "./hooks.mjs";
import { clearToken, getToken, setToken, whoAmI } from "./api.mjs";
import { SignIn } from "./page-signin.mjs";
import { Shell } from "./shell.mjs";
import { Problem, html } from "./widgets.mjs";

function App() {
  // undefined: checking; null: sign-in needed
  const [who, setWho] = useState(/** @type {import("./rights.mjs").Token | null | undefined} */ (undefined));
  const [notice, setNotice] = useState("");
  const [failure, setFailure] = useState(/** @type {unknown} */ (null));
  async function check() {
    try {
      setWho(await whoAmI());
      setFailure(null);
    } catch (error) {
      if (/** @type {{status?: number}} */ (error).status === 401) {
        if (getToken()) setNotice(/** @type {Error} */ (error).message);
        clearToken();
        setWho(null);
      } else {
        setFailure(error);
      }
    }
  }
  useEffect(() => {
    check();
    /** @param {Event} event */
    const refused = (event) => {
      clearToken();
      setNotice(`${/** @type {CustomEvent<string>} */ (event).detail} Sign in again.`);
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
      onToken=${async (/** @type {string} */ token) => {
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

render(html`<${App} />`, /** @type {HTMLElement} */ (document.getElementById("app")));
