# SPDX-License-Identifier: LGPL-2.1-or-later
"""What a caller sent, echoed in an error message, comes back as one line of printable text (issue 16,
item 12): control characters escaped ("\\x1b"), long echoes cut ("..."), and never half a UTF-8 character.

Echoes: the unknown template of CreateImage and an unknown option key of any a{sv} (CreateImage, CreateVM, CreateDisk, Snapshot). Each is sent with ESC [2J, a newline, a carriage
return, DEL, a C1 CSI (U+009B), U+2028, a backslash, a key of 63 ASCII characters and an "é" (the old
"%.64s" cut it in half: invalid UTF-8 that the bus cannot carry), and 10000 characters. Every call must
fail with org.freedesktop.DBus.Error.InvalidArgs and a message that is printable, one line, at most 512
characters, shows the escaped text (CreateDisk's mode, also sent, is refused without an echo), and leaves the store as it was. Invalid UTF-8 itself cannot be sent:
the bus (and dbus-python before it) refuses strings that are not valid UTF-8.

Usage: test-error-echo.py VDISKD."""

import sys

import dbus

from vdisktest import Env, check, check_eq, finish, opts

INVALID = "org.freedesktop.DBus.Error.InvalidArgs"
VDISKD = sys.argv[1]

# (what is sent, what the message must contain)
NASTY = [
    ("evil\x1b[2Jx", "evil\\x1b[2Jx"),
    ("two\nlines", "two\\x0alines"),
    ("cr\rret", "cr\\x0dret"),
    ("del\x7f", "del\\x7f"),
    ("c1\u009b2J", "c1\\xc2\\x9b2J"),
    ("ls\u2028x", "ls\\xe2\\x80\\xa8x"),
    ("back\\slash", "back\\\\slash"),
    ("a" * 63 + "\u00e9tage", "a" * 63 + "\u00e9tage"),
    ("\x1b" * 10000, "\\x1b\\x1b\\x1b"),
    ("b" * 10000, "bbbbbbbbbbbbbbbbbbbbbbbbbb..."),
    ("\u00e9" * 200, "\u00e9\u00e9\u00e9..."),  # cut between characters, within the daemon's 256 bytes
]


def check_message(what, got, want_in):
    err, msg = got
    check_eq(err, INVALID, f"{what}: {INVALID}")
    msg = str(msg)
    check(msg.isprintable(), f"{what}: the message is printable and one line: {msg[:120]!r}")
    check(len(msg) <= 512, f"{what}: the message is short ({len(msg)} characters)")
    if want_in is not None:
        check(want_in in msg, f"{what}: the message shows the escaped text {want_in[:40]!r}: {msg[:120]!r}")


def main():
    env = Env(VDISKD)
    try:
        env.start()
        env.call("CreateImage", "base", "qcow2", dbus.UInt64(1 << 20), opts())
        env.call("CreateVM", "vm", dbus.UInt32(0), opts())
        env.call("CreateDisk", "vm", "d", "base", dbus.UInt64(0), opts())
        before = env.snapshot_store()

        for i, (sent, shown) in enumerate(NASTY):
            label = f"#{i} {sent[:20]!r}"
            check_message(f"CreateImage template {label}",
                          env.try_call("CreateImage", f"t{i}", "qcow2", 1 << 20, opts(template=sent)), shown)
            check_message(f"CreateDisk mode {label}",
                          env.try_call("CreateDisk", "vm", f"m{i}", "base", 0, opts(mode=sent)), None)
            key = dbus.Dictionary({sent: dbus.String("x")}, signature="sv")
            check_message(f"CreateImage option key {label}",
                          env.try_call("CreateImage", f"k{i}", "qcow2", 1 << 20, key), shown)
            check_message(f"CreateVM option key {label}", env.try_call("CreateVM", f"v{i}", 0, key), shown)
            check_message(f"CreateDisk option key {label}",
                          env.try_call("CreateDisk", "vm", f"o{i}", "base", 0, key), shown)
            check_message(f"Snapshot option key {label}", env.try_call("Snapshot", "vm", "d", key), shown)

        check_eq(env.snapshot_store(), before, "the store is as before the refused calls")
        check_eq(sorted(str(i[0]) for i in env.call("ListImages")), ["base"], "no image was created")
        check_eq(sorted(str(v[0]) if not isinstance(v, dbus.String) else str(v) for v in env.call("ListVMs")),
                 ["vm"], "no VM was created")
        env.stop()
    finally:
        env.close()
    finish()


main()
