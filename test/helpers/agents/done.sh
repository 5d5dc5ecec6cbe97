#!/usr/bin/env bash
# Writes PHASE:working (rename-replace), waits until it is recorded (lib.sh), then
# PHASE:done (direct write), exits 0.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
echo "done.sh: starting in $PWD"
printf 'PHASE:working\n' > "$PHASE_FILE.tmp" && mv "$PHASE_FILE.tmp" "$PHASE_FILE"
await_recorded working
echo "done.sh: work finished" >&2
printf 'PHASE:done\n' > "$PHASE_FILE"
echo "done.sh: exiting 0"
