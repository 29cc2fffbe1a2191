/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <cap-ng.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "escape.h"
#include "helper.h"
#include "log.h"
#include "util.h"

/* The helper's command line: a QEMU without a machine, devices, network or display, whose only ways in
 * are its two monitors. fd 4 is one end of a socket pair, connected before QEMU starts: vdiskd speaks
 * to a helper it started through it. fd 3 is a listening socket bound in the helper's root-only
 * directory, for a vdiskd that restarts and finds the helper again. The first connection is never made
 * through the listener: QEMU 7.2 may accept a connection on its main loop while the monitor is being
 * moved to its I/O thread, and then greets twice and lets both threads read commands (seen as
 * greetings repeated and as command bytes reordered or cut, about one start in 350); a socket connected
 * before the monitor exists takes the path QEMU sets up before any of its threads runs. TCG is the only accelerator the monitor-only machine can have in Debian's
 * QEMU (no qtest); split-wx and a one-megabyte translation buffer keep it from mapping 1 GiB of
 * writable and executable memory. QEMU's sandbox forbids spawning, privilege changes and resource
 * control on top of vdiskd's own restrictions. */
#define HELPER_PR_SET_MDWE 65              /* PR_SET_MDWE, Linux 6.3 */
#define HELPER_PR_MDWE_REFUSE_EXEC_GAIN 1U /* PR_MDWE_REFUSE_EXEC_GAIN */

/* glibc's malloc gives buffers of 128 KiB and more their own mapping and unmaps them when freed; QEMU
 * 7.2's NBD server allocates (and so maps, zero-fills and unmaps) a buffer per request, 1 MiB for
 * sequential I/O. A higher threshold keeps those in the heap (B8: 300 × 1 MiB writes 1.85 s → 0.76 s,
 * no munmap; the helper's RSS stays at about 32 MB). */
static const char *const helper_environment[] = {
        "LC_ALL=C",
        "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=4194304:glibc.malloc.trim_threshold=8388608",
        NULL,
};

static const char *const helper_args[] = {
        "-nodefaults", "-no-user-config", "-nographic", "-machine", "none", "-accel", "tcg,split-wx=on,tb-size=1",
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        "-chardev", "socket,id=vdisk-monitor,fd=3,server=on,wait=off", "-mon", "chardev=vdisk-monitor,mode=control",
        "-chardev", "socket,id=vdisk-start,fd=4", "-mon", "chardev=vdisk-start,mode=control",
        "-msg", "timestamp=on",
};

int helper_socket_address(const char *dir, const char *name, struct sockaddr_un *sa, socklen_t *len) {
        int n;

        *sa = (struct sockaddr_un) { .sun_family = AF_UNIX };
        n = snprintf(sa->sun_path, sizeof(sa->sun_path), "%s/%s", dir, name);
        if (n < 0 || (size_t) n >= sizeof(sa->sun_path))
                return -ENAMETOOLONG;
        *len = offsetof(struct sockaddr_un, sun_path) + n + 1;
        return 0;
}

static int monitor_listen(const char *dir) {
        _cleanup_close_ int fd = -EBADF;
        struct sockaddr_un sa;
        socklen_t len;
        int r;

        r = helper_socket_address(dir, HELPER_QMP_SOCKET, &sa, &len);
        if (r < 0)
                return r;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return negative_errno();
        (void) unlink(sa.sun_path);
        if (bind(fd, (struct sockaddr *) &sa, len) < 0 || listen(fd, 1) < 0)
                return negative_errno();
        return TAKE_FD(fd);
}

/* Connects to the listening monitor of a helper found again (after a restart) and negotiates. */
static int monitor_connect(const char *dir, QmpClient **ret) {
        _cleanup_close_ int fd = -EBADF;
        struct sockaddr_un sa;
        QmpClient *c;
        socklen_t len;
        int r;

        r = helper_socket_address(dir, HELPER_QMP_SOCKET, &sa, &len);
        if (r < 0)
                return r;
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return negative_errno();
        if (connect(fd, (struct sockaddr *) &sa, len) < 0)
                return negative_errno();
        r = qmp_client_new(fd, &c);
        if (r < 0)
                return r;
        TAKE_FD(fd);
        r = qmp_client_handshake(c, HELPER_TIMEOUT_USEC);
        if (r < 0) {
                qmp_client_free(c);
                return r;
        }
        *ret = c;
        return 0;
}

/* Raises (or lowers) one capability in the effective set; it must be permitted already. */
static int cap_effective(unsigned cap, bool on) {
        if (geteuid() != 0)
                return 0;
        if (capng_get_caps_process() < 0 ||
            capng_update(on ? CAPNG_ADD : CAPNG_DROP, CAPNG_EFFECTIVE, cap) < 0 ||
            capng_apply(CAPNG_SELECT_CAPS) < 0)
                return -EPERM;
        return 0;
}

