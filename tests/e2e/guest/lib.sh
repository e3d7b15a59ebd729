# Shared by the guest workloads (sourced): the check protocol and its helpers.
# Each `check NAME FUNC` prints exactly one line:
#   CHECK NAME PASS
#   CHECK NAME FAIL rc=N <what went wrong>
# FUNC runs in a subshell with `set -e`; `exit 1` fails just that check.
M=/mnt
T=$M/t
X=/bin/e2e-xattr
umask 022
export TZ=UTC

check() {
    name=$1
    shift
    out=$( (set -e; "$@") 2>&1 )
    rc=$?
    if [ "$rc" -eq 0 ]; then
        echo "CHECK $name PASS"
    else
        echo "CHECK $name FAIL rc=$rc $(printf '%s' "$out" | tr '\n' ' ' | cut -c1-400)"
    fi
}

# eq ACTUAL EXPECTED [WHAT]: fail the enclosing check unless equal.
eq() {
    [ "$1" = "$2" ] || { echo "${3:-value}: expected '$2', got '$1'"; exit 1; }
}

# must_fail PATTERN CMD...: CMD must fail and its message must contain PATTERN.
must_fail() {
    pat=$1
    shift
    if msg=$("$@" 2>&1); then
        echo "unexpectedly succeeded: $*"
        exit 1
    fi
    case "$msg" in
        *"$pat"*) ;;
        *) echo "wrong error for $*: '$msg' (wanted '$pat')"; exit 1 ;;
    esac
}

# devnodes_allowed: whether the helper makes device nodes (e2e_devnodes=1 on
# the kernel command line, set by the harness from the helper it started).
devnodes_allowed() {
    case " $(cat /proc/cmdline) " in
        *" e2e_devnodes=1 "*) return 0 ;;
        *) return 1 ;;
    esac
}

# setid_kept: whether set-id bits survive a chmod (e2e_setid=1; a rootless
# helper clears them unless --allow-setid).
setid_kept() {
    case " $(cat /proc/cmdline) " in
        *" e2e_setid=0 "*) return 1 ;;
        *) return 0 ;;
    esac
}

as_tester() {
    su -s /bin/sh tester -c "$1"
}

c_mount() {
    mount -t 9p -o trans=virtio,version=9p2000.L share $M
    grep -q " $M 9p " /proc/mounts
}

c_umount() {
    cd /
    umount $M
    ! grep -q " $M " /proc/mounts
}
