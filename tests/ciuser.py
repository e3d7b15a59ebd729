"""The CI's non-root user (issue 14) and an interpreter it can run.

Tests that need an unprivileged process (a rootless helper, the conformance
runner as non-root, QEMU without root) start it as this user with
:data:`SETPRIV`. The project's venv is root's: its interpreter may live
where the user cannot reach it (pyenv under ``/root``, mode 0700), so
:func:`user_python` gives a path the user can execute: the venv's own
interpreter when the user can run it, else a small venv of the same Python
version made from the system interpreter whose ``site-packages`` adds the
project venv's (the packages, the editable checkout), never a copy of them.

Run as a script, ``python tests/ciuser.py DIR`` makes that venv in ``DIR``
and prints its interpreter (``scripts/test``'s non-root stage uses it).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Final

NAME: Final = "virtfs-rootless"
UID: Final = 2345
GID: Final = 2345
#: ``/etc/subuid`` / ``/etc/subgid``: the user's first sub-id (``--subids``
#: maps guest uid N >= 1 to ``SUBID_START + N - 1``)
SUBID_START: Final = 200000
SUBID_COUNT: Final = 65536
#: Becomes the user with no capability and no supplementary group (root only).
SETPRIV: Final = (
    "setpriv",
    f"--reuid={UID}",
    f"--regid={GID}",
    "--clear-groups",
    "--inh-caps=-all",
)


def missing() -> str | None:
    """Why the user cannot be used here (None: it can)."""
    try:
        entry = pwd.getpwnam(NAME)
    except KeyError:
        return f"no user {NAME}: run scripts/bootstrap as root"
    if (entry.pw_uid, entry.pw_gid) != (UID, GID):
        return f"{NAME} is {entry.pw_uid}:{entry.pw_gid}, not {UID}:{GID}"
    if shutil.which("setpriv") is None:
        return "setpriv is missing (util-linux)"
    return None


def as_user(argv: list[str]) -> list[str]:
    """``argv`` run as the CI user: through setpriv when we are root, as is when we are
    that user already (setpriv could not clear the groups without CAP_SETGID)."""
    if os.geteuid() == 0:
        return [*SETPRIV, *argv]
    if os.geteuid() != UID:
        raise RuntimeError(f"running as uid {os.geteuid()}, neither root nor {NAME}")
    return argv


def _runs_as_user(python: str) -> bool:
    """Whether the user can exec ``python`` from a process of its own (a shell):
    the first exec through setpriv is not a proof, setpriv has not dropped yet
    when the kernel resolves some paths."""
    probe = [*as_user(["/bin/sh", "-c", 'exec "$0" -c ""', python])]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def make_venv(directory: Path) -> Path:
    """A venv in ``directory`` (made readable by all) the user can run, seeing the
    project venv's packages; returns its interpreter."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = shutil.which(f"python{version}", path="/usr/local/bin:/usr/bin:/bin")
    if base is None:
        raise RuntimeError(f"no system python{version} for the user (apt-get install python3)")
    subprocess.run([base, "-m", "venv", "--without-pip", str(directory)], check=True)
    paths = sysconfig.get_paths()
    ours = sorted({paths["purelib"], paths["platlib"]})
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    shim_site = Path(
        subprocess.run(
            [str(directory / "bin" / "python"), "-c", where],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # addsitedir, not a plain path line: the project's own .pth files (the
    # editable install) must be processed too
    lines = [f"import site; site.addsitedir({p!r})" for p in ours]
    (shim_site / "_project_venv.pth").write_text("\n".join(lines) + "\n")
    for dirpath, _, filenames in os.walk(directory):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o444)
    return directory / "bin" / "python"


def user_python(scratch: Path) -> str:
    """An interpreter path the user can run with the project importable; a venv
    is made under ``scratch`` (readable by all) only when the project's is not."""
    if _runs_as_user(sys.executable):
        return sys.executable
    python = make_venv(scratch / "user-venv")
    if not _runs_as_user(str(python)):
        raise RuntimeError(f"the user {NAME} cannot run {python} either")
    return str(python)


if __name__ == "__main__":
    print(make_venv(Path(sys.argv[1])))
