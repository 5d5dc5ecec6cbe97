// formula-runner dashboard: the one script of the pages (the CSP allows no inline script).
// The pages work without it; with it, a run's page follows the log live over the server's
// SSE log stream and redraws the run's facts, timeline and escalations when the run moves
// on, and the runs page redraws its list when a run on it (or a newer one) changes, over
// the server's feed of run changes (/events), without reloading the page.

/**
 * Fetches the current page again and swaps in the element with this id. Says how it went:
 * "ok", "offline" (worth retrying), or why not (an HTTP status, a page without it).
 */
async function swapFromServer(id) {
  let response;
  try {
    response = await fetch(window.location.href, { credentials: "same-origin" });
  } catch {
    return "offline";
  }
  if (!response.ok) return `HTTP ${response.status}`;
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  const fresh = page.getElementById(id);
  const current = document.getElementById(id);
  if (!fresh || !current) return "signed out?";
  current.replaceWith(document.importNode(fresh, true));
  return "ok";
}

// The runs page: redraw the list when a run it shows changes, or a newer run appears on
// the newest page. Redraws are spaced by at least a second however busy the feed is.
(() => {
  const list = document.getElementById("runs-list");
  const live = document.getElementById("runs-live");
  if (!list || typeof EventSource === "undefined") return;
  let pending = false;
  const concerns = (id) => {
    const current = document.getElementById("runs-list");
    if (!current) return false;
    if (current.querySelector(`tr[data-run="${id}"]`)) return true;
    return current.dataset.newest === "1" && id > Number(current.dataset.top || 0);
  };
  const redraw = () => {
    if (pending) return;
    pending = true;
    setTimeout(async () => {
      const outcome = await swapFromServer("runs-list");
      pending = false;
      if (live)
        live.textContent =
          outcome === "ok" ? `updated ${new Date().toLocaleTimeString()}` : `could not update the list: ${outcome}`;
    }, 1000);
  };
  const source = new EventSource("/events");
  source.addEventListener("open", () => {
    if (live) live.textContent = "following run changes live";
  });
  source.addEventListener("run", (event) => {
    const change = JSON.parse(event.data);
    if (concerns(Number(change.id))) redraw();
  });
})();

(() => {
  // Terminal colour and cursor sequences: the page shows plain text.
  const ESC = String.fromCharCode(27);
  const BEL = String.fromCharCode(7);
  const ANSI = new RegExp(
    `${ESC}\\[[0-?]*[ -/]*[@-~]|${ESC}\\][^${BEL}${ESC}]*(?:${BEL}|${ESC}\\\\)|${ESC}[@-Z\\\\-_]`,
    "g",
  );
  const log = document.getElementById("log");
  const state = document.getElementById("log-state");
  if (!log) return;
  const runId = log.dataset.run;
  let offset = Number(log.dataset.offset || 0);

  const say = (text) => {
    if (state) state.textContent = text ? `(${text})` : "";
  };

  function follow() {
    const run = document.getElementById("run");
    if (run?.dataset.live !== "1") {
      say("");
      return;
    }
    say("following live");
    const source = new EventSource(`/runs/${runId}/log/stream?offset=${offset}`);
    source.addEventListener("log", (event) => {
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.append(document.createTextNode(`${event.data.replace(ANSI, "")}\n`));
      if (event.lastEventId) offset = Number(event.lastEventId);
      if (atBottom) log.scrollTop = log.scrollHeight;
    });
    source.addEventListener("end", () => {
      source.close();
      void refresh(300);
    });
    source.onerror = () => {
      source.close();
      say("connection lost; retrying");
      void refresh(2000);
    };
  }

  /** Fetches the run's page again and swaps in its facts; follows again while the run is live. */
  async function refresh(delay) {
    await new Promise((resolve) => setTimeout(resolve, delay));
    const outcome = await swapFromServer("run");
    if (outcome === "offline") return refresh(2000);
    if (outcome !== "ok") {
      say(`stopped following: ${outcome}`);
      return;
    }
    const fresh = document.getElementById("run");
    if (fresh?.dataset.live === "1") follow();
    else say(`run ${fresh?.dataset.status}`);
  }

  follow();
})();
