#!/usr/bin/env bash
# Starts `sleep 1000 &` (a tool subprocess that would outlive its agent), writes its pid to
# $GRANDCHILD_PID_FILE (default $TMPDIR/grandchild.pid), writes PHASE:working, then sleeps forever; with EXIT_AFTER_SPAWN
# set it exits 0 at once instead, leaving the grandchild behind (and holding the pipes).
set -euo pipefail
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
GRANDCHILD_PID_FILE="${GRANDCHILD_PID_FILE:-$TMPDIR/grandchild.pid}"
sleep 1000 &
printf '%s\n' "$!" > "$GRANDCHILD_PID_FILE.tmp" && mv "$GRANDCHILD_PID_FILE.tmp" "$GRANDCHILD_PID_FILE"
echo "grandchild.sh: started sleep 1000 as $!"
printf 'PHASE:working\n' > "$PHASE_FILE"
if [ -n "${EXIT_AFTER_SPAWN:-}" ]; then
  echo "grandchild.sh: exiting, leaving the grandchild"
  exit 0
fi
while :; do sleep 1; done
