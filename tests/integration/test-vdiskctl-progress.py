# SPDX-License-Identifier: LGPL-2.1-or-later
"""vdiskctl's progress line, Ctrl-C and cancel, against the real vdiskd with slow jobs (the test knobs
VDISKD_TEST_STEP_BYTES / VDISKD_TEST_STEP_DELAY_MS make a flatten of 24 MiB take about 6 s):

1. On a pseudo-terminal of 100 columns (COLUMNS says 300: the terminal's size wins): the line is
   "<label> [###---]  NN% DONE/TOTAL RATE/s M:SS left"; the rate and the time left appear once
   vdiskctl has seen progress over a second, and agree with the bytes; the percentages never go back;
   the bar matches the percentage. Shrunk to 60 columns the rate is left out but not the time left; at
   30 only the label and the percentage remain; at 16 the label is cut. No line is ever wider than the
   terminal (one column stays free), nothing but "\\r" and "\\033[K" controls it, and the line is
   cleared at the end (exit 0, the disk is flattened).
2. Standard error a pipe: no bar, no carriage return, no escape sequence.
3. Ctrl-C (^C on the terminal): vdiskctl exits at once with status 4 and says that it stopped waiting
   and how to follow or cancel the job; the job keeps running (State, BytesDone, ListJobs), ends
   done (Finished, then JobRemoved "done") and the disk is flattened.
4. vdiskctl cancel JOB while another vdiskctl follows the job on a terminal: cancel exits 0, the
   follower exits 3 with org.vdisk1.Error.Cancelled, the job's State is cancelled with ErrorName
   org.vdisk1.Error.Cancelled, and the store is byte-identical to before the job.

Usage: test-vdiskctl-progress.py VDISKD (VDISKCTL in the environment)."""

import errno
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time

import dbus
import dbus.mainloop.glib
from gi.repository import GLib

from vdisktest import BUS_NAME, Env, check, check_eq, finish, opts

KiB, MiB = 1 << 10, 1 << 20
VDISKCTL = os.environ.get("VDISKCTL", "vdiskctl")
VDISKD = sys.argv[1]
JOB_IFACE, PROPS_IFACE = "org.vdisk1.Job", "org.freedesktop.DBus.Properties"
CANCELLED = "org.vdisk1.Error.Cancelled"
# Steps of 1 MiB at least 50 ms apart, in practice about 250 ms (sd-event's default timer accuracy): a
# flatten of 48 MiB takes about 12 s, of 8 MiB 2 s.
SLOW = {"VDISKD_TEST_STEP_BYTES": str(MiB), "VDISKD_TEST_STEP_DELAY_MS": "50",
        "VDISKD_TEST_JOB_LINGER_SEC": "3"}
IMAGES = {"big": 48 * MiB, "mid": 24 * MiB, "small": 8 * MiB}

# "<label> [###---]  NN% DONE/TOTAL[ RATE/s][ M:SS left]", every part but the percentage optional.
LINE = re.compile(r"^(?P<label>.*?)(?: \[(?P<filled>#*)(?P<empty>-*)\])? +(?P<percent>\d+)%"
                  r"(?: (?P<done>[\d.]+[KMGTPE]?B?)/(?P<total>[\d.]+[KMGTPE]?B?))?"
                  r"(?: (?P<rate>[\d.]+[KMGTPE]?B?)/s)?"
                  r"(?: (?P<left>\d+:\d\d(?::\d\d)?) left)?$")
UNITS = {"": 1, "K": KiB, "M": MiB, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}

STARTED = []  # vdiskctl processes started here, killed by pid if still running at the end


def size_of(s):
    m = re.fullmatch(r"([\d.]+)([KMGTPE]?)B?", s)
    return float(m.group(1)) * UNITS[m.group(2)]


def size_range(s):
    """The sizes that vdiskctl writes as s: it cuts (not rounds) to one decimal, or to whole bytes."""
    m = re.fullmatch(r"([\d.]+)([KMGTPE]?)B?", s)
    return size_of(s), size_of(s) + (0.1 * UNITS[m.group(2)] if m.group(2) else 1)


def seconds_of(s):
    parts = [int(p) for p in s.split(":")]
    return parts[-1] + 60 * parts[-2] + (3600 * parts[-3] if len(parts) == 3 else 0)


