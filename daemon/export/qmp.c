/* SPDX-License-Identifier: LGPL-2.1-or-later */

#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "log.h"
#include "qmp.h"

/* The read buffer holds at most one partial line: a message, "\r" and "\n". */
#define QMP_BUFFER_MAX (QMP_MESSAGE_MAX + 2U)
#define QMP_BUFFER_INITIAL 4096U
/* Room for a few fds' worth of control data: any fd that comes is closed and refused. */
#define QMP_CMSG_FDS_MAX 16U

typedef enum QmpState {
        QMP_STATE_GREETING,     /* nothing received yet */
        QMP_STATE_CAPABILITIES, /* greeting read, qmp_capabilities not yet answered */
        QMP_STATE_READY,
        QMP_STATE_DEAD,
} QmpState;

struct QmpClient {
        int fd;
        QmpState state;
        int dead_reason;
        QmpVersion version;
        bool have_version;

        char *buf;
        size_t buf_size, buf_allocated;

        uint64_t next_id;

        json_object *events[QMP_EVENTS_MAX]; /* a ring */
        size_t events_first, n_events;

        sd_event_source *io_source, *defer_source;
        QmpEventHandler handler;
        void *userdata;
        bool death_reported;
};

/* What one line turned out to be. */
typedef enum QmpMessageKind {
        QMP_MESSAGE_GREETING,
        QMP_MESSAGE_RETURN,
        QMP_MESSAGE_ERROR,
        QMP_MESSAGE_EVENT,
} QmpMessageKind;

static uint64_t now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U;
}

static uint64_t deadline_after(uint64_t timeout_usec) {
        uint64_t n = now_usec(), d;

        return ADD_OVERFLOW(n, timeout_usec, &d) ? UINT64_MAX : d;
}

/* Milliseconds left for poll(), rounded up so that a wait never ends before the deadline; 0 if past. */
static int poll_timeout_ms(uint64_t deadline) {
        uint64_t n = now_usec(), ms;

        if (n >= deadline)
                return 0;
        ms = (deadline - n + 999U) / 1000U;
        return ms > INT32_MAX ? INT32_MAX : (int) ms;
}

static bool qmp_name_is_valid(const char *s) {
        size_t n = 0;

        for (; s[n]; n++) {
                char ch = s[n];
                if (n >= QMP_NAME_MAX)
                        return false;
                if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                      ch == '_' || ch == '-'))
                        return false;
        }
        return n > 0;
}

/* The loop takes events at its own pace: it parses lines out of the buffer only while fewer than
 * QMP_EVENTS_LOOP_MAX are queued, and reads the socket only when the buffer holds no complete line,
 * so that a burst waits in the socket rather than overflowing the queue. (Synchronous calls parse
 * everything they meet, and may overflow it: -ENOBUFS.) */
#define QMP_EVENTS_LOOP_MAX (QMP_EVENTS_MAX / 2U)

static bool buffer_has_line(const QmpClient *c) {
        return c->buf_size > 0 && memchr(c->buf, '\n', c->buf_size);
}

static void update_sources(QmpClient *c) {
        bool alive = c->state != QMP_STATE_DEAD;
        bool pending = c->n_events > 0 || (!alive && !c->death_reported) ||
                       (alive && c->n_events < QMP_EVENTS_LOOP_MAX && buffer_has_line(c));

        if (c->defer_source)
                (void) sd_event_source_set_enabled(c->defer_source, pending ? SD_EVENT_ON : SD_EVENT_OFF);
        if (c->io_source)
                (void) sd_event_source_set_enabled(c->io_source,
                                                   c->n_events < QMP_EVENTS_LOOP_MAX && !buffer_has_line(c)
                                                           ? SD_EVENT_ON
                                                           : SD_EVENT_OFF);
}

