/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * C helper of run-b127.py (B2 and B7 of docs/benchmarks.md): an sd-bus client that times
 * Snapshot calls without an interpreter in the way, the durability floor (write a temporary file,
 * fsync it, rename it over the record, fsync the directory), and the daemon's start time.
 *
 *   bench-b127 snapshot VM DISK COUNT
 *       COUNT Snapshot calls on one disk, one after the other; prints their times in ns (JSON).
 *   bench-b127 chain-verify VM DISK COUNT
 *       COUNT times GetChain(VM, DISK) then Verify(VM) on one connection; checks that Verify reports
 *       nothing and counts the layers; prints both calls' times in ns and the layer count (JSON).
 *   bench-b127 floor DIR SIZE COUNT
 *       COUNT atomic durable writes of SIZE bytes into DIR; prints their times in ns (JSON).
 *   bench-b127 rounds DIR SIZE ROUNDS VM-PREFIX NVMS DISK
 *       B7: one untimed warm-up round, then ROUNDS rounds of [one Snapshot on each of the NVMS VMs
 *       VM-PREFIX0000 .. , then NVMS floor writes into DIR]; prints every operation's time (JSON).
 *   bench-b127 start VDISKD [ARG...]
 *       Execs VDISKD and waits for org.vdisk1 to be owned on the bus; prints {"pid", "start_ns"}
 *       (from just before execve() to the NameOwnerChanged signal), then waits for the daemon to
 *       exit and exits with its status (the caller stops it with SIGTERM by pid).
 */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <systemd/sd-bus.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

static void die(const char *what, int r) {
        fprintf(stderr, "bench-b127: %s: %s\n", what, strerror(r < 0 ? -r : r));
        exit(EXIT_FAILURE);
}

static void print_array(const char *key, const uint64_t *v, size_t n, int last) {
        printf("\"%s\": [", key);
        for (size_t i = 0; i < n; i++)
                printf("%s%llu", i ? ", " : "", (unsigned long long) v[i]);
        printf("]%s", last ? "" : ", ");
}

static sd_bus *bus_open(void) {
        sd_bus *bus = NULL;
        int r = sd_bus_open_system(&bus);
        if (r < 0)
                die("cannot connect to the bus (DBUS_SYSTEM_BUS_ADDRESS)", r);
        return bus;
}

static uint64_t snapshot_once(sd_bus *bus, const char *vm, const char *disk) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        const char *layer;
        uint64_t t0 = now_ns(), t;
        int r;

        r = sd_bus_call_method(bus, "org.vdisk1", "/org/vdisk1", "org.vdisk1.Manager", "Snapshot", &error, &reply, "ssa{sv}",
                               vm, disk, 0);
        t = now_ns() - t0;
        if (r < 0) {
                fprintf(stderr, "bench-b127: Snapshot %s/%s: %s: %s\n", vm, disk, error.name, error.message);
                exit(EXIT_FAILURE);
        }
        if (sd_bus_message_read(reply, "s", &layer) < 0 || strlen(layer) == 0)
                die("Snapshot reply", EBADMSG);
        sd_bus_message_unref(reply);
        sd_bus_error_free(&error);
        return t;
}

static uint64_t chain_verify_once(sd_bus *bus, const char *vm, const char *disk, uint64_t *ret_verify, unsigned *ret_layers) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        uint64_t t0, t1, t2, t3;
        unsigned n = 0, problems = 0;
        int r;

        t0 = now_ns();
        r = sd_bus_call_method(bus, "org.vdisk1", "/org/vdisk1", "org.vdisk1.Manager", "GetChain", &error, &reply, "ss", vm,
                               disk);
        t1 = now_ns();
        if (r < 0) {
                fprintf(stderr, "bench-b127: GetChain %s/%s: %s: %s\n", vm, disk, error.name, error.message);
                exit(EXIT_FAILURE);
        }
        r = sd_bus_message_enter_container(reply, 'a', "(ssssttb)");
        while (r >= 0 && (r = sd_bus_message_skip(reply, "(ssssttb)")) > 0)
                n++;
        if (r < 0)
                die("GetChain reply", r);
        sd_bus_message_unref(reply);
        reply = NULL;

        t2 = now_ns();
        r = sd_bus_call_method(bus, "org.vdisk1", "/org/vdisk1", "org.vdisk1.Manager", "Verify", &error, &reply, "s", vm);
        t3 = now_ns();
        if (r < 0) {
                fprintf(stderr, "bench-b127: Verify %s: %s: %s\n", vm, error.name, error.message);
                exit(EXIT_FAILURE);
        }
        r = sd_bus_message_enter_container(reply, 'a', "(sss)");
        while (r >= 0 && (r = sd_bus_message_skip(reply, "(sss)")) > 0)
                problems++;
        if (r < 0)
                die("Verify reply", r);
        if (problems > 0) {
                fprintf(stderr, "bench-b127: Verify %s reports %u problems\n", vm, problems);
                exit(EXIT_FAILURE);
        }
        sd_bus_message_unref(reply);
        sd_bus_error_free(&error);
        *ret_verify = t3 - t2;
        *ret_layers = n;
        return t1 - t0;
}