def vdiskctl_env(**extra):
    e = dict(os.environ)
    e.update({"LC_ALL": "C", "LANGUAGE": "", "NO_COLOR": "1", "TERM": "xterm"})
    e.pop("VDISKCTL_LOCALEDIR", None)
    e.update(extra)
    return e


def set_winsize(fd, columns, rows=24):
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def controlling_tty():
    # In the child, after setsid(): the pseudo-terminal on fd 0 becomes its controlling terminal, so
    # that ^C written to the master sends SIGINT to vdiskctl.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class PtyRun:
    """vdiskctl with stdin, stdout and stderr on a pseudo-terminal; everything it writes is kept."""

    def __init__(self, args, columns, **env):
        master, slave = os.openpty()
        set_winsize(slave, columns)
        self.columns = columns
        self.master = master
        self.out = b""
        self.eof = False
        self.marks = []  # (offset in out, columns from then on)
        self.proc = subprocess.Popen([VDISKCTL, *args], stdin=slave, stdout=slave, stderr=slave,
                                     env=vdiskctl_env(COLUMNS="300", **env), start_new_session=True,
                                     preexec_fn=controlling_tty)
        STARTED.append(self.proc)
        os.close(slave)
        self.marks.append((0, columns))

    def pump(self, timeout):
        """Reads what vdiskctl writes for up to `timeout` seconds (less once it closed the terminal)."""
        end = time.monotonic() + timeout
        while not self.eof:
            left = end - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([self.master], [], [], left)
            if not r:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError as e:
                if e.errno != errno.EIO:  # EIO: the terminal's other end is closed
                    raise
                data = b""
            if not data:
                self.eof = True
            self.out += data

    def text(self, start=0):
        return self.out[start:].decode("utf-8", errors="replace")

    def resize(self, columns, settle=0.5):
        """Makes the terminal narrower or wider. Lines drawn during the next `settle` seconds may be for
        either width; the ones after must fit the new one."""
        self.pump(0)
        self.marks.append((len(self.out), None))
        set_winsize(self.master, columns)
        self.pump(settle)
        self.marks.append((len(self.out), columns))

    def pump_until(self, pred, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not self.eof:
            if pred():
                return True
            self.pump(0.05)
        return pred()

    def wait(self, timeout=60):
        self.pump_until(lambda: False, timeout)
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)

    def draws(self):
        """The lines vdiskctl drew, each with the terminal width it was drawn for: every draw is
        "\\r<line>\\033[K" (an empty one clears it); the echo of ^C is dropped. Lines drawn while the
        terminal was resized belong to neither width and are left out."""
        out = []
        for i, (start, columns) in enumerate(self.marks):
            end = self.marks[i + 1][0] if i + 1 < len(self.marks) else len(self.out)
            text = self.out[start:end].decode("utf-8", errors="replace")
            if columns is None:
                continue
            if i > 0:  # from the first draw that starts after the mark on
                text = text[text.find("\r"):] if "\r" in text else ""
            for seg in text.split("\r")[1:]:
                seg = seg.replace("^C", "")
                if seg.endswith("\x1b[K") and "\n" not in seg and seg != "\x1b[K":
                    out.append((seg[:-3], columns))
        return out


class Signals:
    """Finished and JobRemoved, on a connection of its own driven by a GLib main context."""

    def __init__(self, env):
        self.conn = dbus.bus.BusConnection(env.address, mainloop=dbus.mainloop.glib.DBusGMainLoop())
        self.finished, self.removed = {}, {}
        self.conn.add_signal_receiver(self._on_finished, signal_name="Finished", dbus_interface=JOB_IFACE,
                                      path_keyword="path")
        self.conn.add_signal_receiver(self._on_removed, signal_name="JobRemoved", dbus_interface="org.vdisk1.Manager")

    def _on_finished(self, *args, path=None):
        self.finished[str(path)] = tuple(str(a) for a in args)

    def _on_removed(self, path, state):
        self.removed[str(path)] = str(state)

    def wait(self, table, path, timeout):
        ctx = GLib.MainContext.default()
        end = time.time() + timeout
        while time.time() < end and path not in table:
            while ctx.iteration(False):
                pass
            time.sleep(0.01)
        return table.get(path)


def job_props(env, path):
    o = dbus.Interface(env.bus.get_object(BUS_NAME, path, introspect=False), PROPS_IFACE)
    return {str(k): (str(v) if isinstance(v, dbus.String) else float(v) if isinstance(v, dbus.Double) else int(v))
            for k, v in o.GetAll(JOB_IFACE).items()}