/* Declares the connection dead for `reason` and returns it. The first reason stays. */
static int client_kill(QmpClient *c, int reason) {
        if (c->state == QMP_STATE_DEAD)
                return reason;
        log_debug_errno(reason, "QMP connection closed");
        c->state = QMP_STATE_DEAD;
        c->dead_reason = reason;
        (void) shutdown(c->fd, SHUT_RDWR);
        c->io_source = sd_event_source_disable_unref(c->io_source);
        free(c->buf);
        c->buf = NULL;
        c->buf_size = c->buf_allocated = 0;
        update_sources(c);
        return reason;
}

int qmp_client_new(int fd, QmpClient **ret) {
        int type = 0, domain = 0, flags;
        socklen_t len = sizeof(int);
        QmpClient *c;

        if (fd < 0 || !ret)
                return -EINVAL;
        if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
                return negative_errno();
        len = sizeof(int);
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0)
                return negative_errno();
        if (domain != AF_UNIX)
                return -ENOTSOCK;
        if (type != SOCK_STREAM)
                return -EPROTOTYPE;

        flags = fcntl(fd, F_GETFL);
        if (flags < 0)
                return negative_errno();
        if (!(flags & O_NONBLOCK) && fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0)
                return negative_errno();

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->fd = fd;
        c->state = QMP_STATE_GREETING;
        c->next_id = 1;
        *ret = c;
        return 0;
}

QmpClient *qmp_client_free(QmpClient *c) {
        if (!c)
                return NULL;
        qmp_client_detach_event(c);
        c->io_source = sd_event_source_disable_unref(c->io_source);
        for (size_t i = 0; i < c->n_events; i++)
                json_object_put(c->events[(c->events_first + i) % QMP_EVENTS_MAX]);
        free(c->buf);
        safe_close(c->fd);
        free(c);
        return NULL;
}

static void close_received_fds(struct msghdr *mh) {
        for (struct cmsghdr *cm = CMSG_FIRSTHDR(mh); cm; cm = CMSG_NXTHDR(mh, cm)) {
                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < n; i++) {
                        int fd;
                        memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
                        safe_close(fd);
                }
        }
}

/* One recvmsg() into the buffer: > 0 bytes read, -EAGAIN if none is there yet, or the connection is
 * dead (the peer closed, sent an fd, or a line that cannot fit). */
static int client_read(QmpClient *c) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * QMP_CMSG_FDS_MAX)];
        } control;
        struct iovec iov;
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = &control,
                .msg_controllen = sizeof(control),
        };
        ssize_t n;

        if (c->buf_size >= QMP_BUFFER_MAX)
                return client_kill(c, -EBADMSG);
        if (c->buf_size == c->buf_allocated) {
                size_t a = MIN(MAX(c->buf_allocated * 2, (size_t) QMP_BUFFER_INITIAL), (size_t) QMP_BUFFER_MAX);
                char *b = realloc(c->buf, a);
                if (!b)
                        return client_kill(c, -ENOMEM);
                c->buf = b;
                c->buf_allocated = a;
        }

        iov = (struct iovec) { c->buf + c->buf_size, c->buf_allocated - c->buf_size };
        n = recvmsg(c->fd, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0) {
                if (errno == EAGAIN || errno == EINTR)
                        return -EAGAIN;
                return client_kill(c, errno == ECONNRESET || errno == EPIPE ? -ECONNRESET : negative_errno());
        }
        if (mh.msg_controllen > 0 || (mh.msg_flags & MSG_CTRUNC)) {
                close_received_fds(&mh);
                log_debug("QMP peer sent ancillary data, refused");
                return client_kill(c, -EBADMSG);
        }
        if (n == 0)
                return client_kill(c, -ECONNRESET);
        c->buf_size += (size_t) n;
        return (int) MIN((size_t) n, (size_t) INT32_MAX);
}

