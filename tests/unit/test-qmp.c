/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The QMP client against a fake server on a socketpair: the server's bytes are either written before
 * the call (the socket buffer holds them) or by a thread, when they must come in pieces, after the
 * command, or be larger than the socket buffer. */

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

#include "qmp.h"
#include "test-util.h"
#include "util.h"

#define GREETING                                                                                         \
        "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"x\"}, " \
        "\"capabilities\": [\"oob\"]}}\r\n"
#define CAPS_OK "{\"return\": {}, \"id\": 1}\r\n"
#define TIMEOUT (5U * 1000000U)

static void write_str(int fd, const char *s) {
        size_t n = strlen(s);

        while (n > 0) {
                ssize_t k = send(fd, s, n, MSG_NOSIGNAL);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        CHECK(errno == EPIPE); /* the client shut the connection down */
                        return;
                }
                s += k;
                n -= (size_t) k;
        }
}

/* Reads one line (the next command the client sent) into buf, without its "\r\n". */
static int read_line(int fd, char *buf, size_t size) {
        size_t n = 0;

        while (n + 1 < size) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                ssize_t k;

                if (poll(&p, 1, 5000) <= 0)
                        return -ETIMEDOUT;
                k = read(fd, buf + n, 1);
                if (k <= 0)
                        return -EIO;
                if (buf[n] == '\n') {
                        buf[n > 0 && buf[n - 1] == '\r' ? n - 1 : n] = 0;
                        return 0;
                }
                n++;
        }
        return -E2BIG;
}

static void pair(int sv[2]) {
        CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
}

/* A client through its handshake; *ret_server is the fake server's end, with nothing left unread. */
static QmpClient *ready_client(int *ret_server) {
        QmpClient *c = NULL;
        char line[256];
        int sv[2];

        pair(sv);
        write_str(sv[1], GREETING CAPS_OK);
        CHECK_EQ_INT(qmp_client_new(sv[0], &c), 0);
        CHECK_EQ_INT(qmp_client_handshake(c, TIMEOUT), 0);
        CHECK_EQ_INT(read_line(sv[1], line, sizeof(line)), 0);
        *ret_server = sv[1];
        return c;
}

static void test_new(void) {
        QmpClient *c = NULL;
        int p[2], sv[2];

        CHECK_EQ_INT(pipe2(p, O_CLOEXEC), 0);
        CHECK_EQ_INT(qmp_client_new(p[0], &c), -ENOTSOCK);
        CHECK_EQ_INT(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv), 0);
        CHECK_EQ_INT(qmp_client_new(sv[0], &c), -EPROTOTYPE);
        CHECK(c == NULL);
        /* Refused fds stay the caller's. */
        CHECK_EQ_INT(fcntl(p[0], F_GETFD) >= 0, 1);
        CHECK_EQ_INT(fcntl(sv[0], F_GETFD) >= 0, 1);
        close(p[0]), close(p[1]), close(sv[0]), close(sv[1]);
}

