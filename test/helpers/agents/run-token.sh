#!/usr/bin/env bash
# Uses its run token ($FORMULA_RUNNER_TOKEN) on the API: its own run (allowed), a dispatch
# and another run (refused). Writes `name=<http status>` lines and the token itself to
# $TMPDIR (the test tries the token again after the run), then PHASE:done.
set -uo pipefail
cat > /dev/null
out="$TMPDIR/api.txt"
: > "$out"
call() { printf '%s=%s\n' "$1" "$(curl -s -o /dev/null -w '%{http_code}' -m 10 -H "Authorization: Bearer $FORMULA_RUNNER_TOKEN" "${@:2}")" >> "$out"; }
call own_run "$FORMULA_RUNNER_URL/api/runs/$RUN_ID"
call own_log "$FORMULA_RUNNER_URL/api/runs/$RUN_ID/log"
call list_runs "$FORMULA_RUNNER_URL/api/runs"
call dispatch -X POST -H 'Content-Type: application/json' -d '{"formula":"hostile"}' "$FORMULA_RUNNER_URL/api/runs"
call other_run "$FORMULA_RUNNER_URL/api/runs/1"
call cancel_own -X POST "$FORMULA_RUNNER_URL/api/runs/$RUN_ID/cancel"
printf '%s' "$FORMULA_RUNNER_TOKEN" > "$TMPDIR/token"
printf 'PHASE:done\n' > "$PHASE_FILE"
