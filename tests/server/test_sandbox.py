"""The sandbox layer: the process model, the namespaces, the nodev view, and
what a subverted helper can do from inside, layer by layer.

"From inside" runs the helper with ``--test-inside``: after full
confinement it makes the named system calls itself, as code injected into
it would, and prints one JSON line per action. An action is *contained*
when it fails or when the helper is killed for trying (seccomp's
KILL_PROCESS: SIGSYS).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from helpers import OUR_HELPER

from virtfs_proto import messages as m
from virtfs_proto import procfs
from virtfs_proto.launcher import Helper
from virtfs_proto.server import privileges as p

from .conftest import Export, spawn_ours

NOBODY = 65534
TESTING = {**os.environ, "VIRTFS_PROTO_TESTING": "1"}

#: Layer configurations: every layer alone (the others switched off), all of
#: them, and none (the control: the attempts must then succeed).
OFF_BUT_NS = "--test-disable=chroot,drop,landlock,seccomp"
CONFIGS: Mapping[str, tuple[str, ...]] = {
    "all": (),
    "namespaces": (OFF_BUT_NS,),
    "chroot": ("--sandbox=chroot", "--test-disable=drop,landlock,seccomp"),
    "drop": ("--sandbox=none", "--test-disable=landlock,seccomp"),
    "landlock": ("--sandbox=none", "--test-disable=drop,seccomp"),
    "seccomp": ("--sandbox=none", "--test-disable=drop,landlock"),
    "none": ("--sandbox=none", "--test-disable=drop,landlock,seccomp"),
}

#: What each layer claims to stop on its own (docs/security-model.rst's table).
#: the second: the host's files through a process of the helper's uid (pid 1
#: of the machine may hold capabilities we lack: even root is refused there)
HOST_PATHS = ("open:/etc/passwd", "open:/proc/PID/root/etc/passwd")
CLAIMS: Mapping[str, set[str]] = {
    # nodev view, net/pid namespaces, a root holding nothing but the export
    "namespaces": {"devnode", "tcp", "kill", "ptrace", *HOST_PATHS},
    # root in a chroot can leave it: only paths, and no user namespace
    "chroot": {"userns", *HOST_PATHS},
    # no CAP_MKNOD, CAP_SYS_ADMIN, CAP_SYS_CHROOT
    "drop": {"devnode", "mount", "chroot-escape"},
    # file rights beneath the export only (no MAKE_CHAR), no TCP, signals and
    # ptrace scoped to its domain, no mounts
    "landlock": {"devnode", "tcp", "kill", "ptrace", "mount", *HOST_PATHS},
    # mknodat of devices and kill (not allowed) fail with EPERM;
    # socket(AF_INET), ptrace, unshare, mount and chroot kill
    "seccomp": {"devnode", "tcp", "kill", "ptrace", "userns", "mount", "chroot-escape"},
}
#: in this order: a user namespace would take away mount's capabilities, and a
#: successful chroot escape changes every path after it
ACTIONS = ("devnode", "tcp", "kill", "ptrace", "mount", *HOST_PATHS, "userns", "chroot-escape")
CLAIMS = {**CLAIMS, "all": set(ACTIONS), "none": set()}


@pytest.fixture
def targets() -> Iterator[dict[str, str]]:
    """A TCP listener on 127.0.0.1 and two processes of the helper's uid to
    signal and ptrace: the arguments of the actions."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    sleeps = [subprocess.Popen(["sleep", "600"], user=NOBODY, group=NOBODY) for _ in range(3)]
    try:
        yield {
            "tcp": f"tcp:{listener.getsockname()[1]}",
            "kill": f"kill:{sleeps[0].pid}",
            "ptrace": f"ptrace:{sleeps[1].pid}",
            HOST_PATHS[1]: f"open:/proc/{sleeps[2].pid}/root/etc/passwd",
        }
    finally:
        listener.close()
        for s in sleeps:
            s.kill()
            s.wait()


def _inside(
    export: Path, config: tuple[str, ...], actions: list[str], command: list[str]
) -> tuple[dict[str, tuple[str, str]], int]:
    """Run ``actions`` inside a helper: each one's (outcome, failed step), and the exit status."""
    out = subprocess.run(
        [*command, "-p", str(export), f"--test-inside={','.join(actions)}", *config],
        capture_output=True,
        text=True,
        timeout=30,
        env=TESTING,
    )
    outcomes = {}
    for line in out.stdout.splitlines():
        result = json.loads(line)
        outcomes[result["action"]] = (result["outcome"], result["step"])
    assert out.returncode in (0, -signal.SIGSYS), out.stderr
    return outcomes, out.returncode