static int check_greeting(QmpClient *c, json_object *g) {
        json_object *version, *qemu, *caps, *v;
        int64_t parts[3];
        static const char *const keys[3] = { "major", "minor", "micro" };

        if (!json_object_is_type(g, json_type_object) ||
            !json_object_object_get_ex(g, "version", &version) || !json_object_is_type(version, json_type_object) ||
            !json_object_object_get_ex(version, "qemu", &qemu) || !json_object_is_type(qemu, json_type_object) ||
            !json_object_object_get_ex(g, "capabilities", &caps) || !json_object_is_type(caps, json_type_array))
                return -EBADMSG;
        for (size_t i = 0; i < 3; i++) {
                if (!json_object_object_get_ex(qemu, keys[i], &v) || !json_object_is_type(v, json_type_int))
                        return -EBADMSG;
                parts[i] = json_object_get_int64(v);
                if (parts[i] < 0 || parts[i] > 0xffff)
                        return -EBADMSG;
        }
        c->version = (QmpVersion) { (unsigned) parts[0], (unsigned) parts[1], (unsigned) parts[2] };
        c->have_version = true;
        return 0;
}

/* Checks the shape of one message; the caller decides whether it is the one expected. */
static int classify(json_object *m, QmpMessageKind *ret) {
        static const char *const keys[] = { "QMP", "return", "error", "event" };
        static const QmpMessageKind kinds[] = { QMP_MESSAGE_GREETING, QMP_MESSAGE_RETURN, QMP_MESSAGE_ERROR,
                                                QMP_MESSAGE_EVENT };
        QmpMessageKind kind = QMP_MESSAGE_GREETING;
        json_object *v, *data;
        unsigned found = 0;

        if (!json_object_is_type(m, json_type_object))
                return -EBADMSG;
        for (size_t i = 0; i < ELEMENTSOF(keys); i++)
                if (json_object_object_get_ex(m, keys[i], NULL)) {
                        found++;
                        kind = kinds[i];
                }
        if (found != 1)
                return -EBADMSG;

        switch (kind) {
        case QMP_MESSAGE_EVENT:
                if (!json_object_object_get_ex(m, "event", &v) || !json_object_is_type(v, json_type_string) ||
                    !qmp_name_is_valid(json_object_get_string(v)))
                        return -EBADMSG;
                if (json_object_object_get_ex(m, "data", &data) && !json_object_is_type(data, json_type_object))
                        return -EBADMSG;
                if (json_object_object_get_ex(m, "id", NULL))
                        return -EBADMSG;
                break;
        case QMP_MESSAGE_ERROR: {
                json_object *cls, *desc;
                if (!json_object_object_get_ex(m, "error", &v) || !json_object_is_type(v, json_type_object) ||
                    !json_object_object_get_ex(v, "class", &cls) || !json_object_is_type(cls, json_type_string) ||
                    !json_object_object_get_ex(v, "desc", &desc) || !json_object_is_type(desc, json_type_string))
                        return -EBADMSG;
                break;
        }
        default:
                break;
        }
        *ret = kind;
        return 0;
}

/* Parses one line (without its "\n"; a "\r" before it is allowed) as exactly one JSON value, in
 * json-c's strict mode with UTF-8 checked (which still lets through single-quoted member names and
 * NaN: harmless, what counts is the shape of the object checked after). */
static int parse_line(const char *line, size_t len, json_object **ret) {
        json_tokener *tok;
        json_object *o;
        bool complete;

        if (len > 0 && line[len - 1] == '\r')
                len--;
        if (len == 0 || len > QMP_MESSAGE_MAX || memchr(line, 0, len))
                return -EBADMSG;

        tok = json_tokener_new_ex(QMP_JSON_DEPTH_MAX);
        if (!tok)
                return -ENOMEM;
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
        o = json_tokener_parse_ex(tok, line, (int) len);
        complete = o && json_tokener_get_error(tok) == json_tokener_success &&
                   json_tokener_get_parse_end(tok) == len;
        json_tokener_free(tok);
        if (!complete) {
                json_object_put(o);
                return -EBADMSG;
        }
        *ret = o;
        return 0;
}

