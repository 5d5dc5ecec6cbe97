#!/usr/bin/env bash
# First session (no marker next to the phase file): starts a grandchild, writes
# PHASE:working and waits forever, as an agent does when its server is killed under it.
# Any later session (a recovery): PHASE:done. HANG_ONCE_MARKER names the marker instead
# (a path every instance of a fleet sees: a takeover runs in another DATA_DIR).
set -euo pipefail
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
marker="${HANG_ONCE_MARKER:-$(dirname "$PHASE_FILE")/.hang-once-marker}"
if [ ! -e "$marker" ]; then
  : > "$marker"
  sleep 1000 &
  if [ -n "${GRANDCHILD_PID_FILE:-}" ]; then echo $! > "$GRANDCHILD_PID_FILE"; fi
  echo "hang-once.sh: first session, working"
  printf 'PHASE:working\n' > "$PHASE_FILE"
  while true; do sleep 1; done
fi
echo "hang-once.sh: recovery session"
printf 'PHASE:done\n' > "$PHASE_FILE"
