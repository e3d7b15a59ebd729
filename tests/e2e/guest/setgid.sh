#!/bin/sh
# The setgid workload: a guest root creates a file in a setgid directory.
# The guest kernel gives a new file in a setgid directory the directory's
# group, so QEMU sends T_CREATE with uid 0 and gid 100. QEMU 7.2's helper
# handles uid 0 / gid != 0 by applying its reduced capability set without
# ever restoring it (notes section 8): afterwards it lacks CAP_CHOWN and
# CAP_MKNOD, and the next request with a nonzero uid makes glibc abort() it.
# A correct helper passes every check; the tests expect QEMU's helper to
# fail exactly the *_after checks and still_serving.
. /lib.sh

c_prepare() {
    mkdir $T $T/home
    chown 1000:1000 $T/home
    mkdir $T/sg
    chown 0:100 $T/sg
    chmod 2775 $T/sg
    eq "$(stat -c %a:%u:%g $T/sg)" 2775:0:100 "setgid dir"
}

c_setgid_create() {
    echo data > $T/sg/file
    eq "$(stat -c %u:%g $T/sg/file)" 0:100 "owner inherited from the directory"
    eq "$(cat $T/sg/file)" data
}

c_chown_after() {
    : > $T/plain
    chown 1234:2345 $T/plain
    eq "$(stat -c %u:%g $T/plain)" 1234:2345
}

c_mknod_after() {
    if ! devnodes_allowed; then
        must_fail "Operation not permitted" mknod $T/chardev c 1 3
        return
    fi
    mknod $T/chardev c 1 3
    [ -c $T/chardev ]
}

c_nonroot_after() {
    as_tester "echo mine > $T/home/file"
    eq "$(stat -c %u:%g $T/home/file)" 1000:1000
}

c_still_serving() {
    echo again > $T/again
    eq "$(cat $T/again)" again
    eq "$(cat $T/sg/file)" data
}

check mount c_mount
check prepare c_prepare
check setgid_create c_setgid_create
check chown_after c_chown_after
check mknod_after c_mknod_after
check nonroot_after c_nonroot_after
check still_serving c_still_serving
check umount c_umount