def find_job(env, vm, disk):
    for path, operation, jvm, jdisk in env.call("ListJobs"):
        if (str(jvm), str(jdisk)) == (vm, disk):
            return str(path), str(operation)
    return None, None


def wait_state(env, path, timeout):
    end = time.time() + timeout
    p = job_props(env, path)
    while p["State"] == "running" and time.time() < end:
        time.sleep(0.05)
        p = job_props(env, path)
    return p


def depth(env, vm, disk):
    for name, _top, _fmt, d, _size in env.call("ListDisks", vm):
        if str(name) == disk:
            return int(d)
    return None


def parsed(draws):
    return [(LINE.match(line), line, columns) for line, columns in draws]


def has_rate(m):
    return m is not None and m.group("rate") is not None and m.group("left") is not None


def progress_section(env, sig):
    """1. The line on a terminal, resized while the job runs."""
    label = "Flattening vm/d1"
    run = PtyRun(["rebase", "vm", "d1", "none"], 100)
    try:
        run.pump_until(lambda: any(has_rate(m) for m, _, _ in parsed(run.draws())), 30)
        path, operation = find_job(env, "vm", "d1")
        check_eq(operation, "flatten", "the running job is listed by ListJobs as a flatten of vm/d1")
        total = job_props(env, path)["BytesTotal"] if path else 0
        run.pump(0.6)
        run.resize(60)
        run.pump(0.8)
        run.resize(30)
        run.pump(0.8)
        run.resize(16)
        run.pump(0.8)
        run.resize(100)
        rc = run.wait(60)
    finally:
        run.close()

    check_eq(rc, 0, "on a terminal: vdiskctl rebase exits 0 when the flatten is done")
    text = run.text()
    draws = parsed(run.draws())
    by_width = {w: [(m, line) for m, line, columns in draws if columns == w] for w in (100, 60, 30, 16)}
    check(len(by_width[100]) >= 5, f"at 100 columns: the progress line is drawn repeatedly ({len(by_width[100])} times)")
    check(all(m is not None for m, _, _ in draws),
          f"every line has the form of the progress line: {[line for m, line, _ in draws if m is None][:3]}")
    draws = [(m, line, columns) for m, line, columns in draws if m is not None]
    check(all(len(line) <= columns - 1 for _, line, columns in draws),
          "no line is wider than the terminal, one column stays free: "
          f"{[(columns, len(line), line) for _, line, columns in draws if len(line) > columns - 1][:3]}")
    check(not re.search(r"\x1b(?!\[K)", text), f"the only escape sequence is \\033[K: {text[:200]!r}")
    check("\n" not in text, "nothing but the progress line is written on success (no newline)")
    check(text.endswith("\r\x1b[K"), f"the line is cleared at the end: {text[-80:]!r}")

    percents = [int(m.group("percent")) for m, _, _ in draws]
    check(percents and all(a <= b for a, b in zip(percents, percents[1:])),
          f"the percentages never go back ({percents[0] if percents else '-'}..{percents[-1] if percents else '-'})")
    check(len(set(percents)) >= 5, f"the percentage advances ({len(set(percents))} values)")

    wide = [m for m, _ in by_width[100]]
    check(all(m.group("label") == label for m in wide), f"at 100 columns: the label is '{label}'")
    check(all(m.group("filled") is not None for m in wide), "at 100 columns: every line has a bar")
    check(all(m.group("total") is not None and size_of(m.group("total")) == total for m in wide),
          f"at 100 columns: every line shows DONE/TOTAL with TOTAL = BytesTotal ({total})")
    check(all(abs(len(m.group("filled")) - int(m.group("percent")) / 100 * (len(m.group("filled")) + len(m.group("empty"))))
              <= 1 for m in wide),
          "at 100 columns: the bar is filled as far as the percentage")
    check(all(abs(int(m.group("percent")) - 100 * size_of(m.group("done")) / total) <= 1 for m in wide),
          "at 100 columns: the percentage agrees with DONE/TOTAL")
    check(wide and not has_rate(wide[0]), "the first line has no rate and no time left yet (one sample only)")
    rated = [m for m in wide if has_rate(m)]
    check(len(rated) >= 3, f"at 100 columns: lines with a rate and a time left ({len(rated)})")
    check(all((m.group("rate") is None) == (m.group("left") is None) for m in wide),
          "at 100 columns: rate and time left come together")
    # At most 1 MiB per 50 ms: 20 MiB/s (a little more for the clocks' jitter).
    check(all(0 < size_of(m.group("rate")) <= 24 * MiB for m in rated),
          f"the rate is plausible: {sorted({m.group('rate') for m in rated})}")
    bad = []
    for m in rated:
        (done_lo, done_hi), (rate_lo, rate_hi) = size_range(m.group("done")), size_range(m.group("rate"))
        if not (total - done_hi) / rate_hi - 1e-6 <= seconds_of(m.group("left")) <= (total - done_lo) / rate_lo + 1 + 1e-6:
            bad.append(m.group(0))
    check(not bad, f"time left = (TOTAL - DONE) / RATE in whole seconds, rounded up: {bad[:3]}")
    check(all(re.fullmatch(r"\d+:\d\d", m.group("left")) for m in rated), "the time left is written m:ss")

    mid = [m for m, _ in by_width[60]]
    check(len(mid) >= 2, f"at 60 columns: lines drawn ({len(mid)})")
    check(all(m.group("rate") is None for m in mid), "at 60 columns: the rate is left out")
    check(all(m.group("left") is not None and m.group("filled") is not None for m in mid),
          "at 60 columns: the bar and the time left remain")
    narrow = [line for _, line in by_width[30]]
    check(len(narrow) >= 2 and all(re.fullmatch(re.escape(label) + r" +\d+%", line) for line in narrow),
          f"at 30 columns: only the label and the percentage: {narrow[:2]}")
    tiny = [line for _, line in by_width[16]]
    check(len(tiny) >= 2 and all(re.fullmatch(r"Flatten\.\.\. +\d+%", line) for line in tiny),
          f"at 16 columns: the label is cut to fit: {tiny[:2]}")

    if path:
        p = job_props(env, path)
        check_eq((p["State"], p["BytesDone"]), ("done", total), "the job is done with BytesDone = BytesTotal")
        check_eq(sig.wait(sig.finished, path, 10), ("done", "", ""), "Finished(done) was sent")
    check_eq(depth(env, "vm", "d1"), 1, "vm/d1 is flattened (depth 1)")


