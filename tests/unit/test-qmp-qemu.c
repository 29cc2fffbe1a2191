/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The QMP client against a real storage helper: qemu-system-x86_64 -machine none with its monitor on
 * a listening socket this test made (-chardev socket,fd=N,server=on,wait=off), as vdiskd will start
 * it. Handshake, add-fd of a qcow2 image and blockdev-add on /dev/fdset/N, a vhost-user-blk export on
 * a listening socket passed with getfd, error replies, a second connection after the first closed,
 * and quit seen as the end of the connection. Skipped (77) without qemu-system-x86_64 or qemu-img. */

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>

#include "qmp.h"
#include "test-util.h"
#include "util.h"

#define TIMEOUT (20U * 1000000U)

static char dir[] = "/tmp/test-qmp-qemu-XXXXXX";
static pid_t qemu_pid = -1;

/* Only the QEMU this test started, by its pid, on every way out. */
static void kill_qemu(void) {
        if (qemu_pid > 0) {
                (void) kill(qemu_pid, SIGKILL);
                (void) waitpid(qemu_pid, NULL, 0);
                qemu_pid = -1;
        }
}

static void remove_dir(void) {
        static const char *const names[] = { "mon.sock", "vu.sock", "t.qcow2" };
        char p[PATH_MAX];

        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
                (void) unlink(p);
        }
        (void) rmdir(dir);
}

static bool in_path(const char *name) {
        const char *path = getenv("PATH") ?: "/usr/bin:/bin";
        char p[PATH_MAX];

        for (const char *s = path; *s;) {
                size_t n = strcspn(s, ":");
                snprintf(p, sizeof(p), "%.*s/%s", (int) n, s, name);
                if (access(p, X_OK) == 0)
                        return true;
                s += n + (s[n] == ':');
        }
        return false;
}

static int run(char *const argv[]) {
        int status;
        pid_t pid = fork();

        if (pid == 0) {
                execvp(argv[0], argv);
                _exit(127);
        }
        if (pid < 0 || waitpid(pid, &status, 0) < 0)
                return -errno;
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* "qtest" if this QEMU has the qtest accelerator, else TCG with the smallest translation cache
 * (-machine none runs no guest code either way). */
static const char *pick_accel(void) {
        char line[256];
        bool qtest = false;
        FILE *f = popen("qemu-system-x86_64 -accel help 2>/dev/null", "re");

        if (!f)
                return "tcg,tb-size=1";
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, "qtest", 5) == 0)
                        qtest = true;
        pclose(f);
        return qtest ? "qtest" : "tcg,tb-size=1";
}