static void test_handshake(void) {
        QmpClient *c = NULL;
        json_object *ret = NULL, *v;
        char line[256];
        int sv[2];

        pair(sv);
        write_str(sv[1], GREETING CAPS_OK);
        CHECK_EQ_INT(qmp_client_new(sv[0], &c), 0);
        CHECK(qmp_client_version(c) == NULL);
        CHECK_EQ_INT(qmp_client_call(c, "query-version", NULL, -1, TIMEOUT, NULL, NULL), -ENOTCONN);
        CHECK_EQ_INT(qmp_client_handshake(c, TIMEOUT), 0);
        CHECK_EQ_INT(qmp_client_handshake(c, TIMEOUT), -EALREADY);
        CHECK(qmp_client_version(c) && qmp_client_version(c)->major == 7 && qmp_client_version(c)->minor == 2 &&
              qmp_client_version(c)->micro == 22);
        CHECK_EQ_INT(read_line(sv[1], line, sizeof(line)), 0);
        CHECK(streq(line, "{\"execute\":\"qmp_capabilities\",\"id\":1}"));

        /* A matched reply; the id counts up. */
        write_str(sv[1], "{\"return\": {\"qemu\": {\"major\": 7}, \"package\": \"p\"}, \"id\": 2}\r\n");
        CHECK_EQ_INT(qmp_client_call(c, "query-version", NULL, -1, TIMEOUT, &ret, NULL), 0);
        CHECK(ret && json_object_object_get_ex(ret, "package", &v) && streq(json_object_get_string(v), "p"));
        json_object_put(ret);
        CHECK_EQ_INT(read_line(sv[1], line, sizeof(line)), 0);
        CHECK(streq(line, "{\"execute\":\"query-version\",\"id\":2}"));

        /* Arguments are borrowed: still ours after the call. */
        json_object *args = json_object_new_object();
        json_object_object_add(args, "node-name", json_object_new_string("n0"));
        write_str(sv[1], "{\"return\": [], \"id\": 3}\n");
        ret = NULL;
        CHECK_EQ_INT(qmp_client_call(c, "blockdev-del", args, -1, TIMEOUT, &ret, NULL), 0);
        CHECK(json_object_is_type(ret, json_type_array));
        json_object_put(ret);
        CHECK_EQ_INT(read_line(sv[1], line, sizeof(line)), 0);
        CHECK(streq(line, "{\"execute\":\"blockdev-del\",\"id\":3,\"arguments\":{\"node-name\":\"n0\"}}"));
        CHECK(json_object_object_get_ex(args, "node-name", NULL));
        json_object_put(args);

        /* Bad input from the caller: refused before anything is sent; the connection stays. */
        CHECK_EQ_INT(qmp_client_call(c, "bad name", NULL, -1, TIMEOUT, NULL, NULL), -EINVAL);
        CHECK_EQ_INT(qmp_client_call(c, "", NULL, -1, TIMEOUT, NULL, NULL), -EINVAL);
        args = json_object_new_array();
        CHECK_EQ_INT(qmp_client_call(c, "x", args, -1, TIMEOUT, NULL, NULL), -EINVAL);
        json_object_put(args);
        CHECK(!qmp_client_is_dead(c));
        CHECK_EQ_INT(qmp_client_dead_reason(c), 0);

        qmp_client_free(c);
        close(sv[1]);
}

/* Each of these, where it comes, declares the connection broken with `error`. */
static void check_broken_handshake(const char *bytes, int error) {
        QmpClient *c = NULL;
        int sv[2];

        pair(sv);
        write_str(sv[1], bytes);
        CHECK_EQ_INT(qmp_client_new(sv[0], &c), 0);
        CHECK_EQ_INT(qmp_client_handshake(c, 200000), error);
        CHECK(qmp_client_is_dead(c));
        CHECK_EQ_INT(qmp_client_dead_reason(c), error);
        CHECK_EQ_INT(qmp_client_handshake(c, TIMEOUT), -ENOTCONN);
        CHECK_EQ_INT(qmp_client_call(c, "query-version", NULL, -1, TIMEOUT, NULL, NULL), -ENOTCONN);
        qmp_client_free(c);
        close(sv[1]);
}

static void test_greeting(void) {
        /* Not a greeting, or not its shape. */
        check_broken_handshake("{\"return\": {}, \"id\": 1}\r\n", -EBADMSG);
        check_broken_handshake("{\"event\": \"SHUTDOWN\"}\r\n" GREETING CAPS_OK, -EBADMSG);
        check_broken_handshake("{\"QMP\": {\"capabilities\": []}}\r\n", -EBADMSG);
        check_broken_handshake("{\"QMP\": {\"version\": {\"qemu\": {\"major\": \"7\", \"minor\": 2, \"micro\": 0}}, "
                               "\"capabilities\": []}}\r\n",
                               -EBADMSG);
        check_broken_handshake("{\"QMP\": {\"version\": {\"qemu\": {\"major\": -1, \"minor\": 2, \"micro\": 0}}, "
                               "\"capabilities\": []}}\r\n",
                               -EBADMSG);
        check_broken_handshake("{\"QMP\": {\"version\": {\"qemu\": {\"major\": 7, \"minor\": 2, \"micro\": 0}}, "
                               "\"capabilities\": {}}}\r\n",
                               -EBADMSG);
        check_broken_handshake("{\"QMP\": {}, \"return\": {}}\r\n", -EBADMSG);
        /* A second greeting, a non-empty or error answer to qmp_capabilities. */
        check_broken_handshake(GREETING GREETING, -EBADMSG);
        check_broken_handshake(GREETING "{\"return\": {\"x\": 1}, \"id\": 1}\r\n", -EBADMSG);
        check_broken_handshake(GREETING "{\"error\": {\"class\": \"GenericError\", \"desc\": \"no\"}, \"id\": 1}\r\n",
                               -EBADMSG);
        /* Nothing, or the peer gone. */
        check_broken_handshake("", -ETIMEDOUT);
        check_broken_handshake(GREETING, -ETIMEDOUT);
}