/* The floor: what one durable record update costs on this filesystem at the least. */
static uint64_t floor_once(int dirfd, const char *buf, size_t size, unsigned slot) {
        char tmp[64], name[64];
        uint64_t t0 = now_ns();
        int fd;

        snprintf(tmp, sizeof(tmp), ".#rec-%u.tmp", slot);
        snprintf(name, sizeof(name), "rec-%u.json", slot);
        fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                die("floor: open", errno);
        if (write(fd, buf, size) != (ssize_t) size)
                die("floor: write", errno);
        if (fsync(fd) < 0)
                die("floor: fsync", errno);
        close(fd);
        if (renameat(dirfd, tmp, dirfd, name) < 0)
                die("floor: rename", errno);
        if (fsync(dirfd) < 0)
                die("floor: fsync dir", errno);
        return now_ns() - t0;
}

static char *record_like(size_t size) {
        char *buf = malloc(size);
        if (!buf)
                die("malloc", ENOMEM);
        /* JSON-looking text, so nothing is special about the page contents. */
        for (size_t i = 0; i < size; i++)
                buf[i] = "{\"layer\": \"0123456789abcdef\",\n"[i % 32];
        return buf;
}

static int open_dir(const char *path) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0)
                die(path, errno);
        return fd;
}

static int cmd_snapshot(int argc, char *argv[]) {
        sd_bus *bus;
        uint64_t *t;
        int n;

        if (argc != 5)
                return 2;
        n = atoi(argv[4]);
        if (n < 1)
                return 2;
        bus = bus_open();
        t = calloc((size_t) n, sizeof(uint64_t));
        for (int i = 0; i < n; i++)
                t[i] = snapshot_once(bus, argv[2], argv[3]);
        printf("{");
        print_array("ns", t, (size_t) n, 1);
        printf("}\n");
        free(t);
        sd_bus_flush_close_unref(bus);
        return 0;
}

static int cmd_chain_verify(int argc, char *argv[]) {
        uint64_t *tc, *tv;
        unsigned layers = 0;
        sd_bus *bus;
        int n;

        if (argc != 5)
                return 2;
        n = atoi(argv[4]);
        if (n < 1)
                return 2;
        bus = bus_open();
        tc = calloc((size_t) n, sizeof(uint64_t));
        tv = calloc((size_t) n, sizeof(uint64_t));
        for (int i = 0; i < n; i++)
                tc[i] = chain_verify_once(bus, argv[2], argv[3], &tv[i], &layers);
        printf("{\"layers\": %u, ", layers);
        print_array("chain_ns", tc, (size_t) n, 0);
        print_array("verify_ns", tv, (size_t) n, 1);
        printf("}\n");
        free(tc);
        free(tv);
        sd_bus_flush_close_unref(bus);
        return 0;
}

static int cmd_floor(int argc, char *argv[]) {
        size_t size;
        uint64_t *t;
        char *buf;
        int n, dirfd;

        if (argc != 5)
                return 2;
        size = (size_t) atol(argv[3]);
        n = atoi(argv[4]);
        if (size < 1 || n < 1)
                return 2;
        dirfd = open_dir(argv[2]);
        buf = record_like(size);
        t = calloc((size_t) n, sizeof(uint64_t));
        for (int i = 0; i < n; i++)
                t[i] = floor_once(dirfd, buf, size, (unsigned) i);
        printf("{");
        print_array("ns", t, (size_t) n, 1);
        printf("}\n");
        free(t);
        free(buf);
        close(dirfd);
        return 0;
}