def pipe_section(env):
    """2. Without a terminal."""
    p = subprocess.run([VDISKCTL, "rebase", "vm", "d2", "none"], capture_output=True, env=vdiskctl_env(COLUMNS="80"),
                       timeout=120)
    check_eq(p.returncode, 0, "piped: vdiskctl rebase exits 0")
    check_eq((p.stdout, p.stderr), (b"", b""), "piped: nothing on stdout or stderr, so no progress line")
    check(b"\r" not in p.stderr + p.stdout and b"\x1b" not in p.stderr + p.stdout, "piped: no \\r and no escape sequence")
    check_eq(depth(env, "vm", "d2"), 1, "piped: vm/d2 is flattened")


def detach_section(env, sig):
    """3. Ctrl-C detaches; the job goes on."""
    run = PtyRun(["rebase", "vm", "d3", "none"], 100)
    try:
        run.pump_until(lambda: any(has_rate(m) for m, _, _ in parsed(run.draws())), 30)
        path, _ = find_job(env, "vm", "d3")
        check(path is not None, f"the job of vm/d3 is listed by ListJobs ({path})")
        before = len(run.out)
        sent = time.monotonic()
        os.write(run.master, b"\x03")
        run.pump_until(lambda: run.proc.poll() is not None, 10)
        took = time.monotonic() - sent
        rc = run.wait(10)
    finally:
        run.close()
    check(took < 3, f"Ctrl-C: vdiskctl exits promptly ({took:.2f} s)")
    check_eq(rc, 4, "Ctrl-C: exit status 4")
    if not path:
        return
    jid = path.rsplit("/", 1)[-1]
    # The echo of ^C may come before or after vdiskctl clears the line: it is left out.
    after = run.text(before).replace("^C", "")
    check_eq(after[after.rfind("\r\x1b[K"):],
             f"\r\x1b[KStopped waiting for job {path}; it keeps running in vdiskd.\r\n"
             f"Run 'vdiskctl jobs' to follow it, or 'vdiskctl cancel {jid}' to cancel it.\r\n",
             "Ctrl-C: the line is cleared, then vdiskctl says it stopped waiting and how to follow or cancel")

    p = job_props(env, path)
    check(p["State"] == "running" and p["BytesDone"] < p["BytesTotal"],
          f"Ctrl-C: the job is still running ({p['State']}, {p['BytesDone']}/{p['BytesTotal']})")
    check(find_job(env, "vm", "d3")[0] == path, "Ctrl-C: ListJobs still lists the job")
    time.sleep(1.0)
    p2 = job_props(env, path)
    check(p2["BytesDone"] > p["BytesDone"] or p2["State"] == "done",
          f"Ctrl-C: the job makes progress after vdiskctl left ({p['BytesDone']} -> {p2['BytesDone']})")
    p = wait_state(env, path, 60)
    check_eq((p["State"], p["ErrorName"], p["BytesDone"]), ("done", "", p["BytesTotal"]),
             "Ctrl-C: the job ends done with all bytes")
    check_eq(sig.wait(sig.finished, path, 10), ("done", "", ""), "Ctrl-C: Finished(done) was sent")
    check_eq(sig.wait(sig.removed, path, 15), "done", "Ctrl-C: JobRemoved(done) after the linger")
    check_eq(depth(env, "vm", "d3"), 1, "Ctrl-C: vm/d3 is flattened")


