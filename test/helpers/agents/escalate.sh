#!/usr/bin/env bash
# Without $ESCALATION_REPLY: PHASE:escalate with a question on the lines after it, exit 0.
# With it (a resumed session): copies the reply to $REPLY_COPY when set ("tmp": $TMPDIR/reply.txt), then PHASE:done.
set -euo pipefail
if [ -n "${PROMPT_COPY:-}" ]; then cat > "$PROMPT_COPY"; else cat > /dev/null; fi
if [ -n "${ESCALATION_REPLY:-}" ]; then
  echo "escalate.sh: got a reply"
  if [ "${REPLY_COPY:-}" = tmp ]; then REPLY_COPY="$TMPDIR/reply.txt"; fi
  if [ -n "${REPLY_COPY:-}" ]; then printf '%s' "$ESCALATION_REPLY" > "$REPLY_COPY"; fi
  printf 'PHASE:done\n' > "$PHASE_FILE.tmp" && mv "$PHASE_FILE.tmp" "$PHASE_FILE"
  exit 0
fi
echo "escalate.sh: need a human"
printf 'PHASE:escalate\nShould I drop the legacy API?\nIt has no callers left, but the README mentions it.\n' > "$PHASE_FILE.tmp" \
  && mv "$PHASE_FILE.tmp" "$PHASE_FILE"
echo "escalate.sh: exiting 0"
