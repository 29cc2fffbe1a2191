/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * A small, strict client for the QMP monitor of a storage helper (qemu-system-x86_64 -machine none).
 *
 * The helper parses guest-controlled data, so its monitor is not trusted: every message is bounded
 * (QMP_MESSAGE_MAX), must be one JSON object per line with exactly one of "return", "error", "event"
 * or "QMP", a reply must carry the id of the call awaiting it, no file descriptor may come from the
 * peer, and at most QMP_EVENTS_MAX events wait in the queue. Any breach declares the connection
 * broken: the socket is shut down, the client is "dead", and the call that saw it returns the reason
 * (-EBADMSG for a malformed, oversized or unexpected message or an fd from the peer, -ENOBUFS for a
 * full event queue, -ECONNRESET when the peer closed, -EPIPE when a write found it closed). After
 * that every call returns -ENOTCONN. Nothing the peer sends allocates more than QMP_MESSAGE_MAX + 2
 * bytes of buffer plus the parsed object of one message at a time (and the queued events).
 *
 * Every synchronous wait has a timeout (-ETIMEDOUT; the connection stays usable only if nothing of
 * the call was left half-written or unanswered, so a timed-out call also kills the client: a late
 * reply would otherwise be taken for the next one's).
 */

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-event.h>

#include "macro.h"

/* One message, without its line end. QEMU's largest replies (query-named-block-nodes of a long
 * chain, flat) stay far below. */
#define QMP_MESSAGE_MAX (1024U * 1024U)
/* Nesting of one message; callers ask for flat lists (query-named-block-nodes "flat": true). */
#define QMP_JSON_DEPTH_MAX 64
/* Events received but not yet taken; one more declares the connection broken (-ENOBUFS): an event
 * dropped silently could be the BLOCK_JOB_COMPLETED a job waits for. */
#define QMP_EVENTS_MAX 256U
/* "Class: desc" of an error reply, with its NUL: printable ASCII only, cut with "..." if longer. */
#define QMP_ERROR_TEXT_MAX 256U
/* Command and event names: [A-Za-z0-9_-], at most this long. */
#define QMP_NAME_MAX 64U

typedef struct QmpClient QmpClient;

typedef struct QmpVersion {
        unsigned major, minor, micro;
} QmpVersion;

/* Takes `fd`, a connected AF_UNIX stream socket, on success only (on failure the caller still owns
 * it) and makes it non-blocking. -ENOTSOCK/-EPROTOTYPE if it is not an AF_UNIX stream socket. */
int qmp_client_new(int fd, QmpClient **ret);

/* NULL-safe; closes the socket and drops queued events. May be called from the event handler (see
 * qmp_client_attach_event()). Returns NULL. */
QmpClient *qmp_client_free(QmpClient *c);
static inline void qmp_client_freep(QmpClient **c) {
        qmp_client_free(*c);
}
#define _cleanup_qmp_client_ _cleanup_(qmp_client_freep)

/* For json-c objects of QMP messages and their arguments. */
static inline void json_object_putp(json_object **o) {
        json_object_put(*o);
}
#define _cleanup_json_ _cleanup_(json_object_putp)

/* Reads the greeting {"QMP": {"version": {"qemu": {"major", "minor", "micro"}, ...}, "capabilities":
 * [...]}}, records the version, sends qmp_capabilities and expects {"return": {}}. Once only
 * (-EALREADY after). */
int qmp_client_handshake(QmpClient *c, uint64_t timeout_usec);

/* Runs `command` (-EINVAL unless [A-Za-z0-9_-]{1,QMP_NAME_MAX}) with `arguments` (NULL or an object;
 * borrowed, not consumed) and, if fd_to_pass >= 0, that fd sent with SCM_RIGHTS on the same sendmsg()
 * as the command's first bytes (for add-fd and getfd; the caller keeps its copy). Waits at most
 * timeout_usec for the reply with this call's id; events that come first are queued in order.
 *
 * Returns 0 with *ret_return (if not NULL) = the "return" value (a new reference; any JSON type);
 * -EREMOTEIO for an error reply, with *ret_error (if not NULL) = "Class: desc" made printable ASCII
 * and at most QMP_ERROR_TEXT_MAX - 1 bytes (free() it), the connection staying usable; -ENOTCONN if
 * the client is dead or not yet through the handshake; -ETIMEDOUT, -ECONNRESET, -EPIPE, -EBADMSG,
 * -ENOBUFS as above, after which the client is dead. */
int qmp_client_call(
                QmpClient *c,
                const char *command,
                json_object *arguments,
                int fd_to_pass,
                uint64_t timeout_usec,
                json_object **ret_return,
                char **ret_error);

/* Pops the oldest queued event, the whole message ({"event": NAME, "data": {...}, "timestamp": ...}):
 * returns 1 with *ret (a reference the caller puts), or 0 if none is queued. The name has been checked
 * ([A-Za-z0-9_-], bounded); "data", if present, is an object and nothing else of it is checked: treat
 * it as input from the peer. Reads nothing from the socket. */
int qmp_client_next_event(QmpClient *c, json_object **ret);

/* Events from the event loop: `handler` is called once per event, in order (queued ones first), with
 * its name and data (NULL if the event has none; both borrowed for the call only), and once with
 * name = data = NULL when the connection has died (after the events received before), never again
 * after that. Each event is delivered from its own dispatch of a defer source, and the loop does not
 * touch the client after the handler returns: the handler may call qmp_client_call() (which reads the
 * socket itself and queues the events it meets, for the next dispatches), qmp_client_next_event(),
 * qmp_client_detach_event() or qmp_client_free(). Its return value is only logged if negative.
 * The loop reads the socket only while fewer than QMP_EVENTS_MAX / 2 events are queued, so a burst
 * waits in the socket instead of overflowing the queue.
 * Requires the handshake to be done (-EINVAL otherwise); -EBUSY if already attached. */
typedef int (*QmpEventHandler)(QmpClient *c, const char *event, json_object *data, void *userdata);
int qmp_client_attach_event(QmpClient *c, sd_event *e, int64_t priority, QmpEventHandler handler, void *userdata);
void qmp_client_detach_event(QmpClient *c);

bool qmp_client_is_dead(const QmpClient *c);
/* The connection's socket, to wait for the greeting in an event loop before the handshake (which then
 * does not block); still the client's own. */
int qmp_client_fd(const QmpClient *c);
/* Why it died (a negative errno as above), 0 if alive. */
int qmp_client_dead_reason(const QmpClient *c);
/* The version from the greeting; NULL before the handshake. */
const QmpVersion *qmp_client_version(const QmpClient *c);