def cancel_section(env, sig):
    """4. vdiskctl cancel JOB."""
    before = env.snapshot_store()
    run = PtyRun(["rebase", "vm", "d4", "none"], 100)
    try:
        run.pump_until(lambda: len(run.draws()) >= 2, 30)
        path, _ = find_job(env, "vm", "d4")
        check(path is not None, f"the job of vm/d4 is listed by ListJobs ({path})")
        if path:
            jid = path.rsplit("/", 1)[-1]
            p = subprocess.run([VDISKCTL, "cancel", jid], capture_output=True, text=True, env=vdiskctl_env(),
                               timeout=60)
            check_eq((p.returncode, p.stdout, p.stderr), (0, "", ""), f"vdiskctl cancel {jid}: exit 0, silent")
        rc = run.wait(30)
    finally:
        run.close()
    if not path:
        return
    check_eq(rc, 3, "cancel: the vdiskctl that followed the job exits 3")
    p = job_props(env, path)
    check_eq((p["State"], p["ErrorName"]), ("cancelled", CANCELLED), "cancel: State cancelled, ErrorName Cancelled")
    text = run.text()
    check_eq(text[text.rfind("\r\x1b[K"):],
             f"\r\x1b[KFailed to flatten disk 'd4' of VM 'vm': {p['ErrorMessage']} ({CANCELLED})\r\n"
             "The operation was cancelled; run the command again if it is still needed.\r\n",
             "cancel: the follower clears its line and says the flatten was cancelled, with vdiskd's reason")
    check(p["BytesDone"] < p["BytesTotal"], f"cancel: cancelled mid-way ({p['BytesDone']}/{p['BytesTotal']})")
    check_eq(sig.wait(sig.finished, path, 10), ("cancelled", CANCELLED, p["ErrorMessage"]),
             "cancel: Finished(cancelled) was sent")
    check_eq(env.snapshot_store(), before, "cancel: every file and record of the store is as before the job")
    check_eq(depth(env, "vm", "d4"), 2, "cancel: vm/d4 still has its backing image")


def main():
    env = Env(VDISKD)
    try:
        env.start(SLOW)
        sig = Signals(env)
        for name, size in IMAGES.items():
            src = os.path.join(env.tmp, name + ".raw")
            with open(src, "wb") as f:
                for i in range(size // MiB):
                    f.write(bytes([0x11 + i]) * MiB)
            err, msg = env.import_file(name, "raw", src)
            check_eq(err, None, f"setup: import of {size >> 20} MiB ({msg})")
            os.unlink(src)
        env.call("CreateVM", "vm", dbus.UInt32(0), opts())
        for disk, image in (("d1", "big"), ("d2", "small"), ("d3", "mid"), ("d4", "mid")):
            env.call("CreateDisk", "vm", disk, image, dbus.UInt64(0), opts())

        start = time.monotonic()
        progress_section(env, sig)
        pipe_section(env)
        detach_section(env, sig)
        cancel_section(env, sig)
        print(f"sections took {time.monotonic() - start:.1f} s")
        env.stop()
    finally:
        for p in STARTED:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        env.close()
    finish()


main()