static int queue_event(QmpClient *c, json_object *m) {
        if (c->n_events >= QMP_EVENTS_MAX) {
                json_object_put(m);
                return client_kill(c, -ENOBUFS);
        }
        c->events[(c->events_first + c->n_events) % QMP_EVENTS_MAX] = m;
        c->n_events++;
        update_sources(c);
        return 0;
}

/* Takes the next complete line out of the buffer, checked: 1 with *ret (the message) and *ret_kind,
 * 0 if no complete line is there (or `max_events` are queued), or the connection dies. Events are
 * queued here, and never returned; a greeting is returned only in the GREETING state. */
static int next_message(QmpClient *c, size_t max_events, json_object **ret, QmpMessageKind *ret_kind) {
        for (;;) {
                json_object *m = NULL;
                QmpMessageKind kind;
                char *nl;
                size_t len;
                int r;

                if (c->state == QMP_STATE_DEAD)
                        return c->dead_reason;
                if (c->n_events >= max_events)
                        return 0;
                nl = c->buf_size > 0 ? memchr(c->buf, '\n', c->buf_size) : NULL;
                if (!nl) {
                        /* A line longer than any message can never end well. */
                        if (c->buf_size > QMP_MESSAGE_MAX + 1U)
                                return client_kill(c, -EBADMSG);
                        return 0;
                }
                len = (size_t) (nl - c->buf);
                r = parse_line(c->buf, len, &m);
                memmove(c->buf, nl + 1, c->buf_size - len - 1);
                c->buf_size -= len + 1;
                if (r < 0)
                        return client_kill(c, r);
                r = classify(m, &kind);
                if (r >= 0 && (kind == QMP_MESSAGE_GREETING) != (c->state == QMP_STATE_GREETING))
                        r = -EBADMSG;
                if (r < 0) {
                        json_object_put(m);
                        return client_kill(c, r);
                }
                if (kind == QMP_MESSAGE_EVENT) {
                        r = queue_event(c, m);
                        if (r < 0)
                                return r;
                        continue;
                }
                *ret = m;
                *ret_kind = kind;
                return 1;
        }
}

/* Queues the events already complete in the buffer, so that they do not wait for more bytes on the
 * socket (QEMU may write a reply and events in one go); anything else there is unexpected. */
static int drain_buffer(QmpClient *c, size_t max_events) {
        json_object *m = NULL;
        QmpMessageKind kind;
        int r;

        r = next_message(c, max_events, &m, &kind);
        if (r > 0) {
                json_object_put(m);
                log_debug("QMP reply while no call is waiting");
                return client_kill(c, -EBADMSG);
        }
        return r;
}

/* Waits until a message other than an event is complete, or the deadline passes: also while bytes
 * keep coming, so that a peer trickling a line cannot stretch the wait. */
static int wait_message(QmpClient *c, uint64_t deadline, json_object **ret, QmpMessageKind *ret_kind) {
        for (bool last = false;;) {
                struct pollfd p = { .fd = c->fd, .events = POLLIN };
                int r;

                r = next_message(c, SIZE_MAX, ret, ret_kind);
                if (r != 0)
                        return r;
                if (last)
                        return client_kill(c, -ETIMEDOUT);
                r = client_read(c);
                if (r > 0) {
                        last = now_usec() >= deadline;
                        continue;
                }
                if (r != -EAGAIN)
                        return r;
                r = poll(&p, 1, poll_timeout_ms(deadline));
                if (r < 0 && errno != EINTR)
                        return client_kill(c, negative_errno());
                if (r == 0 && now_usec() >= deadline)
                        return client_kill(c, -ETIMEDOUT);
        }
}

