#!/usr/bin/env python3
"""Runs a daemon in the foreground as its child subreaper, reaping every orphan it leaves.

libvirtd double-forks QEMU, so a QEMU that exits is reaped by whatever adopts orphans. With
systemd that is at once; under a container's or a sandbox's init it may be seconds later (on
the machines this project is built on, pid 1 reaps every ~2 s), and libvirt waits for the
zombie to go before it reports a domain destroyed or a QEMU gone. As the subreaper of
libvirtd, this process adopts those orphans and reaps them the moment they exit.

Usage: subreaper.py COMMAND [ARGS...]   (exits with COMMAND's status; signals are passed on)
"""
import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"subreaper: prctl: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 1
    child = os.fork()
    if child == 0:
        os.execvp(sys.argv[1], sys.argv[1:])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _frame: os.kill(child, s))
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        if pid == child:
            # Orphans still running (guests) go on, adopted by init once this process exits.
            return os.waitstatus_to_exitcode(status) % 256


if __name__ == "__main__":
    sys.exit(main())
