"""Run a confinement experiment in a forked child, so pytest itself is never confined.

The child runs ``body()``, which returns JSON-able results, writes them to a
pipe and exits; the parent reads them and waits. A child a filter kills
reports nothing: :attr:`Outcome.signal` says what killed it. Import what the
body needs before the fork: once Landlock confines the child, it cannot open
a module file outside its allowed tree.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from virtfs_proto.server import privileges


@dataclass(frozen=True)
class Outcome:
    signal: int | None  # what killed the child, if anything did
    status: int | None  # its exit status otherwise
    result: Any  # what body() returned (None if the child died first)

    @property
    def killed_by_sigsys(self) -> bool:
        return self.signal == signal.SIGSYS


def set_no_new_privs() -> None:
    """What the privilege drop does before the sandbox layer is installed."""
    privileges.prctl(privileges.PR_SET_NO_NEW_PRIVS, 1)


def oserror(call: Callable[[], object]) -> str:
    """The errno name ``call()`` fails with, or "ok"."""
    try:
        call()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def run_forked(
    body: Callable[[], Any],
    *,
    while_running: Callable[[], None] | None = None,
    timeout: float = 20.0,
) -> Outcome:
    """Fork, run ``body()`` in the child; the parent runs ``while_running()``
    (a client driving the child, say), then collects the child's outcome."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_end)
            # a finalizer's warning would send pytest's hook reading source
            # files, which a confined child may not: say nothing instead
            sys.unraisablehook = lambda _: None
            try:
                data = json.dumps({"result": body()}).encode()
            except BaseException as exc:  # report it: the parent asserts on it
                data = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
                code = 3
            view = memoryview(data)
            while view:
                view = view[os.write(write_end, view) :]
        finally:
            os._exit(code)
    os.close(write_end)
    raw = bytearray()
    deadline = time.monotonic() + timeout
    try:
        if while_running is not None:
            while_running()
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                raise AssertionError(f"the child did not finish in {timeout} s")
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            raw += chunk
    except BaseException:
        os.kill(pid, signal.SIGKILL)  # a stuck child fails the test, never hangs it
        raise
    finally:
        os.close(read_end)
        _, wstatus = os.waitpid(pid, 0)
    decoded = json.loads(raw) if raw else None
    if decoded is not None and "error" in decoded:
        raise AssertionError(f"the child failed: {decoded['error']}")
    return Outcome(
        signal=os.WTERMSIG(wstatus) if os.WIFSIGNALED(wstatus) else None,
        status=os.WEXITSTATUS(wstatus) if os.WIFEXITED(wstatus) else None,
        result=decoded["result"] if decoded is not None else None,
    )