static int cmd_rounds(int argc, char *argv[]) {
        size_t size;
        int rounds, nvms, dirfd;
        uint64_t *snap, *flo;
        char *buf, vm[128];
        sd_bus *bus;

        if (argc != 8)
                return 2;
        size = (size_t) atol(argv[3]);
        rounds = atoi(argv[4]);
        nvms = atoi(argv[6]);
        if (size < 1 || rounds < 1 || nvms < 1)
                return 2;
        dirfd = open_dir(argv[2]);
        buf = record_like(size);
        bus = bus_open();
        snap = calloc((size_t) rounds * (size_t) nvms, sizeof(uint64_t));
        flo = calloc((size_t) rounds * (size_t) nvms, sizeof(uint64_t));

        /* Warm-up, untimed: one round of each. */
        for (int v = 0; v < nvms; v++) {
                snprintf(vm, sizeof(vm), "%s%04d", argv[5], v);
                (void) snapshot_once(bus, vm, argv[7]);
        }
        for (int v = 0; v < nvms; v++)
                (void) floor_once(dirfd, buf, size, (unsigned) v);

        for (int r = 0; r < rounds; r++) {
                for (int v = 0; v < nvms; v++) {
                        snprintf(vm, sizeof(vm), "%s%04d", argv[5], v);
                        snap[r * nvms + v] = snapshot_once(bus, vm, argv[7]);
                }
                for (int v = 0; v < nvms; v++)
                        flo[r * nvms + v] = floor_once(dirfd, buf, size, (unsigned) v);
        }
        printf("{\"rounds\": %d, \"vms\": %d, ", rounds, nvms);
        print_array("snapshot_ns", snap, (size_t) rounds * (size_t) nvms, 0);
        print_array("floor_ns", flo, (size_t) rounds * (size_t) nvms, 1);
        printf("}\n");
        free(snap);
        free(flo);
        free(buf);
        close(dirfd);
        sd_bus_flush_close_unref(bus);
        return 0;
}

static uint64_t owned_at;

static int on_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *ret_error) {
        const char *name, *old_owner, *new_owner;
        uint64_t t = now_ns();

        (void) userdata;
        (void) ret_error;
        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) >= 0 && strcmp(name, "org.vdisk1") == 0 &&
            new_owner[0] != 0 && owned_at == 0)
                owned_at = t;
        return 0;
}

static int cmd_start(int argc, char *argv[]) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        sd_bus *bus;
        uint64_t t0 = 0;
        int p[2], r, status;
        pid_t pid;

        if (argc < 3)
                return 2;
        bus = bus_open();
        /* Synchronous: the match is in place before the daemon exists. */
        r = sd_bus_add_match(bus, NULL,
                             "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',"
                             "member='NameOwnerChanged',arg0='org.vdisk1'",
                             on_owner_changed, NULL);
        if (r < 0)
                die("AddMatch", r);
        r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner",
                               &error, NULL, "s", "org.vdisk1");
        if (r >= 0) {
                fprintf(stderr, "bench-b127: org.vdisk1 is already owned\n");
                return EXIT_FAILURE;
        }
        sd_bus_error_free(&error);

        if (pipe2(p, O_CLOEXEC) < 0)
                die("pipe", errno);
        pid = fork();
        if (pid < 0)
                die("fork", errno);
        if (pid == 0) {
                uint64_t t = now_ns();
                close(p[0]);
                if (write(p[1], &t, sizeof(t)) != sizeof(t))
                        _exit(127);
                execv(argv[2], argv + 2);
                _exit(127);
        }
        close(p[1]);
        if (read(p[0], &t0, sizeof(t0)) != sizeof(t0))
                die("reading the start time", EIO);
        close(p[0]);

        while (owned_at == 0) {
                r = sd_bus_process(bus, NULL);
                if (r < 0)
                        die("sd_bus_process", r);
                if (r > 0)
                        continue;
                if (waitpid(pid, &status, WNOHANG) == pid) {
                        fprintf(stderr, "bench-b127: vdiskd exited before owning its name (status %d)\n", status);
                        return EXIT_FAILURE;
                }
                r = sd_bus_wait(bus, 20 * 1000);
                if (r < 0 && r != -EINTR)
                        die("sd_bus_wait", r);
        }
        printf("{\"pid\": %d, \"start_ns\": %llu}\n", (int) pid, (unsigned long long) (owned_at - t0));
        fflush(stdout);
        sd_bus_flush_close_unref(bus);

        if (waitpid(pid, &status, 0) != pid)
                die("waitpid", errno);
        return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char *argv[]) {
        int r = 2;

        if (argc >= 2 && strcmp(argv[1], "snapshot") == 0)
                r = cmd_snapshot(argc, argv);
        else if (argc >= 2 && strcmp(argv[1], "chain-verify") == 0)
                r = cmd_chain_verify(argc, argv);
        else if (argc >= 2 && strcmp(argv[1], "floor") == 0)
                r = cmd_floor(argc, argv);
        else if (argc >= 2 && strcmp(argv[1], "rounds") == 0)
                r = cmd_rounds(argc, argv);
        else if (argc >= 2 && strcmp(argv[1], "start") == 0)
                r = cmd_start(argc, argv);
        if (r == 2)
                fprintf(stderr,
                        "usage: bench-b127 snapshot VM DISK COUNT | chain-verify VM DISK COUNT | floor DIR SIZE COUNT |\n"
                        "       rounds DIR SIZE ROUNDS VM-PREFIX NVMS DISK | start VDISKD [ARG...]\n");
        return r;
}
