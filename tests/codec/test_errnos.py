"""The Linux errno table and the OSError mapping."""

from __future__ import annotations

import errno
import os
import sys

import pytest

from virtfs_proto import errnos as E

on_linux = pytest.mark.skipif(sys.platform != "linux", reason="needs a Linux host")
on_glibc = pytest.mark.skipif(
    sys.platform != "linux" or "glibc" not in (os.confstr("CS_GNU_LIBC_VERSION") or ""),
    reason="descriptions are glibc's strerror texts",
)


def test_table_is_complete_1_to_133_without_41_and_58() -> None:
    numbers = [e.number for e in E.ERRNOS]
    assert numbers == sorted(numbers)
    assert set(numbers) == set(range(1, 134)) - {41, 58}
    names = [e.name for e in E.ERRNOS]
    assert len(set(names)) == len(names)
    assert all(e.description for e in E.ERRNOS)


@pytest.mark.parametrize(
    ("number", "name"),
    [
        (1, "EPERM"),
        (2, "ENOENT"),
        (6, "ENXIO"),
        (11, "EAGAIN"),
        (13, "EACCES"),
        (17, "EEXIST"),
        (22, "EINVAL"),
        (25, "ENOTTY"),
        (34, "ERANGE"),
        (35, "EDEADLK"),
        (36, "ENAMETOOLONG"),
        (39, "ENOTEMPTY"),
        (40, "ELOOP"),
        (61, "ENODATA"),
        (95, "EOPNOTSUPP"),
        (105, "ENOBUFS"),
        (110, "ETIMEDOUT"),
        (122, "EDQUOT"),
        (125, "ECANCELED"),
        (133, "EHWPOISON"),
    ],
)
def test_names(number: int, name: str) -> None:
    assert E.lookup(number).name == name
    assert E.lookup(name).number == number
    assert E.errno_name(number) == name
    assert E.errno_number(name) == number


@pytest.mark.parametrize(
    ("alias", "number", "canonical"),
    [("EWOULDBLOCK", 11, "EAGAIN"), ("EDEADLOCK", 35, "EDEADLK"), ("ENOTSUP", 95, "EOPNOTSUPP")],
)
def test_aliases(alias: str, number: int, canonical: str) -> None:
    assert E.ALIASES[alias] == number
    assert E.lookup(alias) == E.lookup(canonical) == E.lookup(number)
    assert E.errno_number(alias) == number
    assert E.errno_name(number) == canonical


def test_unknown_numbers_and_names() -> None:
    for number in (0, 41, 58, 134, -2):
        with pytest.raises(KeyError):
            E.lookup(number)
    assert E.errno_name(41) == "E?41"
    assert E.errno_name(500) == "E?500"
    with pytest.raises(KeyError):
        E.errno_number("ENOTANERRNO")


def test_descriptions() -> None:
    assert E.lookup(2).description == "No such file or directory"
    assert E.lookup(105).description == "No buffer space available"
    assert E.lookup(61).description == "No data available"


@on_linux
def test_table_agrees_with_the_linux_host() -> None:
    for number, name in errno.errorcode.items():
        if number <= 133:
            assert E.lookup(name).number == number
    for entry in E.ERRNOS:
        if entry.number in errno.errorcode:  # Python may not know the newest ones
            assert getattr(errno, entry.name) == entry.number


@on_glibc
def test_descriptions_are_glibcs() -> None:
    for entry in E.ERRNOS:
        assert entry.description == os.strerror(entry.number)


@pytest.mark.parametrize(
    ("number", "cls"),
    [
        (2, FileNotFoundError),
        (17, FileExistsError),
        (1, PermissionError),
        (13, PermissionError),
        (20, NotADirectoryError),
        (21, IsADirectoryError),
        (11, BlockingIOError),
        (32, BrokenPipeError),
        (110, TimeoutError),
    ],
)
def test_oserror_subclasses(number: int, cls: type[OSError]) -> None:
    err = E.oserror_for(number)
    assert type(err) is cls
    assert err.errno == number
    assert err.strerror == E.lookup(number).description


@pytest.mark.parametrize("number", [61, 34, 105, 6, 39, 95])
def test_plain_oserror(number: int) -> None:
    err = E.oserror_for(number)
    assert type(err) is OSError
    assert err.errno == number


def test_oserror_filename_and_unknown_number() -> None:
    err = E.oserror_for(2, b"/missing")
    assert err.filename == b"/missing"
    assert str(err) == "[Errno 2] No such file or directory: b'/missing'"
    unknown = E.oserror_for(41)
    assert type(unknown) is OSError
    assert (unknown.errno, unknown.strerror) == (41, "Unknown error 41")


@on_linux
def test_oserror_class_is_what_python_picks_on_linux() -> None:
    for entry in E.ERRNOS:
        assert type(E.oserror_for(entry.number)) is type(OSError(entry.number, "x"))
