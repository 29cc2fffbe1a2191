/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * B6: OpenDisk round trip against the D-Bus floor (Peer.Ping to vdiskd over the same bus), measured
 * interleaved: batches of OpenDisk and of Ping alternate (A B A B ...), one untimed warm-up first;
 * prints the median of the per-pair ratios. Each lease is released after its OpenDisk (untimed).
 * With `fetch-all`, the timed part also fetches every further fd with Lease.GetFds (16 a call): the
 * whole hand-out of a chain deeper than one page, for reference.
 *
 *   bench-opendisk VM DISK CALLS PAIRS [read-only|read-write] [fetch-all]
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-bus.h>
#include <time.h>
#include <unistd.h>

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ULL + (uint64_t) ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

static int fetch_all;

/* Lease.GetFds from fd `have` on until FdCount; returns how many were received (closed at once). */
static unsigned fetch_rest(sd_bus *bus, const char *lease, unsigned have) {
        sd_bus_error error = SD_BUS_ERROR_NULL;
        uint32_t count = 0;
        unsigned n = 0;

        if (sd_bus_get_property_trivial(bus, "org.vdisk1", lease, "org.vdisk1.Lease", "FdCount", &error, 'u', &count) < 0) {
                fprintf(stderr, "FdCount: %s\n", error.message);
                exit(EXIT_FAILURE);
        }
        while (have + n < count) {
                sd_bus_message *reply = NULL;
                int fd, r;

                r = sd_bus_call_method(bus, "org.vdisk1", lease, "org.vdisk1.Lease", "GetFds", &error, &reply, "uu",
                                       (uint32_t) (have + n), (uint32_t) 16);
                if (r < 0 || sd_bus_message_enter_container(reply, 'a', "h") < 0) {
                        fprintf(stderr, "GetFds: %s\n", error.message);
                        exit(EXIT_FAILURE);
                }
                while (sd_bus_message_read(reply, "h", &fd) > 0)
                        n++;
                sd_bus_message_unref(reply);
        }
        return n;
}

static uint64_t open_batch(sd_bus *bus, const char *vm, const char *disk, int calls, int read_only, unsigned *ret_fds) {
        uint64_t total = 0;

        for (int i = 0; i < calls; i++) {
                sd_bus_error error = SD_BUS_ERROR_NULL;
                sd_bus_message *reply = NULL;
                const char *lease, *blockdev;
                uint64_t t0 = now_ns();
                unsigned n = 0;
                int fd, r;

                r = sd_bus_call_method(bus, "org.vdisk1", "/org/vdisk1", "org.vdisk1.Manager", "OpenDisk", &error, &reply,
                                       "ssa{sv}", vm, disk, read_only ? 1 : 0, "read_only", "b", read_only);
                if (r < 0) {
                        fprintf(stderr, "OpenDisk: %s\n", error.message);
                        exit(EXIT_FAILURE);
                }
                if (sd_bus_message_read(reply, "os", &lease, &blockdev) < 0 ||
                    sd_bus_message_enter_container(reply, 'a', "h") < 0)
                        exit(EXIT_FAILURE);
                while (sd_bus_message_read(reply, "h", &fd) > 0)
                        n++;
                if (fetch_all)
                        n += fetch_rest(bus, lease, n);
                total += now_ns() - t0;
                *ret_fds = n;
                r = sd_bus_call_method(bus, "org.vdisk1", lease, "org.vdisk1.Lease", "Release", &error, NULL, "");
                if (r < 0) {
                        fprintf(stderr, "Release: %s\n", error.message);
                        exit(EXIT_FAILURE);
                }
                sd_bus_message_unref(reply); /* closes the received fds */
                sd_bus_error_free(&error);
        }
        return total;
}

static uint64_t ping_batch(sd_bus *bus, int calls) {
        uint64_t total = 0;

        for (int i = 0; i < calls; i++) {
                sd_bus_error error = SD_BUS_ERROR_NULL;
                uint64_t t0 = now_ns();
                int r = sd_bus_call_method(bus, "org.vdisk1", "/org/vdisk1", "org.freedesktop.DBus.Peer", "Ping", &error, NULL, "");
                total += now_ns() - t0;
                if (r < 0) {
                        fprintf(stderr, "Ping: %s\n", error.message);
                        exit(EXIT_FAILURE);
                }
        }
        return total;
}

int main(int argc, char *argv[]) {
        sd_bus *bus = NULL;
        int calls, pairs, read_only;
        unsigned fds = 0;
        double *ratios;
        uint64_t open_total = 0, ping_total = 0;

        if (argc < 5) {
                fprintf(stderr, "usage: %s VM DISK CALLS PAIRS [read-only|read-write] [fetch-all]\n", argv[0]);
                return 2;
        }
        calls = atoi(argv[3]);
        pairs = atoi(argv[4]);
        read_only = argc > 5 && strcmp(argv[5], "read-only") == 0;
        fetch_all = argc > 6 && strcmp(argv[6], "fetch-all") == 0;
        if (calls < 1 || pairs < 1 || sd_bus_open_system(&bus) < 0)
                return 2;
        ratios = calloc((size_t) pairs, sizeof(double));

        /* Warm-up, untimed. */
        (void) open_batch(bus, argv[1], argv[2], calls / 10 + 1, read_only, &fds);
        (void) ping_batch(bus, calls / 10 + 1);

        for (int p = 0; p < pairs; p++) {
                uint64_t a = open_batch(bus, argv[1], argv[2], calls, read_only, &fds);
                uint64_t b = ping_batch(bus, calls);
                ratios[p] = (double) a / (double) b;
                open_total += a;
                ping_total += b;
        }
        qsort(ratios, (size_t) pairs, sizeof(double), cmp_double);
        printf("{\"fds\": %u, \"calls\": %d, \"pairs\": %d, \"opendisk_us\": %.1f, \"ping_us\": %.1f, \"median_ratio\": %.3f}\n",
               fds, calls, pairs, (double) open_total / 1000.0 / calls / pairs, (double) ping_total / 1000.0 / calls / pairs,
               ratios[pairs / 2]);
        free(ratios);
        sd_bus_unref(bus);
        return 0;
}
