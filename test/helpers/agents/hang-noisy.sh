#!/usr/bin/env bash
# Prints a line every 0.2 s forever and never changes phase (for max_duration).
set -euo pipefail
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
printf 'PHASE:working\n' > "$PHASE_FILE"
i=0
while :; do
  i=$((i + 1))
  echo "hang-noisy.sh: still busy ($i)"
  sleep 0.2
done