static void test_error_reply(void) {
        _cleanup_free_ char *long_desc = NULL, *reply = NULL;
        char *error = NULL;
        json_object *ret = NULL;
        int server;
        QmpClient *c = ready_client(&server);

        /* Control characters, an escape sequence, a newline and UTF-8 never reach the text. */
        write_str(server, "{\"error\": {\"class\": \"Generic\\u0007Error\", \"desc\": "
                          "\"bad \\u001b[31mred\\nline caf\\u00e9 \\ud83d\\ude00\\u007f end\"}, \"id\": 2}\r\n");
        CHECK_EQ_INT(qmp_client_call(c, "blockdev-add", NULL, -1, TIMEOUT, &ret, &error), -EREMOTEIO);
        CHECK(ret == NULL);
        CHECK(error && streq(error, "Generic?Error: bad ?[31mred?line caf?? ????? end"));
        free(error);
        error = NULL;

        /* A long one is cut, with "...", at QMP_ERROR_TEXT_MAX - 1 bytes. */
        long_desc = malloc(5000);
        memset(long_desc, 'a', 4999);
        long_desc[4999] = 0;
        CHECK(asprintf(&reply, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"%s\"}, \"id\": 3}\n", long_desc) > 0);
        write_str(server, reply);
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, &error), -EREMOTEIO);
        CHECK(error && strlen(error) == QMP_ERROR_TEXT_MAX - 1);
        CHECK(error && strncmp(error, "GenericError: aaa", 17) == 0);
        CHECK(error && streq(error + QMP_ERROR_TEXT_MAX - 4, "..."));
        free(error);

        /* An error reply leaves the connection usable; its message must still have the error's shape. */
        CHECK(!qmp_client_is_dead(c));
        write_str(server, "{\"return\": {}, \"id\": 4}\n");
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, NULL), 0);
        write_str(server, "{\"error\": {\"class\": \"GenericError\"}, \"id\": 5}\n");
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, &error), -EBADMSG);
        CHECK(qmp_client_is_dead(c));
        qmp_client_free(c);
        close(server);
}

static const char *event_name(json_object *m) {
        json_object *v;

        return json_object_object_get_ex(m, "event", &v) ? json_object_get_string(v) : NULL;
}

static void test_events(void) {
        json_object *m = NULL, *v, *d;
        int server;
        QmpClient *c = ready_client(&server);

        CHECK_EQ_INT(qmp_client_next_event(c, &m), 0);
        /* Events before the reply, and one after it in the same write. */
        write_str(server,
                  "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"BLOCK_JOB_READY\", "
                  "\"data\": {\"device\": \"j1\"}}\r\n"
                  "{\"event\": \"SOME_FUTURE_EVENT\", \"data\": {\"x\": [1, 2]}}\r\n"
                  "{\"return\": {}, \"id\": 2}\r\n"
                  "{\"event\": \"SHUTDOWN\"}\r\n");
        CHECK_EQ_INT(qmp_client_call(c, "query-block-jobs", NULL, -1, TIMEOUT, NULL, NULL), 0);
        CHECK_EQ_INT(qmp_client_next_event(c, &m), 1);
        CHECK(streq_ptr(event_name(m), "BLOCK_JOB_READY"));
        CHECK(json_object_object_get_ex(m, "data", &d) && json_object_object_get_ex(d, "device", &v) &&
              streq(json_object_get_string(v), "j1"));
        json_object_put(m);
        m = NULL;
        CHECK_EQ_INT(qmp_client_next_event(c, &m), 1);
        CHECK(streq_ptr(event_name(m), "SOME_FUTURE_EVENT"));
        json_object_put(m);
        m = NULL;
        CHECK_EQ_INT(qmp_client_next_event(c, &m), 1);
        CHECK(streq_ptr(event_name(m), "SHUTDOWN"));
        json_object_put(m);
        m = NULL;
        CHECK_EQ_INT(qmp_client_next_event(c, &m), 0);
        CHECK(!qmp_client_is_dead(c));
        qmp_client_free(c);
        close(server);
}

