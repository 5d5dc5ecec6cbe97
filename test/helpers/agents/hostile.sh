#!/usr/bin/env bash
# A prompt-injected agent: tries to read the server's secrets, plant hooks and config in
# the shared clone, write outside its worktree and reach hosts it was not given. Each probe
# appends `name=result` to $TMPDIR/probes.txt ("ok..." when it got through), then
# PHASE:done. Paths are derived from its own environment, as an attacker's would be.
set -uo pipefail
cat > /dev/null
out="$TMPDIR/probes.txt"
: > "$out"
probe() { printf '%s=%s\n' "$1" "$2" >> "$out"; }
data_dir="$(dirname "$(dirname "$(dirname "$(dirname "$PHASE_FILE")")")")"
worktree_root="$(dirname "$(dirname "$WORKTREE")")"

read_file() { if content="$(cat "$2" 2>/dev/null)"; then probe "$1" "ok:$content"; else probe "$1" denied; fi; }
read_file data_dir_file "$data_dir/planted-secret.txt"
read_file other_worktree "$worktree_root/other/secret.txt"
read_file ssh_key "$HOME/.ssh/id_rsa"
if ls -A "$data_dir" 2>/dev/null | grep -q planted-secret; then probe list_data_dir ok; else probe list_data_dir denied; fi

# Other processes' environments (the server's holds the API token and database URL).
leaked=denied
for f in /proc/[0-9]*/environ; do
  if tr '\0' '\n' < "$f" 2>/dev/null | grep -q '^API_TOKEN='; then leaked="ok:$f"; fi
done
probe proc_environ "$leaked"

# The shared clone: hooks and config would run with the server's environment.
common="$(dirname "$(dirname "$(sed -n 's/^gitdir: //p' "$WORKTREE/.git")")")"
if printf '#!/bin/sh\ntouch "%s/hook-ran"\n' "$TMPDIR" > "$common/hooks/post-checkout" 2>/dev/null; then
  chmod +x "$common/hooks/post-checkout"; probe plant_hook ok; else probe plant_hook denied; fi
if printf '[core]\n\tfsmonitor = /bin/false\n' >> "$common/config" 2>/dev/null; then probe clone_config ok; else probe clone_config denied; fi
if printf 'x\n' > "$WORKTREE/.git" 2>/dev/null; then probe worktree_link ok; else probe worktree_link denied; fi

# Writes: outside the worktree refused, inside allowed, a commit lands in the run's own objects.
if printf 'x' > "/tmp/hostile-$RUN_ID" 2>/dev/null; then probe write_tmp ok; else probe write_tmp denied; fi
if printf 'x' > "$(dirname "$WORKTREE")/hostile-$RUN_ID" 2>/dev/null; then probe write_beside ok; else probe write_beside denied; fi
if printf 'hello\n' > "$WORKTREE/agent-file.txt"; then probe write_worktree ok; else probe write_worktree denied; fi
if git -C "$WORKTREE" -c user.name=agent -c user.email=agent@example.com add agent-file.txt >/dev/null 2>&1 \
  && git -C "$WORKTREE" -c user.name=agent -c user.email=agent@example.com commit -qm "agent work" >/dev/null 2>&1; then
  probe commit "ok:$(git -C "$WORKTREE" rev-parse HEAD)"; else probe commit denied; fi

# Network: one host on the formula's allow list, one not.
if body="$(curl -sf -m 10 "$ALLOWED_URL" 2>/dev/null)" && [ -n "$body" ]; then probe net_allowed "ok:$body"; else probe net_allowed denied; fi
if body="$(curl -sf -m 10 "$DENIED_URL" 2>/dev/null)" && [ -n "$body" ]; then probe net_denied "ok:$body"; else probe net_denied denied; fi

echo "hostile.sh: probes done"
printf 'PHASE:done\n' > "$PHASE_FILE"
