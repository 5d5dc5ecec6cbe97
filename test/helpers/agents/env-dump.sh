#!/usr/bin/env bash
# Writes its environment, sorted, to $ENV_COPY (default: $TMPDIR/env.txt), then PHASE:done.
set -euo pipefail
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
ENV_COPY="${ENV_COPY:-$TMPDIR/env.txt}"
env | sort > "$ENV_COPY"
echo "env-dump.sh: wrote $(wc -l < "$ENV_COPY") variables"
printf 'PHASE:done\n' > "$PHASE_FILE"