static void check_broken_call(const char *bytes, int error) {
        json_object *ret = NULL;
        int server;
        QmpClient *c = ready_client(&server);

        write_str(server, bytes);
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, 500000, &ret, NULL), error);
        CHECK(ret == NULL);
        CHECK(qmp_client_is_dead(c));
        CHECK_EQ_INT(qmp_client_dead_reason(c), error);
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, NULL), -ENOTCONN);
        qmp_client_free(c);
        close(server);
}

static void test_broken(void) {
        check_broken_call("[1, 2]\r\n", -EBADMSG);
        check_broken_call("\"return\"\r\n", -EBADMSG);
        check_broken_call("{\"return\": {}, \"id\": 2\r\n", -EBADMSG);       /* cut */
        check_broken_call("{\"return\": {}, \"id\": 2} {}\r\n", -EBADMSG);   /* two values */
        check_broken_call("{\"return\": 'x', \"id\": 2}\r\n", -EBADMSG);     /* not strict JSON */
        check_broken_call("{\"return\": [1,], \"id\": 2}\r\n", -EBADMSG);
        check_broken_call("{\"return\": 1 /* c */, \"id\": 2}\r\n", -EBADMSG);
        check_broken_call("{\"return\": \"\xff\", \"id\": 2}\r\n", -EBADMSG); /* not UTF-8 */
        check_broken_call("\r\n{\"return\": {}, \"id\": 2}\r\n", -EBADMSG);  /* an empty line */
        check_broken_call("{\"return\": {}, \"id\": 99}\r\n", -EBADMSG);     /* unknown id */
        check_broken_call("{\"return\": {}, \"id\": 1}\r\n", -EBADMSG);      /* stale id */
        check_broken_call("{\"return\": {}, \"id\": \"2\"}\r\n", -EBADMSG);  /* id of another type */
        check_broken_call("{\"return\": {}}\r\n", -EBADMSG);                 /* no id */
        check_broken_call("{\"return\": {}, \"event\": \"X\", \"id\": 2}\r\n", -EBADMSG);
        check_broken_call("{\"return\": {}, \"error\": {}, \"id\": 2}\r\n", -EBADMSG);
        check_broken_call("{\"id\": 2}\r\n", -EBADMSG);
        check_broken_call(GREETING, -EBADMSG);
        check_broken_call("{\"event\": \"BAD NAME\"}\r\n{\"return\": {}, \"id\": 2}\r\n", -EBADMSG);
        check_broken_call("{\"event\": 7}\r\n{\"return\": {}, \"id\": 2}\r\n", -EBADMSG);
        check_broken_call("{\"event\": \"X\", \"data\": [1]}\r\n{\"return\": {}, \"id\": 2}\r\n", -EBADMSG);
        check_broken_call("{\"event\": \"X\", \"id\": 2}\r\n", -EBADMSG);
        /* The reply is there, but a second one behind it is not awaited: the call stands, the
         * connection does not. */
        {
                int server;
                QmpClient *c = ready_client(&server);
                write_str(server, "{\"return\": {}, \"id\": 2}\r\n{\"return\": {}, \"id\": 3}\r\n");
                CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, NULL), 0);
                CHECK(qmp_client_is_dead(c));
                CHECK_EQ_INT(qmp_client_dead_reason(c), -EBADMSG);
                qmp_client_free(c);
                close(server);
        }
        /* A NUL inside a line. */
        {
                static const char nul[] = "{\"return\": {}, \"id\": 2}\0\r\n";
                int server;
                QmpClient *c = ready_client(&server);
                CHECK_EQ_INT(write(server, nul, sizeof(nul) - 1), (ssize_t) sizeof(nul) - 1);
                CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, NULL), -EBADMSG);
                qmp_client_free(c);
                close(server);
        }
}

/* A server thread: writes `chunks` of `data`, each `chunk` bytes, `delay_usec` apart, after having
 * read one command line if `read_first`; closes its end at the end if `close_after`. */
typedef struct Script {
        int fd;
        const char *data;
        size_t size, chunk;
        unsigned delay_usec;
        bool read_first, close_after;
} Script;

static void *script_run(void *p) {
        Script *s = p;
        char line[512];

        if (s->read_first)
                (void) read_line(s->fd, line, sizeof(line));
        for (size_t off = 0; off < s->size;) {
                size_t n = MIN(s->chunk, s->size - off);
                ssize_t k = send(s->fd, s->data + off, n, MSG_NOSIGNAL);
                if (k <= 0)
                        break;
                off += (size_t) k;
                if (s->delay_usec)
                        usleep(s->delay_usec);
        }
        if (s->close_after)
                close(s->fd);
        return NULL;
}

