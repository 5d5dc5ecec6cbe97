#!/usr/bin/env bash
# Five phases, each held until the runner recorded it (lib.sh; 0.1 s without a runner):
# planning, implementing, testing, reviewing, done.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
n=0
for phase in planning implementing testing reviewing done; do
  n=$((n + 1))
  echo "phases.sh: $phase"
  # Alternate a direct write and a rename-replace.
  if [ $((n % 2)) -eq 1 ]; then
    printf 'PHASE:%s\n' "$phase" > "$PHASE_FILE"
  else
    printf 'PHASE:%s\n' "$phase" > "$PHASE_FILE.tmp" && mv "$PHASE_FILE.tmp" "$PHASE_FILE"
  fi
  if [ "$phase" != done ]; then await_recorded "$phase"; fi
done
