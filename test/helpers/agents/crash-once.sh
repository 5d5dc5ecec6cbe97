#!/usr/bin/env bash
# First run: PHASE:working, then exit 3. Second run (marker file next to the phase file,
# so it lives in the run directory and survives the session): PHASE:done.
set -euo pipefail
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
marker="$(dirname "$PHASE_FILE")/.crash-once-marker"
if [ ! -e "$marker" ]; then
  : > "$marker"
  echo "crash-once.sh: first session, crashing"
  printf 'PHASE:working\n' > "$PHASE_FILE"
  echo "crash-once.sh: exit 3" >&2
  exit 3
fi
echo "crash-once.sh: recovery session"
printf 'PHASE:done\n' > "$PHASE_FILE.tmp" && mv "$PHASE_FILE.tmp" "$PHASE_FILE"
echo "crash-once.sh: exiting 0"
