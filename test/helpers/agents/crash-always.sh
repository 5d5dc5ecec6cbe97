#!/usr/bin/env bash
# PHASE:working, then exit 7, every time.
set -euo pipefail
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
echo "crash-always.sh: starting"
printf 'PHASE:working\n' > "$PHASE_FILE"
echo "crash-always.sh: exit 7" >&2
exit 7
