#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# examples/cli-session.sh: a session with the `kcache` command line tool
# against a running kcached, printed as a transcript ("$ kcache ..." then its
# output). Every step checks what it got, so the script doubles as a smoke
# test: it exits 0 only if the whole session went as shown.
#
#   examples/cli-session.sh [SOCKET]
#
# SOCKET: kcached's socket (default: $KCACHE_SOCKET, else
# /run/kcache/kcached.sock). The CLI is $KCACHE_CLI if set, else `kcache` on
# PATH, else build/client/kcache. Keys live under a per-run prefix in the
# namespace "cli-demo", so the session can run against a shared kcached and
# run again.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SOCK="${1:-${KCACHE_SOCKET:-/run/kcache/kcached.sock}}"
if [ -n "${KCACHE_CLI:-}" ]; then
        CLI=$KCACHE_CLI
elif command -v kcache >/dev/null 2>&1; then
        CLI=$(command -v kcache)
else
        CLI="$ROOT/build/client/kcache"
fi
P="demo$$"   # this run's key prefix
NS=cli-demo

# kc ARGS...: prints the command (shell-quoted) and runs it; its output goes
# to stdout and is kept in $OUT, its exit status in $RC (shown when not 0).
kc() {
        printf '$ kcache'
        printf ' %q' "$@"
        printf '\n'
        set +e
        OUT=$("$CLI" -s "$SOCK" "$@" 2>&1)
        RC=$?
        set -e
        if [ -n "$OUT" ]; then
                printf '%s\n' "$OUT"
        fi
        if [ "$RC" -ne 0 ]; then
                echo "[exit $RC]"
        fi
        return 0
}

# expect STATUS [TEXT]: the last command exited STATUS (and printed TEXT).
expect() {
        local status=$1
        if [ "$RC" -ne "$status" ]; then
                echo "cli-session: expected exit status $status, got $RC" >&2
                exit 1
        fi
        if [ $# -ge 2 ] && [ "$OUT" != "$2" ]; then
                printf 'cli-session: expected output %q, got %q\n' "$2" "$OUT" >&2
                exit 1
        fi
}

echo "# kcache CLI session against $SOCK"
kc ping
expect 0 pong

echo
echo "# plain keys: set with a ttl, get, ttl, a miss (exit 1)"
kc set "$P:greeting" hello --ttl 60
expect 0
kc get "$P:greeting"
expect 0 hello
kc ttl "$P:greeting"
expect 0
[ "$OUT" -ge 1 ] && [ "$OUT" -le 60 ] || { echo "cli-session: ttl $OUT not in 1..60" >&2; exit 1; }
kc get "$P:nothing-here"
expect 1

echo
echo "# several keys at once, in a namespace"
kc --ns "$NS" mset "$P:a" 1 "$P:b" 2 --ttl 60
expect 0
kc --ns "$NS" mget "$P:a" "$P:b" "$P:c"
expect 0 "$(printf '1\n2\n')"
kc --ns "$NS" exists "$P:a" "$P:b" "$P:c"
expect 0 2
kc get "$P:a"
expect 1   # not outside the namespace

echo
echo "# a hash"
kc hset "$P:user" name ada lang c --ttl 60
expect 0
kc hget "$P:user" name
expect 0 ada
kc hgetall "$P:user"
expect 0
printf '%s\n' "$OUT" | grep -q "^lang	c$" || { echo "cli-session: hgetall lacks lang" >&2; exit 1; }

echo
echo "# get-or-set: the command runs on a miss only, and its output is cached"
kc get-or-set "$P:report" --ttl 60 -- sh -c 'echo computed-once'
expect 0 computed-once
kc get-or-set "$P:report" --ttl 60 -- sh -c 'echo never-shown'
expect 0 computed-once

echo
echo "# invalidation: by tag, then a whole namespace in O(1)"
kc set "$P:tagged" x --ttl 60 --tag "$P-tag"
expect 0
kc invalidate --tags "$P-tag"
expect 0 1
kc get "$P:tagged"
expect 1
kc invalidate --namespace "$NS"
expect 0
kc --ns "$NS" get "$P:a"
expect 1

echo
echo "# clean up"
kc del "$P:greeting" "$P:user" "$P:report"
expect 0 3
echo "# session ok"
