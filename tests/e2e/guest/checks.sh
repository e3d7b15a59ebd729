#!/bin/sh
# The fixed e2e workload (lib.sh has the check protocol). The harness takes
# the list of expected names from the `check` lines of this file, so a check
# that never printed counts as failed. Checks run in order and
# later ones build on earlier ones; the tree left under $T is compared
# host-side across helpers, so what it leaves behind is deliberate.
. /lib.sh

c_statfs_type() {
    # 9P2000.L's Rstatfs passes the export's own f_type through (T_STATFS's
    # first field); the harness puts the host's value on the kernel command line.
    want=$(sed -n 's/.*e2e_fstype=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
    [ -n "$want" ] || { echo "no e2e_fstype= on the kernel command line"; exit 1; }
    eq "$(stat -f -c %t $M)" "$want" "f_type"
}

c_mkdir() {
    mkdir $T
    [ -d $T ]
    eq "$(stat -c %a:%u:%g $T)" 755:0:0 "mode:uid:gid"
}

c_create() {
    : > $T/empty
    [ -f $T/empty ]
    eq "$(stat -c %s:%a:%u:%g $T/empty)" 0:644:0:0 "size:mode:uid:gid"
}

c_write_read() {
    printf 'hello, 9p proxy\n' > $T/hello
    eq "$(cat $T/hello)" "hello, 9p proxy"
    # Larger than any msize, so it takes many Twrite/Tread round trips.
    seq 1 200000 > $T/big
    eq "$(stat -c %s $T/big)" "$(seq 1 200000 | wc -c)" "size of big"
    eq "$(md5sum < $T/big)" "$(seq 1 200000 | md5sum)" "md5 of big"
}

c_append() {
    printf 'second line\n' >> $T/hello
    eq "$(cat $T/hello)" "$(printf 'hello, 9p proxy\nsecond line')"
    eq "$(stat -c %s $T/hello)" 28 "size"
}

c_mkdir_p() {
    mkdir -p $T/d1/d2/d3
    [ -d $T/d1/d2/d3 ]
    eq "$(stat -c %a $T/d1/d2)" 755 "mode"
}

c_symlink_readlink() {
    ln -s hello $T/sym
    [ -L $T/sym ]
    eq "$(readlink $T/sym)" hello "target"
    eq "$(cat $T/sym)" "$(cat $T/hello)" "read through link"
    ln -s /nowhere/dangling $T/dangling
    eq "$(readlink $T/dangling)" /nowhere/dangling "dangling target"
    [ ! -e $T/dangling ]
    long=$(printf 'L%.0s' $(seq 1 250))
    ln -s "$long" $T/longlink
    eq "$(readlink $T/longlink)" "$long" "250-byte target"
}

c_hard_link() {
    ln $T/hello $T/hard
    eq "$(stat -c %h $T/hello)" 2 "nlink"
    eq "$(stat -c %i $T/hard)" "$(stat -c %i $T/hello)" "inode"
    eq "$(cat $T/hard)" "$(cat $T/hello)" "content"
}

c_rename_file() {
    echo moved > $T/r1
    mv $T/r1 $T/r2
    [ ! -e $T/r1 ]
    eq "$(cat $T/r2)" moved
}

c_rename_dir() {
    mkdir -p $T/rd1/sub
    echo inside > $T/rd1/sub/f
    mv $T/rd1 $T/rd2
    [ ! -e $T/rd1 ]
    eq "$(cat $T/rd2/sub/f)" inside
}

c_rename_over() {
    echo new > $T/ro_src
    echo old > $T/ro_dst
    mv -f $T/ro_src $T/ro_dst
    [ ! -e $T/ro_src ]
    eq "$(cat $T/ro_dst)" new
}

c_chmod() {
    : > $T/modes
    chmod 0640 $T/modes
    eq "$(stat -c %a $T/modes)" 640
    chmod 4750 $T/modes
    if setid_kept; then
        eq "$(stat -c %a $T/modes)" 4750 "setuid kept"
    else
        eq "$(stat -c %a $T/modes)" 750 "setuid cleared (rootless helper)"
    fi
    chmod 0700 $T/d1
    eq "$(stat -c %a $T/d1)" 700 "directory"
}

c_chown() {
    : > $T/owned
    chown 1234:2345 $T/owned
    eq "$(stat -c %u:%g $T/owned)" 1234:2345
}

c_chown_h() {
    ln -s owned $T/ownlink
    chown -h 3456:4567 $T/ownlink
    eq "$(stat -c %u:%g $T/ownlink)" 3456:4567 "link"
    eq "$(stat -c %u:%g $T/owned)" 1234:2345 "target untouched"
}

c_truncate_shrink() {
    printf '0123456789' > $T/trunc
    truncate -s 4 $T/trunc
    eq "$(stat -c %s $T/trunc)" 4 "size"
    eq "$(cat $T/trunc)" 0123
}

c_truncate_grow() {
    truncate -s 65536 $T/trunc
    eq "$(stat -c %s $T/trunc)" 65536 "size"
    eq "$(head -c 4 $T/trunc)" 0123 "head"
    eq "$(tail -c +5 $T/trunc | tr -d '\000' | wc -c)" 0 "non-zero bytes in the hole"
}

c_touch_time() {
    : > $T/timed
    touch -d '2001-02-03 04:05:06' $T/timed
    eq "$(stat -c %Y $T/timed)" 981173106 "mtime"
    eq "$(stat -c %X $T/timed)" 981173106 "atime"
}

c_mkfifo() {
    mkfifo $T/fifo
    [ -p $T/fifo ]
    eq "$(stat -c %a $T/fifo)" 644 "mode"
    # The pipe itself is the guest kernel's: the helper is never asked to open it.
    # Both ends are bounded so a broken FIFO fails this check instead of hanging the guest.
    timeout 10 sh -c "echo through > $T/fifo" &
    eq "$(timeout 10 cat $T/fifo)" through "data through the fifo"
    wait
}

c_mknod_char() {
    if ! devnodes_allowed; then
        # our helper by default: T_MKNOD of a device is EPERM, nothing is made
        must_fail "Operation not permitted" mknod -m 0640 $T/chardev c 1 3
        [ ! -e $T/chardev ]
        return
    fi
    mknod -m 0640 $T/chardev c 1 3
    [ -c $T/chardev ]
    eq "$(stat -c %t,%T $T/chardev)" 1,3 "major,minor"
    eq "$(stat -c %a $T/chardev)" 640 "mode"
}

c_xattr_set_get() {
    : > $T/xattrs
    $X set $T/xattrs user.comment "hello xattr"
    eq "$($X get $T/xattrs user.comment)" "hello xattr"
    big=$(printf 'v%.0s' $(seq 1 1000))
    $X set $T/xattrs user.big "$big"
    eq "$($X get $T/xattrs user.big)" "$big" "1000-byte value"
    $X set $T/xattrs user.gone "temporary"
}

c_xattr_list() {
    eq "$($X list $T/xattrs | sort | tr '\n' ' ')" "user.big user.comment user.gone "
}

c_xattr_flags() {
    must_fail EEXIST $X create $T/xattrs user.comment "again"
    must_fail ENODATA $X replace $T/xattrs user.absent "x"
    $X replace $T/xattrs user.comment "replaced"
    eq "$($X get $T/xattrs user.comment)" replaced
}

c_xattr_remove() {
    $X remove $T/xattrs user.gone
    must_fail ENODATA $X get $T/xattrs user.gone
    must_fail ENODATA $X remove $T/xattrs user.gone
    eq "$($X list $T/xattrs | sort | tr '\n' ' ')" "user.big user.comment "
}

c_nonroot_refused() {
    mkdir $T/rootonly
    echo root > $T/rootonly/file
    must_fail "Permission denied" as_tester "echo x > $T/rootonly/new"
    must_fail "Permission denied" as_tester "echo x >> $T/rootonly/file"
    must_fail "Permission denied" as_tester "mkdir $T/rootonly/dir"
    must_fail "Operation not permitted" as_tester "chown 1000 $T/rootonly/file"
    [ ! -e $T/rootonly/new ]
    eq "$(cat $T/rootonly/file)" root
}

c_nonroot_allowed() {
    mkdir $T/home
    chown 1000:1000 $T/home
    as_tester "echo mine > $T/home/file && mkdir $T/home/sub && ln -s file $T/home/link \
        && mkfifo $T/home/fifo && chmod 0600 $T/home/file && mv $T/home/sub $T/home/sub2"
    eq "$(stat -c %u:%g:%a $T/home/file)" 1000:1000:600 "file"
    eq "$(stat -c %u:%g $T/home/sub2)" 1000:1000 "dir"
    eq "$(stat -c %u:%g $T/home/link)" 1000:1000 "symlink"
    eq "$(stat -c %u:%g $T/home/fifo)" 1000:1000 "fifo"
    eq "$(as_tester "cat $T/home/file")" mine "read back as tester"
}

c_many_entries() {
    mkdir $T/many
    i=1
    while [ $i -le 300 ]; do
        : > $T/many/entry_$i
        i=$((i + 1))
    done
    eq "$(ls $T/many | wc -l)" 300 "entries listed"
    eq "$(ls $T/many | sort | md5sum)" "$(seq 1 300 | sed 's/^/entry_/' | sort | md5sum)" "names"
}

c_long_name() {
    name=$(printf 'n%.0s' $(seq 1 255))
    echo long > "$T/$name"
    eq "$(cat "$T/$name")" long
    must_fail "too long" sh -c ": > '$T/${name}x'"
}

c_unlinked_open() {
    printf 'still here\n' > $T/ghost
    exec 3< $T/ghost
    rm $T/ghost
    [ ! -e $T/ghost ]
    eq "$(cat <&3)" "still here" "read after unlink"
    exec 3<&-
}

c_rm() {
    rm $T/r2
    [ ! -e $T/r2 ]
    rm $T/many/entry_1*
    eq "$(ls $T/many | wc -l)" 189 "entries left"
    must_fail "No such file" rm $T/r2
}

c_rmdir() {
    mkdir $T/gone
    rmdir $T/gone
    [ ! -e $T/gone ]
    must_fail "not empty" rmdir $T/rd2
}

c_df() {
    set -- $(df -P $M | tail -n 1)
    [ "$2" -gt 0 ] || { echo "total blocks: $2"; exit 1; }
    [ "$4" -gt 0 ] || { echo "available blocks: $4"; exit 1; }
    [ "$(stat -f -c %b $M)" -gt 0 ]
}

c_remount() {
    mount -t 9p -o trans=virtio,version=9p2000.L share $M
    eq "$(cat $T/hello)" "$(printf 'hello, 9p proxy\nsecond line')" "persisted content"
    eq "$(stat -c %u:%g $T/owned)" 1234:2345 "persisted owner"
    umount $M
}

check mount c_mount
check statfs_type c_statfs_type
check mkdir c_mkdir
check create c_create
check write_read c_write_read
check append c_append
check mkdir_p c_mkdir_p
check symlink_readlink c_symlink_readlink
check hard_link c_hard_link
check rename_file c_rename_file
check rename_dir c_rename_dir
check rename_over c_rename_over
check chmod c_chmod
check chown c_chown
check chown_h c_chown_h
check truncate_shrink c_truncate_shrink
check truncate_grow c_truncate_grow
check touch_time c_touch_time
check mkfifo c_mkfifo
check mknod_char c_mknod_char
check xattr_set_get c_xattr_set_get
check xattr_list c_xattr_list
check xattr_flags c_xattr_flags
check xattr_remove c_xattr_remove
check nonroot_refused c_nonroot_refused
check nonroot_allowed c_nonroot_allowed
check many_entries c_many_entries
check long_name c_long_name
check unlinked_open c_unlinked_open
check rm c_rm
check rmdir c_rmdir
check df c_df
check umount c_umount
check remount c_remount