static void test_split(void) {
        static const char data[] = "{\"event\": \"BLOCK_JOB_COMPLETED\", \"data\": {\"device\": \"j\"}}\r\n"
                                   "{\"return\": {\"split\": true}, \"id\": 2}\r\n";
        json_object *ret = NULL, *m = NULL;
        pthread_t t;
        int server;
        QmpClient *c = ready_client(&server);
        Script s = { .fd = server, .data = data, .size = sizeof(data) - 1, .chunk = 1, .delay_usec = 200,
                     .read_first = true };

        CHECK_EQ_INT(pthread_create(&t, NULL, script_run, &s), 0);
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, &ret, NULL), 0);
        CHECK(ret && json_object_object_get_ex(ret, "split", NULL));
        json_object_put(ret);
        CHECK_EQ_INT(qmp_client_next_event(c, &m), 1);
        CHECK(streq_ptr(event_name(m), "BLOCK_JOB_COMPLETED"));
        json_object_put(m);
        pthread_join(t, NULL);
        qmp_client_free(c);
        close(server);
}

/* A reply of exactly QMP_MESSAGE_MAX bytes (without "\r\n") passes; one byte more breaks. */
static void check_size(size_t size, int error) {
        _cleanup_free_ char *data = malloc(size + 2);
        static const char head[] = "{\"return\": \"", tail[] = "\", \"id\": 2}";
        json_object *ret = NULL;
        pthread_t t;
        int server;
        QmpClient *c = ready_client(&server);
        Script s = { .fd = server, .data = data, .size = size + 2, .chunk = 65536 };

        memcpy(data, head, sizeof(head) - 1);
        memset(data + sizeof(head) - 1, 'x', size - (sizeof(head) - 1) - (sizeof(tail) - 1));
        memcpy(data + size - (sizeof(tail) - 1), tail, sizeof(tail) - 1);
        memcpy(data + size, "\r\n", 2);
        CHECK_EQ_INT(pthread_create(&t, NULL, script_run, &s), 0);
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, &ret, NULL), error);
        if (error == 0)
                CHECK(ret && strlen(json_object_get_string(ret)) == size - 12 - 11);
        json_object_put(ret);
        CHECK_EQ_INT(qmp_client_is_dead(c), error != 0);
        /* Unblock the writer if the client stopped reading. */
        qmp_client_free(c);
        pthread_join(t, NULL);
        close(server);
}

static void test_sizes(void) {
        check_size(QMP_MESSAGE_MAX, 0);
        check_size(QMP_MESSAGE_MAX + 1, -EBADMSG);
        check_size(3 * QMP_MESSAGE_MAX, -EBADMSG);
}

static void test_peer_gone(void) {
        pthread_t t;
        int server;
        QmpClient *c = ready_client(&server);
        Script s = { .fd = server, .read_first = true, .close_after = true };
        uint64_t start;
        struct timespec ts;

        /* Closes after reading the command, half a reply sent. */
        s.data = "{\"return\": {}, \"i";
        s.size = strlen(s.data);
        s.chunk = s.size;
        CHECK_EQ_INT(pthread_create(&t, NULL, script_run, &s), 0);
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, NULL), -ECONNRESET);
        pthread_join(t, NULL);
        CHECK_EQ_INT(qmp_client_dead_reason(c), -ECONNRESET);
        qmp_client_free(c);

        /* Gone before the call: the write finds it. */
        c = ready_client(&server);
        close(server);
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, NULL), -EPIPE);
        CHECK(qmp_client_is_dead(c));
        qmp_client_free(c);

        /* No answer: the wait ends at the timeout, not before. */
        c = ready_client(&server);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        start = (uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U;
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, 100000, NULL, NULL), -ETIMEDOUT);
        clock_gettime(CLOCK_MONOTONIC, &ts);
        CHECK((uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U - start >= 100000);
        CHECK(qmp_client_is_dead(c));
        /* A reply that comes late is never taken for another call's. */
        write_str(server, "{\"return\": {}, \"id\": 2}\r\n");
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, NULL), -ENOTCONN);
        qmp_client_free(c);
        close(server);

        /* A line trickled a byte every 2 ms (it would take 20 s): the wait still ends at its timeout. */
        {
                _cleanup_free_ char *slow = malloc(10000);
                c = ready_client(&server);
                memcpy(slow, "{\"return\": \"", 12);
                memset(slow + 12, 'x', 10000 - 12);
                Script t2 = { .fd = server, .data = slow, .size = 10000, .chunk = 1, .delay_usec = 2000 };
                CHECK_EQ_INT(pthread_create(&t, NULL, script_run, &t2), 0);
                clock_gettime(CLOCK_MONOTONIC, &ts);
                start = (uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U;
                CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, 100000, NULL, NULL), -ETIMEDOUT);
                clock_gettime(CLOCK_MONOTONIC, &ts);
                CHECK((uint64_t) ts.tv_sec * 1000000U + (uint64_t) ts.tv_nsec / 1000U - start < 2000000);
                qmp_client_free(c); /* the writer's next send fails */
                pthread_join(t, NULL);
                close(server);
        }
}

