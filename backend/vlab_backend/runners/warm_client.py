"""`python -m vlab_backend.runners.warm_client SOCKET MODULE [ARGS...]`: run MODULE in a fresh
fork of the warm worker at SOCKET, with this process's streams, cwd and environment; exit with
its exit code. Falls back to a plain `python -m MODULE` when no worker answers."""

from __future__ import annotations

import json
import os
import socket
import sys


def main(argv: list[str]) -> int:
    socket_path, module, *args = argv
    request = {"module": module, "args": args, "cwd": os.getcwd(), "env": dict(os.environ)}
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        client.connect(socket_path)
    except OSError:
        os.execv(sys.executable, [sys.executable, "-m", module, *args])
    socket.send_fds(client, [json.dumps(request).encode()], [0, 1, 2])
    reader = client.makefile("r")
    for line in reader:
        message = json.loads(line)
        if "exit" in message:
            return int(message["exit"])
    return 1  # the worker went away


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