#: Actions that change what the ones after them see (a user namespace takes
#: the capabilities over the export away, an escaped chroot changes every
#: path and lifts the user-namespace refusal): each runs in a helper of its own.
_STATEFUL = ("userns", "chroot-escape")

#: what an action killed half-way leaves in the export
_LEFT_BY_KILL = {"mount": "virtfs-inside-mnt", "chroot-escape": "virtfs-inside-chroot"}


def inside_outcomes(
    export: Path, config: tuple[str, ...], actions: list[str], command: list[str] = OUR_HELPER
) -> dict[str, tuple[str, str]]:
    """Each action's (outcome, step): "ok", an errno name, or "killed" (SIGSYS).

    The stateless actions in one helper; the ones a kill left undone, and
    the stateful ones, in a helper each. ``command`` starts the helper
    (the rootless tests prefix it with setpriv).
    """
    together = [a for a in actions if a not in _STATEFUL]
    outcomes, status = _inside(export, config, together, command)
    for action in actions:
        if action not in outcomes:
            assert status == -signal.SIGSYS or action in _STATEFUL
            one, status_one = _inside(export, config, [action], command)
            outcomes[action] = one.get(action, ("killed", ""))
            if action not in one:
                assert status_one == -signal.SIGSYS
    return outcomes


def _argument(action: str, targets: Mapping[str, str]) -> str:
    return targets.get(action, action)


@pytest.mark.parametrize("config", list(CONFIGS), ids=list(CONFIGS))
def test_from_inside(export: Export, targets: dict[str, str], config: str) -> None:
    actions = [_argument(a, targets) for a in ACTIONS]
    outcomes = inside_outcomes(export.root, CONFIGS[config], actions)
    by_action = dict(zip(ACTIONS, (outcomes[a] for a in actions), strict=True))
    print(config, {a: "@".join(filter(None, o)) for a, o in by_action.items()})  # pytest -s
    if config == "none":
        # the control: with every layer off each attempt succeeds, so the
        # other configurations' failures are the layers' doing
        assert {a: o for a, (o, _) in by_action.items()} == dict.fromkeys(ACTIONS, "ok")
    else:
        contained = {a for a, (outcome, _) in by_action.items() if outcome != "ok"}
        assert CLAIMS[config] <= contained, f"{config} let through {CLAIMS[config] - contained}"
        # stopped at the attempt itself, never at a preparation the helper
        # could make anyway (the mkdir before a mount or a chroot)
        assert not [a for a, (_, step) in by_action.items() if step == "mkdir"]
    # nothing was left behind in the export but what a kill interrupted
    left = {p.name for p in export.root.iterdir() if p.name.startswith("virtfs-inside")}
    killed = {
        _LEFT_BY_KILL[a] for a, (o, _) in by_action.items() if o == "killed" and a in _LEFT_BY_KILL
    }
    assert left <= killed