static void test_fd_from_peer(void) {
        static const char reply[] = "{\"return\": {}, \"id\": 2}\r\n";
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int))];
        } control = {};
        struct iovec iov = { (void *) reply, sizeof(reply) - 1 };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = &control, .msg_controllen = sizeof(control) };
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        int server, p[2];
        char b;
        QmpClient *c = ready_client(&server);

        /* The write end of a pipe: once the client closed the copy it got, the read end sees EOF. */
        CHECK_EQ_INT(pipe2(p, O_CLOEXEC | O_NONBLOCK), 0);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &p[1], sizeof(int));
        CHECK_EQ_INT(sendmsg(server, &mh, 0), (ssize_t) sizeof(reply) - 1);
        close(p[1]);
        CHECK_EQ_INT(read(p[0], &b, 1), -1); /* the in-flight copy keeps it open */
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, NULL), -EBADMSG);
        CHECK(qmp_client_is_dead(c));
        CHECK_EQ_INT(read(p[0], &b, 1), 0);
        close(p[0]);
        qmp_client_free(c);
        close(server);
}

static void test_fd_passing(void) {
        char tmpl[] = "/tmp/test-qmp-XXXXXX", data[512];
        union {
                struct cmsghdr align;
                char buf[CMSG_SPACE(sizeof(int) * 4)];
        } control;
        struct iovec iov = { data, sizeof(data) - 1 };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        json_object *args, *ret = NULL;
        struct stat st1, st2;
        int server, fd, n_fds = 0, got = -1;
        ssize_t k;
        size_t total = 0;
        QmpClient *c = ready_client(&server);

        fd = mkostemp(tmpl, O_CLOEXEC);
        CHECK(fd >= 0);
        unlink(tmpl);
        args = json_object_new_object();
        json_object_object_add(args, "fdset-id", json_object_new_int(1));
        write_str(server, "{\"return\": {\"fd\": 11, \"fdset-id\": 1}, \"id\": 2}\r\n");
        CHECK_EQ_INT(qmp_client_call(c, "add-fd", args, fd, TIMEOUT, &ret, NULL), 0);
        json_object_put(ret);
        json_object_put(args);
        /* A bad fd is refused by sendmsg() before a byte goes: the connection stays usable. */
        CHECK_EQ_INT(qmp_client_call(c, "add-fd", NULL, 999, TIMEOUT, NULL, NULL), -EBADF);
        CHECK(!qmp_client_is_dead(c));

        /* Everything the client wrote, with every fd that came along. */
        CHECK_EQ_INT(fcntl(server, F_SETFL, O_NONBLOCK), 0);
        for (;;) {
                mh.msg_control = &control;
                mh.msg_controllen = sizeof(control);
                iov = (struct iovec) { data + total, sizeof(data) - 1 - total };
                k = recvmsg(server, &mh, MSG_CMSG_CLOEXEC);
                if (k <= 0)
                        break;
                for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
                        if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
                                size_t n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                                n_fds += (int) n;
                                /* It must come with the command's first bytes. */
                                CHECK_EQ_INT(total, 0);
                                if (n == 1)
                                        memcpy(&got, CMSG_DATA(cm), sizeof(int));
                        }
                total += (size_t) k;
        }
        data[total] = 0;
        CHECK(streq(data, "{\"execute\":\"add-fd\",\"id\":2,\"arguments\":{\"fdset-id\":1}}\r\n"));
        CHECK_EQ_INT(n_fds, 1);
        CHECK(got >= 0 && fstat(got, &st1) == 0 && fstat(fd, &st2) == 0 && st1.st_ino == st2.st_ino &&
              st1.st_dev == st2.st_dev);
        /* The caller keeps its own. */
        CHECK(fcntl(fd, F_GETFD) >= 0);
        safe_close(got);
        close(fd);
        qmp_client_free(c);
        close(server);
}