/* Writes all of `data`; the fd, if any, goes with the first bytes written, once. */
static int write_all(QmpClient *c, const char *data, size_t size, int fd, uint64_t deadline) {
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int))];
        } control = {};
        bool fd_sent = fd < 0;

        while (size > 0) {
                struct iovec iov = { (void *) data, size };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
                ssize_t n;

                if (!fd_sent) {
                        struct cmsghdr *cm;
                        mh.msg_control = &control;
                        mh.msg_controllen = sizeof(control);
                        cm = CMSG_FIRSTHDR(&mh);
                        cm->cmsg_level = SOL_SOCKET;
                        cm->cmsg_type = SCM_RIGHTS;
                        cm->cmsg_len = CMSG_LEN(sizeof(int));
                        memcpy(CMSG_DATA(cm), &fd, sizeof(int));
                }
                n = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        struct pollfd p = { .fd = c->fd, .events = POLLOUT };
                        int r;

                        if (errno == EBADF && !fd_sent)
                                return -EBADF; /* the caller's fd, nothing was sent */
                        if (errno != EAGAIN && errno != EINTR)
                                return client_kill(c, errno == EPIPE || errno == ECONNRESET ? -EPIPE
                                                                                            : negative_errno());
                        r = poll(&p, 1, poll_timeout_ms(deadline));
                        if (r < 0 && errno != EINTR)
                                return client_kill(c, negative_errno());
                        if (r == 0 && now_usec() >= deadline)
                                return client_kill(c, -ETIMEDOUT);
                        continue;
                }
                fd_sent = true;
                data += n;
                size -= (size_t) n;
                /* A peer reading a byte at a time cannot stretch the wait either. */
                if (size > 0 && now_usec() >= deadline)
                        return client_kill(c, -ETIMEDOUT);
        }
        return 0;
}

/* Writes "Class: desc" as printable ASCII: anything else from the peer becomes '?'. */
static char *error_text(json_object *m) {
        json_object *e, *cls, *desc;
        char *t, *p;
        const char *parts[2];
        size_t left = QMP_ERROR_TEXT_MAX - 1;
        bool cut = false;

        /* classify() checked the shape. */
        (void) json_object_object_get_ex(m, "error", &e);
        (void) json_object_object_get_ex(e, "class", &cls);
        (void) json_object_object_get_ex(e, "desc", &desc);
        parts[0] = json_object_get_string(cls);
        parts[1] = json_object_get_string(desc);

        t = p = malloc(QMP_ERROR_TEXT_MAX);
        if (!t)
                return NULL;
        for (size_t i = 0; i < 2 && !cut; i++) {
                if (i == 1) {
                        if (left < 2) {
                                cut = true;
                                break;
                        }
                        *p++ = ':';
                        *p++ = ' ';
                        left -= 2;
                }
                for (const unsigned char *s = (const unsigned char *) parts[i]; *s; s++) {
                        if (left == 0) {
                                cut = true;
                                break;
                        }
                        *p++ = *s >= 0x20 && *s < 0x7f ? (char) *s : '?';
                        left--;
                }
        }
        *p = 0;
        if (cut)
                memcpy(t + QMP_ERROR_TEXT_MAX - 4, "...", 4);
        return t;
}

