/*
 * e2e-xattr: the guest's user-xattr tool. Debian's busybox has no
 * setfattr/getfattr, so build_guest.py compiles this (gcc -static) into the
 * build cache and puts it in the initramfs. Only the source lives in git.
 *
 *   e2e-xattr set PATH NAME VALUE      setxattr(..., 0)
 *   e2e-xattr create PATH NAME VALUE   setxattr(..., XATTR_CREATE)
 *   e2e-xattr replace PATH NAME VALUE  setxattr(..., XATTR_REPLACE)
 *   e2e-xattr get PATH NAME            value on stdout, no newline added
 *   e2e-xattr list PATH                one name per line, in the kernel's order
 *   e2e-xattr remove PATH NAME
 *
 * On failure it prints "e2e-xattr: <op>: <errno name>" and exits 1, so the
 * guest script can check *which* error the stack returned.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

static int fail(const char *op)
{
    const char *name;
    switch (errno) {
    case ENODATA: name = "ENODATA"; break;
    case EEXIST: name = "EEXIST"; break;
    case ERANGE: name = "ERANGE"; break;
    case EPERM: name = "EPERM"; break;
    case EACCES: name = "EACCES"; break;
    case ENOENT: name = "ENOENT"; break;
    case ENOTSUP: name = "ENOTSUP"; break;
    case EINVAL: name = "EINVAL"; break;
    default: name = strerror(errno); break;
    }
    fprintf(stderr, "e2e-xattr: %s: %s\n", op, name);
    return 1;
}

int main(int argc, char **argv)
{
    static char buf[65536];
    ssize_t n;

    if (argc == 5 && (!strcmp(argv[1], "set") || !strcmp(argv[1], "create") ||
                      !strcmp(argv[1], "replace"))) {
        int flags = !strcmp(argv[1], "create") ? XATTR_CREATE
                  : !strcmp(argv[1], "replace") ? XATTR_REPLACE : 0;
        if (setxattr(argv[2], argv[3], argv[4], strlen(argv[4]), flags) < 0)
            return fail(argv[1]);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "get")) {
        n = getxattr(argv[2], argv[3], buf, sizeof(buf));
        if (n < 0)
            return fail("get");
        fwrite(buf, 1, (size_t)n, stdout);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "list")) {
        n = listxattr(argv[2], buf, sizeof(buf));
        if (n < 0)
            return fail("list");
        for (ssize_t i = 0; i < n; i += (ssize_t)strlen(buf + i) + 1)
            printf("%s\n", buf + i);
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "remove")) {
        if (removexattr(argv[2], argv[3]) < 0)
            return fail("remove");
        return 0;
    }
    fprintf(stderr, "usage: e2e-xattr set|create|replace PATH NAME VALUE | get PATH NAME"
                    " | list PATH | remove PATH NAME\n");
    return 2;
}