static void test_queue_limit(void) {
        char ev[128];
        json_object *m = NULL;
        int server;
        QmpClient *c = ready_client(&server);

        /* QMP_EVENTS_MAX fit; one more breaks. */
        for (unsigned i = 0; i < QMP_EVENTS_MAX; i++) {
                snprintf(ev, sizeof(ev), "{\"event\": \"E%u\"}\r\n", i);
                write_str(server, ev);
        }
        write_str(server, "{\"return\": {}, \"id\": 2}\r\n");
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, NULL), 0);
        CHECK(!qmp_client_is_dead(c));
        write_str(server, "{\"event\": \"ONE_MORE\"}\r\n{\"return\": {}, \"id\": 3}\r\n");
        CHECK_EQ_INT(qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, NULL), -ENOBUFS);
        CHECK(qmp_client_is_dead(c));
        /* What was queued stays to be taken, in order. */
        CHECK_EQ_INT(qmp_client_next_event(c, &m), 1);
        CHECK(streq_ptr(event_name(m), "E0"));
        json_object_put(m);
        qmp_client_free(c);
        close(server);
}

/* What the event handler saw, as one string: "E1 E2 ... DEAD". */
typedef struct Seen {
        char log[512];
        unsigned deaths, n_events;
        int server;
        QmpClient *c;
        int call_result;
} Seen;

static int on_event(QmpClient *c, const char *event, json_object *data, void *userdata) {
        Seen *s = userdata;
        json_object *v;

        CHECK(c == s->c);
        if (strlen(s->log) < 128) /* (a burst is counted, not logged) */
                snprintf(s->log + strlen(s->log), sizeof(s->log) - strlen(s->log), "%s%s", s->log[0] ? " " : "",
                         event ?: "DEAD");
        if (event)
                s->n_events++;
        if (!event) {
                s->deaths++;
                CHECK(qmp_client_is_dead(c));
                s->c = qmp_client_free(c);
                return 0;
        }
        if (data && json_object_object_get_ex(data, "n", &v))
                snprintf(s->log + strlen(s->log), sizeof(s->log) - strlen(s->log), ":%d", json_object_get_int(v));
        if (streq(event, "CALL_NOW")) {
                /* A synchronous call from the handler: the events it meets wait their turn. */
                write_str(s->server, "{\"event\": \"DURING_CALL\"}\r\n{\"return\": {}, \"id\": 2}\r\n"
                                     "{\"event\": \"AFTER_REPLY\"}\r\n");
                s->call_result = qmp_client_call(c, "x", NULL, -1, TIMEOUT, NULL, NULL);
        } else if (streq(event, "FREE_ME"))
                s->c = qmp_client_free(c);
        return streq(event, "FAIL") ? -EIO : 0;
}

static void run_until(sd_event *e, Seen *s, const char *log) {
        for (unsigned i = 0; i < 500 && !streq(s->log, log); i++)
                CHECK(sd_event_run(e, 10000) >= 0);
        /* And nothing more comes. */
        for (unsigned i = 0; i < 5; i++)
                CHECK(sd_event_run(e, 1000) >= 0);
        if (!streq(s->log, log))
                fprintf(stderr, "handler saw \"%s\", expected \"%s\"\n", s->log, log);
        CHECK(streq(s->log, log));
}

