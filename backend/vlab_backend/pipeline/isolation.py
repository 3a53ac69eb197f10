"""Linux namespaces around a job: what its processes can see of the machine.

`enter` moves the job into a new user, mount and PID namespace:

- the directories in `hidden` (the server's data dir: its database, credentials, models and
  other jobs) are covered by an empty tmpfs, and only the job's own directory is mounted back
  at its place;
- /proc is the job's own: it shows the job's processes only, so nothing of the server (its
  environment, its root or working directory) can be reached through it;
- the job's root is mapped to the server's user: no new rights, and none of the host's
  capabilities (mounting a disk, tracing a process outside);
- a second user and mount namespace on top locks these mounts: the job cannot unmount them;
- the first process of the PID namespace runs the job: when it ends, the kernel ends every
  process left in the namespace.

The process that calls `enter` stays outside (its pid is the runner's reference; cancel signals
its process group, which the job's processes keep) and waits: it exits with the job's exit code.
A root warm worker spares these two forks of a large process: `fork_for` forks the pipeline
straight into a new PID namespace, whose first process then sets the rest up itself.
Where namespaces are not available (no user namespaces, a /proc that cannot be mounted again
in a container), the job runs as before, and the pipeline's output says why.

`join` lets a warm worker fork a run (the harness) inside the namespaces of the job that asks.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import sys
from collections.abc import Sequence
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
# Exit code of a process that could not set the namespaces up: the job runs without them.
NOT_ISOLATED = 125
NAMESPACES = ("pid", "user", "mnt")
NS_GET_USERNS = 0xB701  # ioctl(2) on a namespace: the user namespace that owns it


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _unshare(flags: int) -> None:
    _check(_libc().unshare(flags), "unshare")


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    def c(text: str | None) -> bytes | None:
        return text.encode() if text is not None else None

    _check(_libc().mount(c(source), c(target), c(fstype), flags, c(data)), f"mount {target}")


def _map_root(uid: int, gid: int) -> None:
    """Root inside the new user namespace is `uid`/`gid` outside (each map in one write)."""
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")


def _hide(job_root: Path, hidden: Sequence[Path]) -> None:
    _mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing below propagates to the host
    keep = os.open(job_root, os.O_PATH | os.O_DIRECTORY)
    try:
        for directory in hidden:
            if directory.is_dir():
                _mount("tmpfs", str(directory), "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700")
        job_root.mkdir(parents=True, exist_ok=True)  # in the tmpfs, where one covers it
        # The job's directory, opened before it was covered, mounted back at its place.
        _mount(f"/proc/self/fd/{keep}", str(job_root), None, MS_BIND | MS_REC)
    finally:
        os.close(keep)
    # By path, after the mounts: a working directory opened before them is the one under the
    # cover, whose `..` (and /proc/<pid>/cwd) would lead back into the hidden directories.
    os.chdir(job_root)


def _exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def enter(job_root: Path, hidden: Sequence[Path]) -> bool:
    """Continue in the job's namespaces; True in the process that runs the job there. False
    (in this process) where they cannot be set up. Other processes wait and exit."""
    if os.getpid() == 1:  # forked by a root warm worker into a new PID namespace (`fork_for`)
        return _isolate_first_process(job_root, hidden)
    uid, gid = os.geteuid(), os.getegid()
    sys.stdout.flush()
    sys.stderr.flush()
    setup = os.fork()
    if setup:
        code = _exit_code(setup)
        if code != NOT_ISOLATED:
            os._exit(code)
        return False
    try:
        _unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID)
        _map_root(uid, gid)
        _hide(job_root, hidden)
        init = os.fork()  # the first process of the new PID namespace
        if init:
            os._exit(_exit_code(init))
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _unshare(CLONE_NEWUSER | CLONE_NEWNS)  # locks every mount made so far
        _map_root(0, 0)
    except OSError as exc:
        _say_not_isolated(exc)
        os._exit(NOT_ISOLATED)
    return True


def _isolate_first_process(job_root: Path, hidden: Sequence[Path]) -> bool:
    """The same namespaces without a fork, for a root process that is already the first of
    its own PID namespace: the mounts made as root, then a user namespace on top."""
    try:
        _unshare(CLONE_NEWNS)
        _hide(job_root, hidden)
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _unshare(CLONE_NEWUSER | CLONE_NEWNS)  # no host capabilities; the mounts locked
        _map_root(os.geteuid(), os.getegid())
    except OSError as exc:
        _say_not_isolated(exc)
        return False
    return True


def _say_not_isolated(exc: OSError) -> None:
    print(f"vlab pipeline: the job runs without namespaces ({exc}): it sees the server's "
          "files and processes", file=sys.stderr, flush=True)


def fork_for(peer: int, fresh: bool) -> int:
    """`os.fork()` from a thread of a root process (a warm worker serving `peer`), the child
    going straight into a PID namespace: the one of the job `peer` runs in, or (`fresh`) a new
    one that it is the first process of. This spares the child the fork that `join` and
    `enter` otherwise take (a fork of a warm worker costs milliseconds). Elsewhere, and where
    the namespace cannot be entered, a plain fork."""
    if os.geteuid() != 0:
        return os.fork()
    own = os.open("/proc/self/ns/pid", os.O_RDONLY)
    try:
        moved = False
        with contextlib.suppress(OSError):
            theirs = os.open(f"/proc/{peer}/ns/pid", os.O_RDONLY)
            try:
                if os.fstat(theirs).st_ino != os.fstat(own).st_ino:
                    _check(_libc().setns(theirs, CLONE_NEWPID), "setns pid")
                    moved = True
                elif fresh:
                    _unshare(CLONE_NEWPID)  # this thread's children only
                    moved = True
            finally:
                os.close(theirs)
        child = os.fork()
        if child and moved:  # this thread's next children: in its own namespace again
            with contextlib.suppress(OSError):
                _check(_libc().setns(own, CLONE_NEWPID), "setns pid")
        return child
    finally:
        os.close(own)


def join(pid: int) -> None:
    """Continue in the namespaces of process `pid` (a job's), in a new child: this process
    waits and exits with the child's code. Nothing to do for a process in our user
    namespace."""
    theirs = [Path(f"/proc/{pid}/ns/{ns}") for ns in NAMESPACES]
    ours = [Path(f"/proc/self/ns/{ns}") for ns in NAMESPACES]
    same = [a.stat().st_ino == b.stat().st_ino for a, b in zip(theirs, ours, strict=True)]
    if same[1]:  # not a job's process (the server's, a job's without namespaces)
        return
    if same[0]:  # forked into the job's PID namespace already (`fork_for`, root)
        user_ns, mnt_ns = (os.open(path, os.O_RDONLY) for path in theirs[1:])
        try:
            _check(_libc().setns(user_ns, 0), "setns user")
            _check(_libc().setns(mnt_ns, 0), "setns mnt")
        finally:
            os.close(user_ns)
            os.close(mnt_ns)
        return
    pid_ns, user_ns, mnt_ns = (os.open(path, os.O_RDONLY) for path in theirs)
    # The job's PID namespace belongs to its outer user namespace (see `enter`): join that one
    # first, which gives the right to join the PID namespace (a server that is not root has
    # it nowhere else), then the inner one, which gives the right to join its mounts.
    outer = fcntl.ioctl(pid_ns, NS_GET_USERNS)
    fds = (outer, pid_ns, user_ns, mnt_ns)
    try:
        for fd, what in zip(fds, ("user", "pid", "user", "mnt"), strict=True):
            _check(_libc().setns(fd, 0), f"setns {what}")
    finally:
        for fd in fds:
            os.close(fd)
    child = os.fork()  # a PID namespace holds only the children of who joined it
    if child:
        os._exit(_exit_code(child))