static int call_internal(
                QmpClient *c,
                const char *command,
                json_object *arguments,
                int fd_to_pass,
                uint64_t deadline,
                json_object **ret_return,
                char **ret_error) {

        uint64_t id;
        _cleanup_free_ char *line = NULL;
        json_object *msg, *exec, *jid, *m = NULL, *v;
        QmpMessageKind kind;
        const char *s;
        size_t len;
        int r;

        if (!qmp_name_is_valid(command) || (arguments && !json_object_is_type(arguments, json_type_object)))
                return -EINVAL;

        id = c->next_id++;
        msg = json_object_new_object();
        if (!msg)
                return -ENOMEM;
        exec = json_object_new_string(command);
        jid = json_object_new_int64((int64_t) id);
        if (!exec || !jid || json_object_object_add(msg, "execute", TAKE_PTR(exec)) < 0 ||
            json_object_object_add(msg, "id", TAKE_PTR(jid)) < 0 ||
            (arguments && json_object_object_add(msg, "arguments", json_object_get(arguments)) < 0)) {
                json_object_put(exec);
                json_object_put(jid);
                json_object_put(msg);
                return -ENOMEM;
        }
        s = json_object_to_json_string_ext(msg, JSON_C_TO_STRING_PLAIN);
        len = s ? strlen(s) : 0;
        if (s && len <= QMP_MESSAGE_MAX && (line = malloc(len + 2))) {
                memcpy(line, s, len);
                memcpy(line + len, "\r\n", 2);
        }
        json_object_put(msg);
        if (!s || len > QMP_MESSAGE_MAX)
                return s ? -E2BIG : -ENOMEM;
        if (!line)
                return -ENOMEM;

        r = write_all(c, line, len + 2, fd_to_pass, deadline);
        if (r < 0)
                return r;

        r = wait_message(c, deadline, &m, &kind);
        if (r < 0)
                return r;
        if (!json_object_object_get_ex(m, "id", &v) || !json_object_is_type(v, json_type_int) ||
            json_object_get_int64(v) != (int64_t) id) {
                json_object_put(m);
                log_debug("QMP reply without the id of the call awaiting it");
                return client_kill(c, -EBADMSG);
        }
        /* The reply stands even if what follows it breaks the connection (qmp_client_is_dead() tells). */
        (void) drain_buffer(c, SIZE_MAX);
        update_sources(c);

        if (kind == QMP_MESSAGE_ERROR) {
                if (ret_error) {
                        *ret_error = error_text(m);
                        if (!*ret_error) {
                                json_object_put(m);
                                return -ENOMEM;
                        }
                }
                json_object_put(m);
                return -EREMOTEIO;
        }
        if (ret_return) {
                (void) json_object_object_get_ex(m, "return", &v);
                *ret_return = json_object_get(v);
        }
        json_object_put(m);
        return 0;
}

int qmp_client_call(
                QmpClient *c,
                const char *command,
                json_object *arguments,
                int fd_to_pass,
                uint64_t timeout_usec,
                json_object **ret_return,
                char **ret_error) {

        if (!c || !command)
                return -EINVAL;
        if (c->state != QMP_STATE_READY)
                return -ENOTCONN;
        return call_internal(c, command, arguments, fd_to_pass, deadline_after(timeout_usec), ret_return, ret_error);
}

int qmp_client_handshake(QmpClient *c, uint64_t timeout_usec) {
        uint64_t deadline = deadline_after(timeout_usec);
        json_object *m = NULL, *g, *ret = NULL;
        QmpMessageKind kind;
        bool empty;
        int r;

        if (!c)
                return -EINVAL;
        if (c->state == QMP_STATE_DEAD)
                return -ENOTCONN;
        if (c->state != QMP_STATE_GREETING)
                return -EALREADY;

        r = wait_message(c, deadline, &m, &kind);
        if (r < 0)
                return r;
        (void) json_object_object_get_ex(m, "QMP", &g);
        r = check_greeting(c, g);
        json_object_put(m);
        if (r < 0) {
                log_debug("QMP greeting malformed");
                return client_kill(c, r);
        }
        c->state = QMP_STATE_CAPABILITIES;

        r = call_internal(c, "qmp_capabilities", NULL, -EBADF, deadline, &ret, NULL);
        if (r < 0)
                return client_kill(c, r == -EREMOTEIO ? -EBADMSG : r);
        empty = json_object_is_type(ret, json_type_object) && json_object_object_length(ret) == 0;
        json_object_put(ret);
        if (!empty)
                return client_kill(c, -EBADMSG);
        c->state = QMP_STATE_READY;
        return 0;
}

