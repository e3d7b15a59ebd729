"""Security cases: races (spec: security.rst)."""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, Self

from ..... import messages as m
from ...model import Context, case, qemu, qpath
from ...workspace import DECOY_CONTENT
from ._common import O_RD, RACE_ITERATIONS, secret_rel

_AT_FDCWD: Final = -100
_RENAME_EXCHANGE: Final = 2
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): swap two names atomically (both always exist)."""
    if _libc.renameat2(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"renameat2 {a} {b}: {os.strerror(err)}")


class ForkedLoop:
    """A child process that repeats ``step`` alongside the requests until told to stop.

    It stands for another process changing the export (another QEMU thread, a
    host user) while the helper works. A process rather than a thread, so that
    it really runs alongside; bounded by a stop pipe, a count and a time
    limit. ``setup`` runs first in the child (e.g. to become another user);
    :attr:`steps` is how many steps it made.
    """

    MAX_STEPS: Final = 50_000_000
    MAX_SECONDS: Final = 60.0
    #: steps between looks at the stop pipe
    BURST: Final = 64

    def __init__(self, step: Callable[[], None], setup: Callable[[], None] | None = None) -> None:
        self._step = step
        self._setup = setup
        self.steps = 0

    def _child(self, stop: int, report: int) -> None:  # pragma: no cover - runs forked
        n = 0
        try:
            if self._setup is not None:
                self._setup()
            deadline = time.monotonic() + self.MAX_SECONDS
            os.set_blocking(stop, False)
            while n < self.MAX_STEPS and time.monotonic() < deadline:
                for _ in range(self.BURST):
                    self._step()
                n += self.BURST
                try:
                    if os.read(stop, 1) == b"":
                        break
                except BlockingIOError:
                    continue
        finally:
            os.write(report, n.to_bytes(8, "little"))
            os._exit(0)

    def __enter__(self) -> Self:
        stop_r, self._stop_w = os.pipe()
        self._report_r, report_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            os.close(self._stop_w)
            self._child(stop_r, report_w)
        os.close(stop_r)
        os.close(report_w)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._stop_w)  # EOF: the child stops
        try:
            os.waitpid(self.pid, 0)
            self.steps = int.from_bytes(os.read(self._report_r, 8), "little")
        finally:
            os.close(self._report_r)


class _Swapper(ForkedLoop):
    """Keeps swapping ``a`` and ``b`` with RENAME_EXCHANGE (both names always exist)."""

    def __init__(self, a: Path, b: Path) -> None:
        super().__init__(lambda: exchange(a, b))
        self.a, self.b = a, b

    @property
    def swaps(self) -> int:
        return self.steps


def _race(
    ctx: Context,
    first: Callable[[Path], None],
    second: Callable[[Path], None],
    request: m.Request,
) -> None:
    """Run ``request`` RACE_ITERATIONS times while "race" is swapped between two objects."""
    first(ctx.host("race"))
    second(ctx.host("race_other"))
    ok = errors = 0
    with _Swapper(ctx.host("race"), ctx.host("race_other")) as swapper:
        for _ in range(RACE_ITERATIONS):
            reply = ctx.call(request)
            if isinstance(reply, m.FdReply):
                ctx.expect_inside(reply.fd, f"{request.TYPE.name} during the race")
                ctx.close(reply.fd)
            if isinstance(reply, m.ErrorReply):
                errors += 1
            else:
                ok += 1
    ctx.notes.append(f"{RACE_ITERATIONS} requests, {ok} ok, {errors} errors, {swapper.swaps} swaps")


def _decoy_dir(rel: str) -> Callable[[Path], None]:
    def make(p: Path) -> None:
        (p / rel).parent.mkdir(parents=True)
        (p / rel).write_bytes(DECOY_CONTENT)

    return make


def _symlink_to(target: str) -> Callable[[Path], None]:
    return lambda p: os.symlink(target, p)


@case("security", "race", name="race.intermediate_swap_abs")
def race_intermediate_abs(ctx: Context) -> None:
    """T_OPEN race/<host path of the secret> while race swaps between a dir and a link to /."""
    rel = secret_rel(ctx)
    _race(
        ctx,
        _decoy_dir(rel),
        _symlink_to("/"),
        qemu(m.OpenRequest, qpath(f"race/{rel}"), O_RD),
    )


@case("security", "race", name="race.intermediate_swap_dotdot")
def race_intermediate_dotdot(ctx: Context) -> None:
    """T_OPEN race/secret.txt while race swaps between a dir and a link to ../outside."""
    _race(
        ctx,
        _decoy_dir("secret.txt"),
        _symlink_to("../outside"),
        qemu(m.OpenRequest, qpath("race/secret.txt"), O_RD),
    )


@case("security", "race", name="race.final_swap_truncate")
def race_final_truncate(ctx: Context) -> None:
    """T_TRUNCATE race while race swaps between a file and a symlink to the secret."""

    def decoy(p: Path) -> None:
        p.write_bytes(DECOY_CONTENT)

    _race(
        ctx,
        decoy,
        _symlink_to(str(ctx.ws.secret)),
        qemu(m.TruncateRequest, qpath("race"), 0),
    )


@case("security", "race", name="race.final_swap_create")
def race_final_create(ctx: Context) -> None:
    """T_CREATE race (no O_EXCL) while race swaps between an empty dir and a dangling link."""

    def empty_dir(p: Path) -> None:
        p.mkdir()  # creating over it fails with EISDIR; over the link it must not escape

    _race(
        ctx,
        empty_dir,
        _symlink_to("../outside/planted_race"),
        qemu(m.CreateRequest, qpath("race"), os.O_WRONLY | os.O_CREAT, 0o644, *ctx.ids),
    )
