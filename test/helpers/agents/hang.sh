#!/usr/bin/env bash
# PHASE:working, then sleeps forever printing nothing (for the idle timeout).
set -euo pipefail
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
printf 'PHASE:working\n' > "$PHASE_FILE"
while :; do sleep 1; done