int qmp_client_next_event(QmpClient *c, json_object **ret) {
        if (!c || !ret)
                return -EINVAL;
        if (c->n_events == 0)
                return 0;
        *ret = c->events[c->events_first];
        c->events[c->events_first] = NULL;
        c->events_first = (c->events_first + 1) % QMP_EVENTS_MAX;
        c->n_events--;
        update_sources(c);
        return 1;
}

static int on_io(_unused_ sd_event_source *s, _unused_ int fd, _unused_ uint32_t revents, void *userdata) {
        QmpClient *c = userdata;

        /* No call is waiting (calls are synchronous): anything but an event is unexpected. */
        if (drain_buffer(c, QMP_EVENTS_LOOP_MAX) >= 0 && c->n_events < QMP_EVENTS_LOOP_MAX && !buffer_has_line(c) &&
            client_read(c) > 0)
                (void) drain_buffer(c, QMP_EVENTS_LOOP_MAX);
        update_sources(c);
        return 0;
}

/* One event per dispatch, and nothing touches `c` once the handler runs: it may free it. */
static int on_defer(_unused_ sd_event_source *s, void *userdata) {
        QmpClient *c = userdata;
        QmpEventHandler handler = c->handler;
        void *u = c->userdata;
        json_object *m = NULL, *name, *data = NULL;
        int r;

        /* Lines a read brought beyond what the queue took. */
        (void) drain_buffer(c, QMP_EVENTS_LOOP_MAX);
        if (qmp_client_next_event(c, &m) > 0) {
                (void) json_object_object_get_ex(m, "event", &name);
                (void) json_object_object_get_ex(m, "data", &data);
                r = handler(c, json_object_get_string(name), data, u);
                json_object_put(m);
        } else if (c->state == QMP_STATE_DEAD && !c->death_reported) {
                c->death_reported = true;
                update_sources(c);
                r = handler(c, NULL, NULL, u);
        } else {
                update_sources(c);
                return 0;
        }
        if (r < 0)
                log_debug_errno(r, "QMP event handler failed");
        return 0;
}

int qmp_client_attach_event(QmpClient *c, sd_event *e, int64_t priority, QmpEventHandler handler, void *userdata) {
        int r;

        if (!c || !e || !handler)
                return -EINVAL;
        if (c->handler)
                return -EBUSY;
        if (c->state != QMP_STATE_READY && c->state != QMP_STATE_DEAD)
                return -EINVAL;

        if (c->state != QMP_STATE_DEAD) {
                r = sd_event_add_io(e, &c->io_source, c->fd, EPOLLIN, on_io, c);
                if (r < 0)
                        return r;
                (void) sd_event_source_set_priority(c->io_source, priority);
        }
        r = sd_event_add_defer(e, &c->defer_source, on_defer, c);
        if (r < 0) {
                c->io_source = sd_event_source_disable_unref(c->io_source);
                return r;
        }
        (void) sd_event_source_set_priority(c->defer_source, priority);
        c->handler = handler;
        c->userdata = userdata;
        update_sources(c);
        return 0;
}

void qmp_client_detach_event(QmpClient *c) {
        if (!c)
                return;
        c->io_source = sd_event_source_disable_unref(c->io_source);
        c->defer_source = sd_event_source_disable_unref(c->defer_source);
        c->handler = NULL;
        c->userdata = NULL;
}

bool qmp_client_is_dead(const QmpClient *c) {
        return !c || c->state == QMP_STATE_DEAD;
}

int qmp_client_fd(const QmpClient *c) {
        return c ? c->fd : -EBADF;
}

int qmp_client_dead_reason(const QmpClient *c) {
        return c && c->state == QMP_STATE_DEAD ? c->dead_reason : 0;
}

const QmpVersion *qmp_client_version(const QmpClient *c) {
        return c && c->have_version ? &c->version : NULL;
}
