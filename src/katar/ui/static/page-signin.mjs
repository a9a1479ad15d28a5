// @ts-check
// The sign-in form, shown when the server asks for a token and the tab has none that works.
import { useState } from "./hooks.mjs";
import { html } from "./widgets.mjs";

/** @param {{notice: string, onToken: (token: string) => Promise<void>}} props */
export function SignIn({ notice, onToken }) {
  const [value, setValue] = useState("");
  const [busy, setBusy] = useState(false);
  /** @param {SubmitEvent} event */
  async function submit(event) {
    event.preventDefault();
    setBusy(true);
    await onToken(value.trim());
    setBusy(false);
  }
  return html`
    <main class="signin">
      <h1><img src="/ui/favicon.svg" alt="" width="28" height="28" /> Katar</h1>
      <form onSubmit=${submit}>
        <label for="token">Token</label>
        <p class="hint" id="token-hint">
          This server asks for a token. Paste one your operator gave you (made with <code>katar token</code>).
          It is kept in this tab only, until you sign out or close it.
        </p>
        <input
          id="token"
          name="token"
          type="password"
          autocomplete="off"
          spellcheck="false"
          required
          aria-describedby="token-hint"
          value=${value}
          onInput=${(/** @type {InputEvent & {currentTarget: HTMLInputElement}} */ e) => setValue(e.currentTarget.value)}
        />
        ${notice && html`<p class="problem" role="alert">${notice}</p>`}
        <button class="primary" type="submit" disabled=${busy || !value.trim()}>Sign in</button>
      </form>
    </main>
  `;
}