static void test_event_loop(void) {
        sd_event *e = NULL;
        Seen s = {};
        QmpClient *c = NULL;
        int sv[2];

        CHECK_EQ_INT(sd_event_new(&e), 0);

        /* Not before the handshake; once only. */
        pair(sv);
        CHECK_EQ_INT(qmp_client_new(sv[0], &c), 0);
        CHECK_EQ_INT(qmp_client_attach_event(c, e, 0, on_event, &s), -EINVAL);
        qmp_client_free(c);
        close(sv[1]);

        /* In order, with a re-entrant call; the death once, after the events; freed by the handler. */
        s.c = ready_client(&s.server);
        CHECK_EQ_INT(qmp_client_attach_event(s.c, e, 0, on_event, &s), 0);
        CHECK_EQ_INT(qmp_client_attach_event(s.c, e, 0, on_event, &s), -EBUSY);
        write_str(s.server, "{\"event\": \"E1\", \"data\": {\"n\": 1}}\r\n{\"event\": \"CALL_NOW\"}\r\n"
                            "{\"event\": \"FAIL\"}\r\n{\"event\": \"E2\", \"data\": {\"n\": 2}}\r\n");
        run_until(e, &s, "E1:1 CALL_NOW FAIL E2:2 DURING_CALL AFTER_REPLY");
        CHECK_EQ_INT(s.call_result, 0);
        write_str(s.server, "{\"event\": \"LAST\"}\r\n");
        close(s.server);
        run_until(e, &s, "E1:1 CALL_NOW FAIL E2:2 DURING_CALL AFTER_REPLY LAST DEAD");
        CHECK_EQ_INT(s.deaths, 1);
        CHECK(s.c == NULL);

        /* Events queued by a call before attaching come through the loop; a handler that frees the
         * client on one stops the rest without the loop touching it. */
        s = (Seen) {};
        s.c = ready_client(&s.server);
        write_str(s.server, "{\"event\": \"EARLY\"}\r\n{\"return\": {}, \"id\": 2}\r\n");
        CHECK_EQ_INT(qmp_client_call(s.c, "x", NULL, -1, TIMEOUT, NULL, NULL), 0);
        CHECK_EQ_INT(qmp_client_attach_event(s.c, e, 0, on_event, &s), 0);
        write_str(s.server, "{\"event\": \"FREE_ME\"}\r\n{\"event\": \"NEVER\"}\r\n");
        run_until(e, &s, "EARLY FREE_ME");
        CHECK(s.c == NULL);
        close(s.server);

        /* A reply nobody awaits, seen by the loop: dead, reported once. */
        s = (Seen) {};
        s.c = ready_client(&s.server);
        CHECK_EQ_INT(qmp_client_attach_event(s.c, e, 0, on_event, &s), 0);
        write_str(s.server, "{\"event\": \"E\"}\r\n{\"return\": {}, \"id\": 7}\r\n");
        run_until(e, &s, "E DEAD");
        CHECK_EQ_INT(s.deaths, 1);
        close(s.server);

        /* Detached: nothing is delivered any more, and the client can still be used. */
        s = (Seen) {};
        s.c = ready_client(&s.server);
        CHECK_EQ_INT(qmp_client_attach_event(s.c, e, 0, on_event, &s), 0);
        qmp_client_detach_event(s.c);
        write_str(s.server, "{\"event\": \"E\"}\r\n");
        run_until(e, &s, "");
        write_str(s.server, "{\"return\": {}, \"id\": 2}\r\n");
        CHECK_EQ_INT(qmp_client_call(s.c, "x", NULL, -1, TIMEOUT, NULL, NULL), 0);
        qmp_client_free(s.c);
        close(s.server);

        /* A burst bigger than the queue, read by the loop: it reads no more while the queue is half
         * full, so every event comes through and the connection lives. */
        s = (Seen) {};
        s.c = ready_client(&s.server);
        CHECK_EQ_INT(qmp_client_attach_event(s.c, e, 0, on_event, &s), 0);
        {
                _cleanup_free_ char *burst = malloc(3 * QMP_EVENTS_MAX * 32);
                size_t n = 0;
                /* Small ones: one read of the buffer's first 4 KiB holds more than the queue. */
                for (unsigned i = 0; i < 3 * QMP_EVENTS_MAX / 2; i++)
                        n += (size_t) sprintf(burst + n, "{\"event\":\"B\"}\r\n");
                write_str(s.server, burst);
                for (unsigned i = 0; i < 5000 && s.n_events < 3 * QMP_EVENTS_MAX / 2 && !s.deaths; i++)
                        CHECK(sd_event_run(e, 10000) >= 0);
                CHECK_EQ_INT(s.n_events, 3 * QMP_EVENTS_MAX / 2);
                CHECK(!qmp_client_is_dead(s.c));
        }
        qmp_client_free(s.c);
        close(s.server);

        sd_event_unref(e);
}

int main(void) {
        test_new();
        test_handshake();
        test_greeting();
        test_error_reply();
        test_events();
        test_broken();
        test_split();
        test_sizes();
        test_peer_gone();
        test_fd_from_peer();
        test_fd_passing();
        test_queue_limit();
        test_event_loop();
        TEST_MAIN_END();
}