static int listen_unix(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        CHECK(fd >= 0);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        CHECK_EQ_INT(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        CHECK_EQ_INT(listen(fd, 4), 0);
        return fd;
}

static int connect_unix(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        CHECK(fd >= 0);
        CHECK_EQ_INT(connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        return fd;
}

static void start_qemu(int listen_fd, const char *accel) {
        char chardev[128];

        snprintf(chardev, sizeof(chardev), "socket,id=mon,fd=%d,server=on,wait=off", listen_fd);
        qemu_pid = fork();
        CHECK(qemu_pid >= 0);
        if (qemu_pid == 0) {
                int null = open("/dev/null", O_RDWR | O_CLOEXEC);
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                (void) dup2(null, STDIN_FILENO);
                (void) fcntl(listen_fd, F_SETFD, 0);
                execlp("qemu-system-x86_64", "qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display",
                       "none", "-accel", accel, "-chardev", chardev, "-mon", "chardev=mon,mode=control", NULL);
                _exit(127);
        }
}

static QmpClient *connect_client(const char *sock) {
        QmpClient *c = NULL;
        int fd = connect_unix(sock);

        CHECK_EQ_INT(qmp_client_new(fd, &c), 0);
        if (!c) {
                close(fd);
                return NULL;
        }
        CHECK_EQ_INT(qmp_client_handshake(c, TIMEOUT), 0);
        return c;
}

/* The call's "return" (a reference), checked to have succeeded. */
static json_object *call(QmpClient *c, const char *cmd, const char *args_json, int fd) {
        json_object *args = args_json ? json_tokener_parse(args_json) : NULL, *ret = NULL;
        char *error = NULL;
        int r;

        r = qmp_client_call(c, cmd, args, fd, TIMEOUT, &ret, &error);
        if (r < 0)
                fprintf(stderr, "%s: %s (%s)\n", cmd, strerror(-r), error ?: "-");
        CHECK_EQ_INT(r, 0);
        free(error);
        json_object_put(args);
        return ret;
}

static bool has_node(json_object *nodes, const char *name, const char *drv) {
        for (size_t i = 0; nodes && i < json_object_array_length(nodes); i++) {
                json_object *n = json_object_array_get_idx(nodes, i), *v, *d;
                if (json_object_object_get_ex(n, "node-name", &v) && streq(json_object_get_string(v), name) &&
                    json_object_object_get_ex(n, "drv", &d) && streq(json_object_get_string(d), drv))
                        return true;
        }
        return false;
}

static void check_errors(QmpClient *c) {
        char *error = NULL;

        CHECK_EQ_INT(qmp_client_call(c, "no-such-command", NULL, -1, TIMEOUT, NULL, &error), -EREMOTEIO);
        CHECK_CONTAINS(error, "CommandNotFound: ");
        free(error);
        error = NULL;
        json_object *args = json_tokener_parse("{\"driver\": \"qcow2\", \"node-name\": \"bad\", \"file\": \"nowhere\"}");
        CHECK_EQ_INT(qmp_client_call(c, "blockdev-add", args, -1, TIMEOUT, NULL, &error), -EREMOTEIO);
        CHECK_CONTAINS(error, "GenericError: ");
        free(error);
        json_object_put(args);
        CHECK(!qmp_client_is_dead(c));
}

typedef struct Ending {
        bool shutdown, dead;
} Ending;

static int on_event(QmpClient *c, const char *event, json_object *data, void *userdata) {
        Ending *e = userdata;

        if (!event)
                e->dead = true;
        else if (streq(event, "SHUTDOWN"))
                e->shutdown = true;
        return 0;
}

static void test_qemu(void) {
        char mon[PATH_MAX], vu[PATH_MAX], img[PATH_MAX], args[256];
        const char *accel = pick_accel();
        json_object *ret, *v;
        QmpClient *c;
        sd_event *ev = NULL;
        Ending ending = {};
        int lfd, vfd, ifd, status;

        snprintf(mon, sizeof(mon), "%s/mon.sock", dir);
        snprintf(vu, sizeof(vu), "%s/vu.sock", dir);
        snprintf(img, sizeof(img), "%s/t.qcow2", dir);
        CHECK_EQ_INT(run((char *[]) { (char *) "qemu-img", (char *) "create", (char *) "-q", (char *) "-f",
                                      (char *) "qcow2", img, (char *) "64M", NULL }),
                     0);
        fprintf(stderr, "accelerator: %s\n", accel);

        lfd = listen_unix(mon);
        start_qemu(lfd, accel);
        close(lfd);

        c = connect_client(mon);
        if (!c)
                return;
        CHECK(qmp_client_version(c) && qmp_client_version(c)->major >= 7);
        ret = call(c, "query-version", NULL, -1);
        CHECK(ret && json_object_object_get_ex(ret, "qemu", &v) && json_object_object_get_ex(v, "major", &v) &&
              (unsigned) json_object_get_int(v) == qmp_client_version(c)->major);
        json_object_put(ret);

        /* The image by fd: add-fd, then nodes on /dev/fdset/1. */
        ifd = open(img, O_RDWR | O_CLOEXEC);
        CHECK(ifd >= 0);
        ret = call(c, "add-fd", "{\"fdset-id\": 1}", ifd);
        CHECK(ret && json_object_object_get_ex(ret, "fdset-id", &v) && json_object_get_int(v) == 1);
        json_object_put(ret);
        close(ifd);
        json_object_put(call(c, "blockdev-add", "{\"driver\": \"file\", \"node-name\": \"f0\", \"filename\": \"/dev/fdset/1\"}", -1));
        json_object_put(call(c, "blockdev-add", "{\"driver\": \"qcow2\", \"node-name\": \"q0\", \"file\": \"f0\"}", -1));
        ret = call(c, "query-named-block-nodes", "{\"flat\": true}", -1);
        CHECK(has_node(ret, "f0", "file"));
        CHECK(has_node(ret, "q0", "qcow2"));
        json_object_put(ret);

        /* A vhost-user-blk export on a listening socket of ours, passed with getfd. */
        vfd = listen_unix(vu);
        json_object_put(call(c, "getfd", "{\"fdname\": \"vu0\"}", vfd));
        close(vfd);
        snprintf(args, sizeof(args),
                 "{\"type\": \"vhost-user-blk\", \"id\": \"e0\", \"node-name\": \"q0\", \"writable\": true, "
                 "\"addr\": {\"type\": \"fd\", \"str\": \"vu0\"}}");
        json_object_put(call(c, "block-export-add", args, -1));
        ret = call(c, "query-block-exports", NULL, -1);
        CHECK(ret && json_object_array_length(ret) == 1);
        json_object_put(ret);

        check_errors(c);

        /* The monitor takes a new connection once the first has closed (a restarted daemon). */
        qmp_client_free(c);
        c = connect_client(mon);
        if (!c)
                return;
        ret = call(c, "query-named-block-nodes", "{\"flat\": true}", -1);
        CHECK(has_node(ret, "q0", "qcow2"));
        json_object_put(ret);

        /* quit: SHUTDOWN, then the connection ends, as the event loop sees it. */
        json_object_put(call(c, "quit", NULL, -1));
        CHECK_EQ_INT(sd_event_new(&ev), 0);
        CHECK_EQ_INT(qmp_client_attach_event(c, ev, 0, on_event, &ending), 0);
        for (unsigned i = 0; i < 1000 && !ending.dead; i++)
                CHECK(sd_event_run(ev, 10000) >= 0);
        CHECK(ending.shutdown);
        CHECK(ending.dead);
        CHECK(qmp_client_is_dead(c));
        CHECK(qmp_client_dead_reason(c) == -ECONNRESET);
        qmp_client_free(c);
        sd_event_unref(ev);

        CHECK_EQ_INT(waitpid(qemu_pid, &status, 0), qemu_pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        qemu_pid = -1;
}

int main(void) {
        if (!in_path("qemu-system-x86_64") || !in_path("qemu-img")) {
                fprintf(stderr, "qemu-system-x86_64 or qemu-img missing, skipped\n");
                return 77;
        }
        if (!mkdtemp(dir))
                return EXIT_FAILURE;
        atexit(remove_dir);
        atexit(kill_qemu); /* runs first */

        test_qemu();
        kill_qemu();
        TEST_MAIN_END();
}
