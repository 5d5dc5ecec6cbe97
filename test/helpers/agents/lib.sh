# Sourced by the test agents. await_recorded PHASE: when the agent can reach the runner
# (FORMULA_RUNNER_URL and its run token; a sandboxed agent cannot), wait until its run
# shows PHASE, for at most 10 s; otherwise wait 0.1 s. The phase file holds the latest phase only, so an agent that
# overwrites it faster than a loaded server reads it would skip a phase: real agents take
# seconds per phase, the test agents pace themselves on the server's record instead.
await_recorded() {
  if [ -z "${FORMULA_RUNNER_URL:-}" ] || [ -z "${FORMULA_RUNNER_TOKEN:-}" ] || ! command -v curl >/dev/null; then
    sleep 0.1
    return 0
  fi
  local i run
  for i in $(seq 1 200); do
    if ! run=$(curl -sf -m 5 -H "Authorization: Bearer $FORMULA_RUNNER_TOKEN" "$FORMULA_RUNNER_URL/api/runs/$RUN_ID"); then
      sleep 0.1
      return 0
    fi
    if grep -q "\"phase\":\"$1\"" <<<"$run"; then return 0; fi
    sleep 0.05
  done
}