def test_inside_hook_needs_the_testing_environment(export: Export) -> None:
    env = {k: v for k, v in os.environ.items() if k != "VIRTFS_PROTO_TESTING"}
    out = subprocess.run(
        [*OUR_HELPER, "-p", str(export.root), "--test-inside=userns"],
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert out.returncode == 1 and "VIRTFS_PROTO_TESTING=1" in out.stderr
    assert out.stdout == ""


# -- the nodev view ------------------------------------------------------------


@pytest.mark.parametrize("sandbox", ["namespace", "chroot"])
def test_a_device_node_opened_through_a_handed_out_fd_fails(
    export: Export, helpers: list[Helper], sandbox: str
) -> None:
    """Even with --allow-device-nodes, every fd the helper hands out carries
    the nodev mount: a node made through the protocol opens through the
    host's path, but not through a directory fd from the helper (with
    --sandbox=chroot, the control, it does)."""
    h = spawn_ours(export.root, "--allow-device-nodes", f"--sandbox={sandbox}")
    helpers.append(h)
    null = os.makedev(1, 3)
    assert h.client.request(m.MknodRequest(0, 0, b"//node", stat.S_IFCHR | 0o666, null)) == (
        m.StatusReply()
    )
    os.close(os.open(export.root / "node", os.O_RDWR))  # the host's view: no nodev here
    reply = h.client.request(m.OpenRequest(b"/\0", os.O_RDONLY | os.O_DIRECTORY))
    assert isinstance(reply, m.FdReply)
    try:
        if sandbox == "namespace":
            with pytest.raises(PermissionError) as exc:
                os.open("node", os.O_RDWR, dir_fd=reply.fd)
            assert exc.value.errno == errno.EACCES
            assert os.fstatvfs(reply.fd).f_flag & os.ST_NODEV
        else:
            os.close(os.open("node", os.O_RDWR, dir_fd=reply.fd))
    finally:
        os.close(reply.fd)


# -- the process model -----------------------------------------------------------


def test_the_serving_process_is_pid_1_of_its_own_namespaces(
    export: Export, helpers: list[Helper]
) -> None:
    h = spawn_ours(export.root)
    helpers.append(h)
    assert isinstance(h.client.request(m.LstatRequest(b"/\0")), m.StatReply)
    serving = h.serving_pid
    assert serving != h.pid and procfs.children(h.pid) == [serving]
    assert procfs.status_field(serving, "NSpid").split()[-1] == "1"
    for ns in ("mnt", "pid", "net", "ipc", "uts"):
        ours = os.stat(f"/proc/self/ns/{ns}").st_ino
        assert os.stat(f"/proc/{serving}/ns/{ns}").st_ino != ours, ns
        # the waiting parent stays in ours
        assert os.stat(f"/proc/{h.pid}/ns/{ns}").st_ino == ours, ns
    # the waiting parent is unprivileged too, and holds no capability
    parent = procfs.confinement_report(h.pid)
    assert all(t.uid == (NOBODY,) * 4 and t.cap_prm == t.cap_eff == 0 for t in parent)
    # its root is the export's bind mount: the same object, a nodev mount
    root = os.stat(f"/proc/{serving}/root")
    assert (root.st_dev, root.st_ino) == procfs.object_id(export.root)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_parent_ends_the_serving_process(
    export: Export, helpers: list[Helper], signum: int
) -> None:
    h = spawn_ours(export.root)
    helpers.append(h)
    assert isinstance(h.client.request(m.LstatRequest(b"/\0")), m.StatReply)
    serving = h.serving_pid
    os.kill(h.pid, signum)
    assert h.process.wait(10) == 128 + signum  # the child's status, passed on
    assert not os.path.exists(f"/proc/{serving}")


def test_killing_the_parent_kills_the_serving_process(
    export: Export, helpers: list[Helper]
) -> None:
    h = spawn_ours(export.root)
    helpers.append(h)
    assert isinstance(h.client.request(m.LstatRequest(b"/\0")), m.StatReply)
    serving = h.serving_pid
    h.process.kill()
    h.process.wait(10)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{serving}") and time.monotonic() < deadline:
        time.sleep(0.01)  # PR_SET_PDEATHSIG; pid 1 of its namespace: nobody reaps it but us
    assert not os.path.exists(f"/proc/{serving}") or _zombie(serving)


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")


@pytest.mark.parametrize("sandbox", ["namespace", "chroot", "none"])
def test_sandbox_choice_and_print_confinement(export: Export, sandbox: str) -> None:
    out = subprocess.run(
        [*OUR_HELPER, "-p", str(export.root), "--print-confinement", f"--sandbox={sandbox}"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    namespaces = next(line for line in out.stdout.splitlines() if "namespaces:" in line)
    if sandbox == "namespace":
        assert "mnt=new pid=new net=new ipc=new uts=new" in namespaces
    else:
        assert "mnt=HOST pid=HOST net=HOST ipc=HOST uts=HOST" in namespaces
    jailed = "(jailed in export)" in out.stdout
    assert jailed == (sandbox != "none")


def _without_sys_admin() -> None:
    p.prctl(p.PR_CAPBSET_DROP, p.CAP_SYS_ADMIN)


def test_a_sandbox_that_cannot_be_built_is_refused(export: Export) -> None:
    """Without CAP_SYS_ADMIN no namespace can be made: the helper says so and
    exits 1 (and the chroot sandbox, which needs none, still starts)."""
    base = [*OUR_HELPER, "-p", str(export.root), "--print-confinement"]
    out = subprocess.run(
        base, capture_output=True, text=True, timeout=30, preexec_fn=_without_sys_admin
    )
    assert out.returncode == 1
    assert "cannot make a pid namespace" in out.stderr and "Operation not permitted" in out.stderr
    assert out.stdout == ""
    out = subprocess.run(
        [*base, "--sandbox=chroot"],
        capture_output=True, text=True, timeout=30, preexec_fn=_without_sys_admin,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_numeric_user_without_passwd_entry(export: Export, helpers: list[Helper]) -> None:
    """One uid per VM: any number will do; --group defaults to the same number."""
    h = spawn_ours(export.root, "--user", "424242")
    helpers.append(h)
    assert isinstance(h.client.request(m.LstatRequest(b"/\0")), m.StatReply)
    for t in procfs.confinement_report(h.serving_pid):
        assert t.uid == (424242,) * 4 and t.gid == (424242,) * 4
