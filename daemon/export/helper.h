/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Storage helpers: one qemu-system-x86_64 per export lease, with no machine, no devices, no network
 * and QEMU's own seccomp sandbox, running as a uid of its own (when vdiskd is root) without any
 * capability and with no_new_privs. It receives every file it may touch as an fd over its QMP monitor,
 * so it cannot open a store file by path: the store is 0700 and owned by uid 0.
 *
 * It has two monitors. The first is one end of a socket pair, inherited as fd 4 ("-chardev
 * socket,fd=4"): the vdiskd that starts the helper speaks to it there, on a connection that exists
 * before QEMU does. The second is a listening AF_UNIX socket that vdiskd binds in the helper's runtime
 * directory (0700, under vdiskd's runtime directory) before starting the helper, which inherits it as
 * fd 3 ("-chardev socket,fd=3,server=on"): a vdiskd that restarted connects to it, since the helper
 * outlives vdiskd (it is started in its own session, and vdiskd's unit uses KillMode=process): running
 * VMs keep their disks. The helper never learns or needs a path. Why not one listening monitor for
 * both: see helper.c (QEMU 7.2 races when the first connection arrives while it starts).
 *
 * vdiskd keeps CAP_SETUID and CAP_SETGID permitted (never effective) to switch the forked child to
 * the helper's uid, and CAP_KILL permitted to end a helper that does not quit when asked; each is
 * raised only for that one step.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/un.h>

#include "qmp.h"

#define HELPER_QMP_SOCKET "qmp.sock"
#define HELPER_LOG "helper.log"
#define HELPER_TIMEOUT_USEC (10U * 1000000U)

typedef struct HelperSpawn {
        const char *binary; /* qemu-system-x86_64 */
        const char *dir;    /* the helper's runtime directory: exists, 0700, vdiskd's own */
        const char *name;   /* QEMU's -name: the lease id, checked again after a restart */
        bool switch_uid;    /* run as `uid`/`gid` (vdiskd is root); else as vdiskd's own uid */
        uid_t uid;
        gid_t gid;
} HelperSpawn;

typedef struct Helper {
        pid_t pid;
        int pidfd;     /* -EBADF if the kernel has none for it */
        bool is_child; /* started by this vdiskd: its pid cannot be reused before it is reaped */
        char *dir;     /* its directory (for messages, and to tell whether one found again after a restart
                        * still runs) */
        QmpClient *qmp;
} Helper;

/* The AF_UNIX address of socket `name` in directory `dir`; -ENAMETOOLONG if it does not fit. */
int helper_socket_address(const char *dir, const char *name, struct sockaddr_un *sa, socklen_t *len);

/* Starts a helper and completes its QMP handshake. */
int helper_spawn(const HelperSpawn *p, Helper **ret);
/* The same in two halves, so that an event loop need not wait for QEMU to start: helper_spawn_start()
 * returns once the helper runs its binary, with h->qmp connected but before the greeting (readable on
 * qmp_client_fd() when it is there); helper_handshake() then completes the handshake, waiting at most
 * `timeout_usec`. On failure of the latter the caller stops the helper. */
int helper_spawn_start(const HelperSpawn *p, Helper **ret);
int helper_handshake(Helper *h, uint64_t timeout_usec);
/* Finds the helper of `dir` again (after vdiskd restarted): connects to its monitor, checks that it
 * answers to `name`, and takes a pidfd of `pid` (taken before the monitor answered, so it cannot be
 * another process that got a reused pid). -ECONNREFUSED/-ENOENT: the helper is gone. */
int helper_attach(const char *dir, const char *name, pid_t pid, Helper **ret);
/* Asks whatever helper serves the monitor socket of `dir` to quit, without knowing its pid (an export
 * whose start vdiskd did not finish). 0 if one answered, -ECONNREFUSED/-ENOENT if none is there. */
int helper_quit_dir(const char *dir);
/* Logs the last lines the helper wrote to its log (QEMU's own messages: an assertion, a refusal), each
 * escaped (the helper is not trusted), at most HELPER_LOG_TAIL bytes: for a helper that ended on its own. */
#define HELPER_LOG_TAIL 2048
void helper_log_tail(const Helper *h);
/* Asks the helper to quit (QEMU flushes its caches and closes its images), waits up to `timeout_usec`
 * for it to exit, else kills it. Returns once it is gone; < 0 if it could not be killed (it may still
 * be running). */
int helper_stop(Helper *h, uint64_t timeout_usec);
/* Whether the helper process has exited (without reaping it). */
bool helper_exited(const Helper *h);
/* The same, waiting at most `timeout_ms` for it to exit. */
bool helper_wait_exited(const Helper *h, int timeout_ms);
/* "exited with status N", "was killed by signal SIGX", or "exited" when that cannot be known (a helper
 * found again after a restart is not vdiskd's child); the helper must have exited. */
void helper_describe_exit(const Helper *h, char *buf, size_t size);
/* Forgets the helper without stopping it (the monitor connection is closed; the helper keeps
 * running and accepts the next one). */
Helper *helper_free(Helper *h);
