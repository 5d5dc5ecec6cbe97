#!/usr/bin/env bash
# Traps SIGTERM and keeps sleeping: only SIGKILL stops it.
set -uo pipefail
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
trap 'echo "ignore-term.sh: SIGTERM ignored"' TERM
printf 'PHASE:working\n' > "$PHASE_FILE"
echo "ignore-term.sh: sleeping"
while :; do sleep 0.1; done
