#!/bin/sh
# Puts the static krill-stub where the Docker engine can bind-mount it into task
# containers, then runs the worker.
#
# With the host's Docker socket, the engine resolves bind-mount sources on the
# HOST, so KRILL_STUB_PATH must name a directory mounted at the same path on the
# host and in this container (docker-compose.yml mounts /var/lib/krill/stub).
# Each replica copies to a temporary name and renames, so concurrent starts
# never expose a half-written file.
set -eu
stub_src=/usr/local/lib/krill/krill-stub
if [ -n "${KRILL_STUB_PATH:-}" ] && [ "$KRILL_STUB_PATH" != "$stub_src" ]; then
    dir=$(dirname "$KRILL_STUB_PATH")
    mkdir -p "$dir"
    if ! cmp -s "$stub_src" "$KRILL_STUB_PATH" 2>/dev/null; then
        tmp="$KRILL_STUB_PATH.$(hostname).tmp"
        cp "$stub_src" "$tmp"
        chmod 0755 "$tmp"
        mv -f "$tmp" "$KRILL_STUB_PATH"
    fi
fi
exec "$@"
