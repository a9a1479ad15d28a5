// @ts-check
// Hooks that follow what changes under the page: the server's answers (polled while the tab
// is visible) and the address in the URL's fragment.
import { useEffect, useState } from "./hooks.mjs";
import { parseHash } from "./routes.mjs";

const POLL_MS = 2000;

/**
 * Run `load` now and every POLL_MS while the tab is visible; again at once when it shows.
 * `deps` say what `load` asks for: when they change, the answer to the old question is
 * dropped. Returns the latest answer (null until there is one), the latest error, and a
 * function that asks again at once.
 * @template T
 * @param {() => Promise<T>} load
 * @param {unknown[]} deps
 * @returns {[T | null, any, () => void]}
 */
export function usePoll(load, deps) {
  /** @typedef {{data: T | null, error: any, key: string | null}} Polled the answer to the question `key` */
  const [state, setState] = useState(/** @type {Polled} */ ({ data: null, error: null, key: null }));
  const [round, setRound] = useState(0);
  const key = JSON.stringify(deps);
  useEffect(() => {
    let alive = true;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let timer;
    let busy = false;
    async function run() {
      clearTimeout(timer);
      if (!alive || busy || document.hidden) return; // resumed by visibilitychange
      busy = true;
      try {
        const data = await load();
        if (alive) setState({ data, error: null, key });
      } catch (error) {
        if (alive) setState((s) => ({ data: s.key === key ? s.data : null, error, key }));
      } finally {
        busy = false;
      }
      if (alive) timer = setTimeout(run, POLL_MS);
    }
    const shown = () => !document.hidden && run();
    document.addEventListener("visibilitychange", shown);
    run();
    return () => {
      alive = false;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", shown);
    };
  }, [key, round]);
  const data = state.key === key ? state.data : null;
  return [data, state.error, () => setRound((r) => r + 1)];
}

/**
 * The route in the URL's fragment, followed as it changes.
 * @returns {import("./routes.mjs").Route}
 */
export function useRoute() {
  const [route, setRoute] = useState(() => parseHash(location.hash));
  useEffect(() => {
    const changed = () => setRoute(parseHash(location.hash));
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return route;
}

/**
 * Set the tab's title to `title` and the server's name.
 * @param {string} title
 */
export function useTitle(title) {
  useEffect(() => {
    document.title = `${title} · Katar`;
  }, [title]);
}
