#!/usr/bin/env bash
# Writes its environment, sorted, to $ENV_COPY, then PHASE:done.
set -euo pipefail
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
env | sort > "$ENV_COPY"
echo "env-dump.sh: wrote $(wc -l < "$ENV_COPY") variables"
printf 'PHASE:done\n' > "$PHASE_FILE"
