#!/bin/sh
# Entry point of the VLab image. Started as root: makes the data directory (a Nomad host
# volume, created by root) the vlab user's, then runs the command as vlab. Started as any
# other user: runs the command as that user.
set -eu
data="${VLAB_DATA_DIR:-/data}"
if [ "$(id -u)" = "0" ]; then
    mkdir -p "$data"
    # Only what is not vlab's yet: a restart with a large data dir stays quick.
    find "$data" ! -user vlab -exec chown vlab:vlab {} +
    exec setpriv --reuid=vlab --regid=vlab --init-groups -- "$@"
fi
exec "$@"
