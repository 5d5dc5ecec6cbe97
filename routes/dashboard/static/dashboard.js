// formula-runner dashboard: the one script of the pages (the CSP allows no inline script).
// The pages work without it; with it, a run's page follows the log live over the server's
// SSE log stream and redraws the run's facts, timeline and escalations when the run moves
// on, without reloading the page.
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
    let response;
    try {
      response = await fetch(window.location.pathname, { credentials: "same-origin" });
    } catch {
      return refresh(2000);
    }
    if (!response.ok) {
      say(`stopped following: HTTP ${response.status}`);
      return;
    }
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("run");
    const current = document.getElementById("run");
    if (!fresh || !current) return;
    current.replaceWith(document.importNode(fresh, true));
    if (fresh.dataset.live === "1") follow();
    else say(`run ${fresh.dataset.status}`);
  }

  follow();
})();
