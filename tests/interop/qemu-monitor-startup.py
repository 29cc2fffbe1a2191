#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Counts QEMU monitor start-up anomalies (docs/design.md, "A start-up race in QEMU 7.2's monitor").

Usage: qemu-monitor-startup.py ROUNDS [MODE...]; MODE is one of
  listen  the monitor on a listening socket at fd 3, connected right after the start (vdiskd until
          2026-12-07)
  pair    the monitor on a socket pair end at fd 3, connected before QEMU starts
  both    vdiskd's set-up now: a listening monitor at fd 3 nobody connects to, the pair at fd 4
Each round starts QEMU once per mode (interleaved) with the storage helper's command line, reads the
greeting, negotiates, sends five blockdev-adds with ids and quits; a start shows an anomaly when a
greeting is not first or comes twice, a reply has the wrong id, or a command is refused. Not part of the
test suite: the anomaly is rare (about one start in several hundred) and the run takes minutes."""
import json, os, socket, subprocess, sys, time

ARGS = ["-nodefaults", "-no-user-config", "-nographic", "-machine", "none", "-accel", "tcg,split-wx=on,tb-size=1",
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny", "-msg", "timestamp=on"]

def start(mode, tmp, i):
    if mode == "listen":
        path = f"{tmp}/qmp{i}"
        l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        l.bind(path); l.listen(1)
        fd = l.fileno()
        args = ["-chardev", "socket,id=m,fd=3,server=on,wait=off", "-mon", "chardev=m,mode=control"]
        p = subprocess.Popen(["qemu-system-x86_64", "-name", f"r{i}"] + ARGS + args, pass_fds=(fd, 3),
                             preexec_fn=lambda: os.dup2(fd, 3), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        l.close()
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(path); os.unlink(path)
    elif mode == "both":
        # vdiskd's set-up: a listener at fd 3 that nobody connects to, a pre-connected end at fd 4
        path = f"{tmp}/qmp{i}"
        l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        l.bind(path); l.listen(1)
        a, b = socket.socketpair()
        lfd, bfd = l.fileno(), b.fileno()
        def setup():
            x, y = os.dup(lfd), os.dup(bfd)
            os.dup2(x, 3); os.dup2(y, 4)
        args = ["-chardev", "socket,id=m,fd=3,server=on,wait=off", "-mon", "chardev=m,mode=control",
                "-chardev", "socket,id=s,fd=4", "-mon", "chardev=s,mode=control"]
        p = subprocess.Popen(["qemu-system-x86_64", "-name", f"r{i}"] + ARGS + args, pass_fds=(lfd, bfd, 3, 4),
                             preexec_fn=setup, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        l.close(); os.unlink(path); b.close(); c = a
    else:
        a, b = socket.socketpair()
        fd = b.fileno()
        args = ["-chardev", "socket,id=m,fd=3", "-mon", "chardev=m,mode=control"]
        p = subprocess.Popen(["qemu-system-x86_64", "-name", f"r{i}"] + ARGS + args, pass_fds=(fd, 3),
                             preexec_fn=lambda: os.dup2(fd, 3), stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        b.close(); c = a
    return p, c

def run(mode, tmp, i):
    p, c = start(mode, tmp, i)
    try:
        return talk(p, c)
    finally:
        c.close()
        if p.poll() is None:  # a start that went wrong may never quit: it is ours to end
            p.kill()
            p.wait()


def talk(p, c):
    c.settimeout(10)
    f = c.makefile("rwb")
    msgs = []
    def readmsg():
        line = f.readline()
        if not line:
            raise EOFError
        m = json.loads(line); msgs.append(m); return m
    bad = []
    m = readmsg()
    if "QMP" not in m: bad.append("first-not-greeting")
    cmds = [{"execute": "qmp_capabilities", "id": 0}]
    for k in range(1, 6):
        cmds.append({"execute": "blockdev-add", "id": k, "arguments": {"driver": "null-co", "node-name": f"node-with-long-name-{k}",
                     "size": 1048576, "read-only": False, "auto-read-only": True, "detect-zeroes": "off"}})
    for cmd in cmds:
        f.write(json.dumps(cmd).encode() + b"\n"); f.flush()
        while True:
            r = readmsg()
            if "QMP" in r: bad.append("greeting-again"); continue
            if "event" in r: continue
            break
        if r.get("id") != cmd["id"]: bad.append(f"id {r.get('id')} for {cmd['id']}")
        if "error" in r: bad.append(f"error on {cmd['id']}: {r['error'].get('desc')}")
    f.write(b'{"execute":"quit"}\n'); f.flush()
    try:
        while True:
            r = readmsg()
            if "QMP" in r: bad.append("greeting-late")
    except (EOFError, OSError, ValueError):
        pass
    p.wait(10)
    return bad

if __name__ == "__main__":
    n = int(sys.argv[1]); modes = sys.argv[2:] or ["listen", "pair"]
    tmp = f"/tmp/qmprace.{os.getpid()}"; os.makedirs(tmp)
    stats = {m: [0, 0, {}] for m in modes}
    for i in range(n):
        for m in modes:
            try:
                bad = run(m, tmp, i)
            except Exception as e:
                bad = [f"exception {type(e).__name__}: {e}"]
            stats[m][0] += 1
            if bad:
                stats[m][1] += 1
                for b in bad: stats[m][2][b] = stats[m][2].get(b, 0) + 1
                print(m, i, bad, flush=True)
    for m, (t, b, kinds) in stats.items():
        print(f"{m}: {b} of {t} starts showed anomalies {kinds}")
    os.rmdir(tmp)