/* In the forked child: becomes the helper, or reports errno through `errpipe` and exits. No return. */
_noreturn_ static void helper_exec(const HelperSpawn *p, int monitor, int start, int log_fd, int errpipe) {
        const char *argv[ELEMENTSOF(helper_args) + 4];
        sigset_t none;
        size_t n = 0;
        int r = 0, null_fd;

        (void) setsid(); /* not in vdiskd's session: a signal to vdiskd's group does not reach VMs' disks */
        sigemptyset(&none);
        (void) sigprocmask(SIG_SETMASK, &none, NULL);
        for (int sig = 1; sig < _NSIG; sig++)
                (void) signal(sig, SIG_DFL);

        /* Out of the way of the numbers they go to first: any of them may be 3 or 4 now. */
        monitor = fcntl(monitor, F_DUPFD_CLOEXEC, 5);
        start = monitor < 0 ? -1 : fcntl(start, F_DUPFD_CLOEXEC, 5);
        log_fd = start < 0 ? -1 : fcntl(log_fd, F_DUPFD_CLOEXEC, 5);
        null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (log_fd < 0 || null_fd < 0 || dup2(null_fd, 0) < 0 || dup2(log_fd, 1) < 0 || dup2(log_fd, 2) < 0 ||
            dup2(monitor, 3) < 0 || dup2(start, 4) < 0)
                r = -errno;
        /* Nothing else of vdiskd's goes with it (all its fds are O_CLOEXEC already; this makes sure, and
         * keeps `errpipe` open until the exec). */
        if (r >= 0 && close_range(5, ~0U, CLOSE_RANGE_CLOEXEC) < 0 && errno != ENOSYS)
                r = -errno;
        if (r >= 0 && p->switch_uid) {
                if (cap_effective(CAP_SETGID, true) < 0 || cap_effective(CAP_SETUID, true) < 0)
                        r = -EPERM;
                /* Changing all uids away from 0 clears the permitted and effective capability sets. */
                else if (setgroups(0, NULL) < 0 || setresgid(p->gid, p->gid, p->gid) < 0 ||
                         setresuid(p->uid, p->uid, p->uid) < 0)
                        r = -errno;
        }
        if (r >= 0 && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
                r = -errno;
        /* No memory that is writable and executable, ever (TCG's split-wx needs none); kernels before
         * 6.3 do not know the setting. */
        if (r >= 0 && prctl(HELPER_PR_SET_MDWE, HELPER_PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) < 0 && errno != EINVAL)
                r = -errno;
        if (r >= 0) {
                argv[n++] = p->binary;
                argv[n++] = "-name";
                argv[n++] = p->name;
                for (size_t i = 0; i < ELEMENTSOF(helper_args); i++)
                        argv[n++] = helper_args[i];
                argv[n] = NULL;
                /* Nothing of vdiskd's environment (its test hooks, bus and notify addresses, malloc
                 * settings): QEMU needs none. */
                execve(p->binary, (char **) argv, (char **) helper_environment);
                r = -errno;
        }
        (void) !write(errpipe, &r, sizeof(r));
        _exit(127);
}

/* Without a pidfd (a kernel or a valgrind without pidfd_open): a child is polled with waitid(); a helper
 * found again after a restart is gone once its monitor socket refuses connections (only the helper
 * holds the listening socket). */
static int wait_exit_polling(const Helper *h, int timeout_ms) {
        for (int waited = 0;; waited += 10) {
                siginfo_t si = {};
                struct sockaddr_un sa;
                socklen_t len;

                if (h->is_child) {
                        if (waitid(P_PID, (id_t) h->pid, &si, WEXITED | WNOHANG | WNOWAIT) < 0)
                                return errno == ECHILD ? 1 : negative_errno();
                        if (si.si_pid == h->pid)
                                return 1;
                } else if (h->dir && helper_socket_address(h->dir, HELPER_QMP_SOCKET, &sa, &len) >= 0) {
                        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                        if (fd < 0)
                                return negative_errno();
                        if (connect(fd, (struct sockaddr *) &sa, len) < 0 && (errno == ECONNREFUSED || errno == ENOENT))
                                return 1;
                } else
                        return -EBADF;
                if (waited >= timeout_ms)
                        return 0;
                (void) poll(NULL, 0, 10);
        }
}

static int wait_exit(const Helper *h, int timeout_ms) {
        struct pollfd pfd = { .fd = h->pidfd, .events = POLLIN };
        int r;

        if (h->pidfd < 0)
                return wait_exit_polling(h, timeout_ms);
        r = poll(&pfd, 1, timeout_ms);
        if (r < 0)
                return negative_errno();
        return r > 0;
}

static void reap(const Helper *h) {
        siginfo_t si;

        /* Only a helper this vdiskd started is its child; after a restart, init reaps them. */
        if (h->is_child && h->pidfd >= 0)
                (void) waitid(P_PIDFD, h->pidfd, &si, WEXITED | WNOHANG);
        else if (h->is_child)
                (void) waitid(P_PID, (id_t) h->pid, &si, WEXITED | WNOHANG);
}

int helper_spawn_start(const HelperSpawn *p, Helper **ret) {
        _cleanup_close_ int monitor = -EBADF, log_fd = -EBADF, ours = -EBADF, theirs = -EBADF;
        _cleanup_free_ char *log_path = NULL;
        int errpipe[2], pair[2], child_error = 0;
        Helper *h;
        pid_t pid;
        ssize_t n;
        int r;

        monitor = monitor_listen(p->dir);
        if (monitor < 0)
                return log_error_errno(monitor, "Failed to create the monitor socket of helper %s", p->name);
        if (asprintf(&log_path, "%s/%s", p->dir, HELPER_LOG) < 0)
                return -ENOMEM;
        log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (log_fd < 0)
                return log_error_errno(errno, "Failed to create %s", log_path);
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
                return negative_errno();
        ours = pair[0];
        theirs = pair[1];
        if (pipe2(errpipe, O_CLOEXEC) < 0)
                return negative_errno();

        pid = fork();
        if (pid < 0) {
                r = negative_errno();
                safe_close(errpipe[0]);
                safe_close(errpipe[1]);
                return log_error_errno(r, "Failed to fork helper %s", p->name);
        }
        if (pid == 0) {
                safe_close(errpipe[0]);
                helper_exec(p, monitor, theirs, log_fd, errpipe[1]);
        }
        safe_close(errpipe[1]);
        theirs = safe_close(theirs);
        do
                n = read(errpipe[0], &child_error, sizeof(child_error));
        while (n < 0 && errno == EINTR);
        safe_close(errpipe[0]);

        h = calloc(1, sizeof(Helper));
        if (!h) {
                (void) kill(pid, SIGKILL);
                return -ENOMEM;
        }
        h->pid = pid;
        h->is_child = true;
        h->pidfd = pidfd_open(pid, 0);
        if (h->pidfd < 0)
                h->pidfd = -errno;
        if (n == (ssize_t) sizeof(child_error) && child_error < 0) {
                r = log_error_errno(child_error, "Failed to start helper %s (%s)", p->name, p->binary);
                reap(h);
                helper_free(h);
                return r;
        }
        h->dir = strdup(p->dir);
        r = h->dir ? qmp_client_new(ours, &h->qmp) : -ENOMEM;
        if (r >= 0)
                TAKE_FD(ours);
        if (r < 0) {
                log_error_errno(r, "Failed to set up the monitor of helper %s (pid %d)", p->name, (int) pid);
                (void) helper_stop(h, 0);
                helper_free(h);
                return r;
        }
        *ret = h;
        return 0;
}

int helper_handshake(Helper *h, uint64_t timeout_usec) {
        const QmpVersion *v;
        int r;

        r = qmp_client_handshake(h->qmp, timeout_usec);
        if (r < 0)
                return log_error_errno(r, "Helper pid %d did not answer on its monitor (see %s/%s)", (int) h->pid, h->dir,
                                       HELPER_LOG);
        v = qmp_client_version(h->qmp);
        log_debug("Helper pid %d ready: QEMU %u.%u.%u", (int) h->pid, v->major, v->minor, v->micro);
        return 0;
}

void helper_log_tail(const Helper *h) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *path = NULL;
        char buf[HELPER_LOG_TAIL + 1], *line, *save = NULL;
        struct stat st;
        ssize_t n;

        if (!h || !h->dir || asprintf(&path, "%s/%s", h->dir, HELPER_LOG) < 0)
                return;
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
        if (fd < 0 || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
                return;
        n = pread(fd, buf, HELPER_LOG_TAIL, st.st_size > HELPER_LOG_TAIL ? st.st_size - HELPER_LOG_TAIL : 0);
        if (n <= 0)
                return;
        buf[n] = 0;
        for (line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
                log_warning("Helper pid %d wrote: %s", (int) h->pid, escape_text(line, (char[256]) {}, 256));
}

int helper_spawn(const HelperSpawn *p, Helper **ret) {
        Helper *h;
        int r;

        r = helper_spawn_start(p, &h);
        if (r < 0)
                return r;
        r = helper_handshake(h, HELPER_TIMEOUT_USEC);
        if (r < 0) {
                (void) helper_stop(h, 0);
                helper_free(h);
                return r;
        }
        *ret = h;
        return 0;
}

int helper_attach(const char *dir, const char *name, pid_t pid, Helper **ret) {
        _cleanup_json_ json_object *reply = NULL;
        json_object *v;
        Helper *h;
        int r;

        h = calloc(1, sizeof(Helper));
        if (!h)
                return -ENOMEM;
        h->pid = pid;
        h->dir = strdup(dir);
        if (!h->dir) {
                free(h);
                return -ENOMEM;
        }
        h->pidfd = pidfd_open(pid, 0);
        if (h->pidfd < 0 && errno != ENOSYS) {
                r = errno == ESRCH ? -ENOENT : -errno;
                helper_free(h);
                return r;
        }
        if (h->pidfd < 0)
                h->pidfd = -EBADF; /* then it can only be asked to quit, not killed */
        r = monitor_connect(dir, &h->qmp);
        if (r >= 0)
                r = qmp_client_call(h->qmp, "query-name", NULL, -EBADF, HELPER_TIMEOUT_USEC, &reply, NULL);
        if (r >= 0 && (!json_object_object_get_ex(reply, "name", &v) || !json_object_is_type(v, json_type_string) ||
                       !streq(json_object_get_string(v), name)))
                r = -ESTALE;
        if (r < 0) {
                helper_free(h);
                return r;
        }
        *ret = h;
        return 0;
}

int helper_quit_dir(const char *dir) {
        QmpClient *c;
        int r;

        r = monitor_connect(dir, &c);
        if (r < 0)
                return r;
        (void) qmp_client_call(c, "quit", NULL, -EBADF, HELPER_TIMEOUT_USEC, NULL, NULL);
        qmp_client_free(c);
        return 0;
}

bool helper_exited(const Helper *h) {
        return wait_exit(h, 0) > 0;
}

bool helper_wait_exited(const Helper *h, int timeout_ms) {
        return wait_exit(h, timeout_ms) > 0;
}

void helper_describe_exit(const Helper *h, char *buf, size_t size) {
        siginfo_t si = {};
        int r = -ECHILD;

        /* WNOWAIT: reap() collects it later. */
        if (h->is_child && h->pidfd >= 0)
                r = waitid(P_PIDFD, h->pidfd, &si, WEXITED | WNOHANG | WNOWAIT);
        else if (h->is_child)
                r = waitid(P_PID, (id_t) h->pid, &si, WEXITED | WNOHANG | WNOWAIT);
        if (r < 0 || si.si_pid == 0)
                snprintf(buf, size, "exited");
        else if (si.si_code == CLD_EXITED)
                snprintf(buf, size, "exited with status %d", si.si_status);
        else
                snprintf(buf, size, "was killed by signal %s%s", sigabbrev_np(si.si_status) ? "SIG" : "",
                         sigabbrev_np(si.si_status) ?: "(unknown)");
}

int helper_stop(Helper *h, uint64_t timeout_usec) {
        int r;

        if (h->qmp && !qmp_client_is_dead(h->qmp) && timeout_usec > 0)
                (void) qmp_client_call(h->qmp, "quit", NULL, -EBADF, timeout_usec, NULL, NULL);
        r = wait_exit(h, (int) (timeout_usec / 1000));
        if (r <= 0) {
                /* Still there (or no pidfd to tell): SIGKILL, with CAP_KILL for this one call when the
                 * helper runs as a uid of its own. */
                (void) cap_effective(CAP_KILL, true);
                /* Never by a pid alone that might have been reused: a helper found again after a restart
                 * is killed only through the pidfd taken while its monitor answered. */
                if (h->pidfd >= 0)
                        r = pidfd_send_signal(h->pidfd, SIGKILL, NULL, 0) < 0 ? negative_errno() : 0;
                else if (h->is_child)
                        r = kill(h->pid, SIGKILL) < 0 ? negative_errno() : 0;
                else
                        r = -ESRCH;
                (void) cap_effective(CAP_KILL, false);
                if (r < 0 && r != -ESRCH) {
                        reap(h);
                        return log_error_errno(r, "Failed to kill helper pid %d", (int) h->pid);
                }
                (void) wait_exit(h, 5000);
        }
        reap(h);
        return 0;
}

Helper *helper_free(Helper *h) {
        if (!h)
                return NULL;
        qmp_client_free(h->qmp);
        safe_close(h->pidfd);
        free(h->dir);
        free(h);
        return NULL;
}
