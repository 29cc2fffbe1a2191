#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""The man pages cannot fall behind the code:

- vdiskctl.1: every command of 'vdiskctl --help' has its own entry, and every option that
  'vdiskctl help COMMAND' lists is named in that command's entry (or, for -h/--help, --version,
  --json and --no-legend, under OPTIONS); the exit codes of 'vdiskctl --help' are listed.
- org.vdisk1.5: every method, signal and property of dbus-interfaces/*.xml is described in the section of
  its interface, methods and signals with their exact argument types and names (in, then out), and every
  org.vdisk1.Error name that daemon/ can return is described under ERRORS.
- vdiskd.8: every option of 'vdiskd --help', every key of data/vdiskd.conf, every structured journal field
  of daemon/shared/log.c and every environment variable the daemon reads is documented.

Usage: test-man-coverage.py SOURCE_ROOT VDISKCTL VDISKD PAGE... (vdiskctl.1, org.vdisk1.5, vdiskd.8)"""

import glob
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

root, vdiskctl, vdiskd = sys.argv[1:4]
pages = {os.path.basename(p): p for p in sys.argv[4:]}
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)
    return cond


def page(name):
    # scdoc writes "\&" after every period (so that none starts a roff request); drop it to match text.
    return open(pages[name], encoding="utf-8").read().replace("\\&", "")


def sections(roff):
    """.SH sections of a roff page: title → text."""
    out = {}
    parts = re.split(r"^\.SH (.*)$", roff, flags=re.M)
    for i in range(1, len(parts), 2):
        out[parts[i].strip().strip('"')] = parts[i + 1]
    return out


def bold(word):
    return r"\fB" + word + r"\fR"


def run(*argv):
    env = dict(os.environ, LC_ALL="C", LANGUAGE="", NO_COLOR="1")
    env.pop("VDISKCTL_LOCALEDIR", None)
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60).stdout


# ---- vdiskctl(1) ----

ctl = page("vdiskctl.1")
ctl_sections = sections(ctl)
main_help = run(vdiskctl, "--help")
verbs = []
for line in main_help.splitlines():
    m = re.match(r"^  ([a-z][a-z-]+)(?: |$)", line)
    if m and not line.startswith("  -"):
        verbs.append(m.group(1))
check(len(verbs) >= 20, f"vdiskctl --help lists the commands ({len(verbs)})")

commands = ctl_sections.get("COMMANDS", "")
# An entry is a paragraph whose first line starts with the command in bold.
entry_starts = {}
for m in re.finditer(r"^\\fB([a-z-]+)\\fR.*$", commands, re.M):
    if m.group(1) in verbs and m.group(1) not in entry_starts:
        entry_starts[m.group(1)] = m.start()
bounds = sorted(entry_starts.values()) + [len(commands)]


def entry(verb):
    start = entry_starts[verb]
    return commands[start:bounds[bounds.index(start) + 1]]


GLOBAL = {"-h", "--help", "--version", "--json", "--no-legend"}
global_text = ctl_sections.get("OPTIONS", "")
for g in sorted(GLOBAL):
    check(bold(g) in global_text, f"vdiskctl.1 OPTIONS: {g}")

for verb in verbs:
    if not check(verb in entry_starts, f"vdiskctl.1: command '{verb}' has an entry under COMMANDS"):
        continue
    text = entry(verb)
    verb_help = run(vdiskctl, "help", verb)
    options = set()
    for line in verb_help.split("\nOptions:\n", 1)[-1].splitlines():
        m = re.match(r"^\s+(-h --help|--[a-z-]+)", line)
        if m:
            options |= set(m.group(1).split())
    check(options >= {"-h", "--help"}, f"vdiskctl help {verb}: lists its options")
    for o in sorted(options - {"-h", "--help"}):
        check(bold(o) in text, f"vdiskctl.1: option {o} of '{verb}' described in its entry")
    synopsis = re.search(rf"^Usage: vdiskctl {re.escape(verb)} (.*)$", verb_help, re.M)
    for arg in re.findall(r"\b([A-Z]{2,})\b", synopsis.group(1) if synopsis else ""):
        if arg not in ("OPTIONS",):
            check(r"\fI" + arg + r"\fR" in text, f"vdiskctl.1: argument {arg} of '{verb}' in its entry")

exit_text = ctl_sections.get("EXIT STATUS", "")
for code in re.findall(r"^  ([0-9])  ", main_help, re.M):
    check(bold(code) in exit_text, f"vdiskctl.1 EXIT STATUS: {code}")
check(len(re.findall(r"^  ([0-9])  ", main_help, re.M)) == 5, "vdiskctl --help lists exit codes 0-4")
for var in ("DBUS_SYSTEM_BUS_ADDRESS", "NO_COLOR"):
    check(var in ctl_sections.get("ENVIRONMENT", ""), f"vdiskctl.1 ENVIRONMENT: {var}")
for src in glob.glob(os.path.join(root, "client", "*.c")):
    for var in re.findall(r'getenv\("([A-Z_]+)"\)', open(src).read()):
        check(var in ctl_sections.get("ENVIRONMENT", ""), f"vdiskctl.1 ENVIRONMENT: {var} ({os.path.basename(src)})")

# ---- org.vdisk1(5) ----

api = page("org.vdisk1.5")
api_sections = sections(api)
for xml in sorted(glob.glob(os.path.join(root, "dbus-interfaces", "*.xml"))):
    for iface in ET.parse(xml).getroot().iter("interface"):
        name = iface.get("name")
        text = api_sections.get(name.upper())
        if not check(text is not None, f"org.vdisk1.5: section {name.upper()}"):
            continue
        for prop in iface.iter("property"):
            check(re.search(re.escape(bold(prop.get("name"))) + r" \(" + re.escape(bold(prop.get("type"))), text)
                  is not None, f"org.vdisk1.5: property {name}.{prop.get('name')} ({prop.get('type')})")
        for kind in ("method", "signal"):
            for member in iface.iter(kind):
                args = list(member.iter("arg"))
                ins = [a for a in args if a.get("direction", "in") == "in"] if kind == "method" else args
                outs = [a for a in args if a.get("direction") == "out"]

                def sig(lst):
                    return ", ".join(bold(a.get("type")) + " " + r"\fI" + a.get("name") + r"\fR" for a in lst)

                want = bold(member.get("name")) + "(" + sig(ins) + ")"
                if kind == "method":
                    want += " -> (" + sig(outs) + ")"
                check(re.search(r"^" + re.escape(want) + r"$", text, re.M) is not None,
                      f"org.vdisk1.5: {kind} {name}.{member.get('name')} with its arguments: {want}")

errors_text = api_sections.get("ERRORS", "")
error_names = set()
# The daemon's error names are defined once, in daemon/shared/vdisk-bus.h (shared with vdiskctl).
names_h = open(os.path.join(root, "daemon", "shared", "vdisk-bus.h")).read()
error_names |= {"org.vdisk1.Error." + n for n in re.findall(r'^#define VDISK_ERROR_\w+ VDISK_ERROR_PREFIX "([A-Za-z]+)"',
                                                            names_h, re.M)}
error_names |= {"org.freedesktop.DBus.Error.InvalidArgs", "org.freedesktop.DBus.Error.AccessDenied"}
check(len(error_names) >= 12, f"the daemon's error names found ({len(error_names)})")
for e in sorted(error_names):
    check(re.search(r"^" + re.escape(bold(e)) + r"$", errors_text, re.M) is not None, f"org.vdisk1.5 ERRORS: {e}")
auth = api_sections.get("AUTHORIZATION", "")
for who in ("uid 0", "AdminGroup=", "owner uid", "anyone"):
    check(who in auth, f"org.vdisk1.5 AUTHORIZATION: {who}")

# ---- vdiskd(8) ----

daemon = page("vdiskd.8")
daemon_sections = sections(daemon)
daemon_help = run(vdiskd, "--help")
daemon_options = set(re.findall(r"^\s+(--[a-z-]+)", daemon_help, re.M))
check(len(daemon_options) >= 4, f"vdiskd --help lists its options ({sorted(daemon_options)})")
for o in sorted(daemon_options):
    check(bold(o) in daemon_sections.get("OPTIONS", ""), f"vdiskd.8 OPTIONS: {o}")

conf = open(os.path.join(root, "data", "vdiskd.conf")).read()
config_text = daemon_sections.get("CONFIGURATION", "")
section = None
n_keys = 0
for line in conf.splitlines():
    m = re.match(r"^\[([A-Za-z]+)\]$", line)
    if m:
        section = m.group(1)
        check(f".SS [{section}]" in config_text, f"vdiskd.8 CONFIGURATION: section [{section}]")
        continue
    m = re.match(r"^#([A-Za-z]+)=", line)
    if m and section:
        n_keys += 1
        key = m.group(1)
        sub = config_text.split(f".SS [{section}]", 1)[-1].split(".SS ", 1)[0]
        check(bold(key + "=") in sub, f"vdiskd.8 CONFIGURATION: [{section}] {key}=")
check(n_keys >= 10, f"data/vdiskd.conf lists its keys ({n_keys})")

log_c = open(os.path.join(root, "daemon", "shared", "log.c")).read()
fields = set(re.findall(r'"(VDISK_[A-Z]+)=', log_c))
check(fields >= {"VDISK_OP", "VDISK_VM", "VDISK_DISK", "VDISK_LAYER"}, f"log.c's journal fields ({sorted(fields)})")
for f in sorted(fields):
    check(bold(f + "=") in daemon_sections.get("LOGGING", ""), f"vdiskd.8 LOGGING: {f}=")

env_text = daemon_sections.get("ENVIRONMENT", "")
env_vars = set()
for src in glob.glob(os.path.join(root, "daemon", "**", "*.c"), recursive=True):
    if "/format/vdisk-img.c" in src:
        continue  # the engine's command-line tool, not the daemon
    env_vars |= set(re.findall(r'getenv\("([A-Z_]+)"\)', open(src).read()))
check({"VDISKD_CRASH_AT", "VDISKD_TEST_STEP_BYTES", "VDISKD_TEST_STEP_DELAY_MS"} <= env_vars,
      f"the daemon's environment variables found ({sorted(env_vars)})")
for v in sorted(env_vars):
    check(bold(v) in env_text or bold(v + "=") in env_text or re.search(re.escape(r"\fB" + v + "=\\fR"), env_text),
          f"vdiskd.8 ENVIRONMENT: {v}")
test_only = env_text.split("for tests only", 1)[-1]
for v in sorted(x for x in env_vars if x.startswith("VDISKD_")):
    check(v in test_only, f"vdiskd.8 ENVIRONMENT: {v} is documented as for tests only")

if failures:
    print(f"{len(failures)} check(s) failed:")
    for f in failures:
        print("  " + f)
    sys.exit(1)
print("all checks passed")
