/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* The configuration file (daemon/daemon-config.c): every key, bad values, unknown sections and keys,
 * comments, duplicates and malformed lines, each with its exact result and message. argv[1] is the
 * shipped data/vdiskd.conf. */

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "daemon-config.h"
#include "test-util.h"

static char tmpdir[] = "/tmp/vdisk-test-config-XXXXXX";
static char conf_path[256];
static char log_text[65536];

/* Runs config_load() on `path` with stderr captured into log_text. */
static int load_path(const char *path, Config *c) {
        char log_path[300];
        int saved, fd, r;
        ssize_t n;

        snprintf(log_path, sizeof(log_path), "%s/log", tmpdir);
        fd = open(log_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        CHECK(fd >= 0);
        fflush(stderr);
        saved = dup(STDERR_FILENO);
        CHECK(dup2(fd, STDERR_FILENO) == STDERR_FILENO);

        config_init_default(c);
        r = config_load(c, path);

        fflush(stderr);
        CHECK(dup2(saved, STDERR_FILENO) == STDERR_FILENO);
        close(saved);
        n = pread(fd, log_text, sizeof(log_text) - 1, 0);
        CHECK(n >= 0);
        log_text[n < 0 ? 0 : n] = 0;
        close(fd);
        return r;
}

static int load_bytes(const char *text, size_t len, Config *c) {
        int fd = open(conf_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

        CHECK(fd >= 0);
        CHECK_EQ_INT(write(fd, text, len), (long long) len);
        close(fd);
        return load_path(conf_path, c);
}

static int load(const char *text, Config *c) {
        return load_bytes(text, strlen(text), c);
}

/* The message for line `line` of the test file, e.g. ":3: invalid value for MaxJobs". */
static const char *at(unsigned line, const char *what) {
        static char buf[1024];
        snprintf(buf, sizeof(buf), "%s:%u: %s", conf_path, line, what);
        return buf;
}

static void check_defaults(const Config *c) {
        Limits d;

        limits_init_default(&d);
        CHECK_EQ_INT(c->limits.max_chain_depth, d.max_chain_depth);
        CHECK_EQ_INT(c->limits.max_virtual_size, d.max_virtual_size);
        CHECK_EQ_INT(c->limits.max_jobs, d.max_jobs);
        CHECK_EQ_INT(c->limits.max_vms, d.max_vms);
        CHECK_EQ_INT(c->limits.max_disks_per_vm, d.max_disks_per_vm);
        CHECK_EQ_INT(c->limits.max_images, d.max_images);
        CHECK_EQ_INT(c->limits.max_leases, d.max_leases);
        CHECK_EQ_INT(c->limits.max_leases_per_caller, d.max_leases_per_caller);
        CHECK_EQ_INT(c->limits.max_lease_fds, d.max_lease_fds);
        CHECK_EQ_INT(c->limits.max_lease_fds_per_caller, d.max_lease_fds_per_caller);
        CHECK(c->store_directory == NULL);
        CHECK_EQ_INT(c->cluster.mode, CLUSTER_MODE_LOCAL);
        CHECK_EQ_INT(c->cluster.io_timeout, CLUSTER_DEFAULT_IO_TIMEOUT);
        CHECK(c->cluster.lockspace == NULL && c->cluster.leases == NULL);
        CHECK(c->admin_group == NULL);
}

static void test_every_key(void) {
        Config c;

        CHECK_EQ_INT(load("[Store]\n"
                          "Directory=/srv/vdisk store\n"
                          "[Limits]\n"
                          "MaxChainDepth=7\n"
                          "MaxVirtualSize=1048576\n"
                          "MaxJobs=3\n"
                          "MaxVMs=11\n"
                          "MaxDisksPerVM=12\n"
                          "MaxImages=13\n"
                          "MaxLeases=14\n"
                          "MaxLeasesPerCaller=15\n"
                          "MaxLeaseFds=16\n"
                          "MaxLeaseFdsPerCaller=17\n"
                          "[Access]\n"
                          "AdminGroup=vdiskadm\n", &c), 0);
        CHECK_EQ_INT(strlen(log_text), 0);
        CHECK(streq_ptr(c.store_directory, "/srv/vdisk store"));
        CHECK_EQ_INT(c.limits.max_chain_depth, 7);
        CHECK_EQ_INT(c.limits.max_virtual_size, 1048576);
        CHECK_EQ_INT(c.limits.max_jobs, 3);
        CHECK_EQ_INT(c.limits.max_vms, 11);
        CHECK_EQ_INT(c.limits.max_disks_per_vm, 12);
        CHECK_EQ_INT(c.limits.max_images, 13);
        CHECK_EQ_INT(c.limits.max_leases, 14);
        CHECK_EQ_INT(c.limits.max_leases_per_caller, 15);
        CHECK_EQ_INT(c.limits.max_lease_fds, 16);
        CHECK_EQ_INT(c.limits.max_lease_fds_per_caller, 17);
        CHECK(streq_ptr(c.admin_group, "vdiskadm"));
        config_done(&c);
        CHECK(c.store_directory == NULL && c.admin_group == NULL);

        /* The extremes each number takes. */
        CHECK_EQ_INT(load("[Limits]\nMaxVMs=4294967295\nMaxImages=0\nMaxVirtualSize=512\nMaxChainDepth=1\nMaxJobs=1\n",
                          &c), 0);
        CHECK_EQ_INT(c.limits.max_vms, UINT32_MAX);
        CHECK_EQ_INT(c.limits.max_images, 0);
        CHECK_EQ_INT(c.limits.max_virtual_size, 512);
        CHECK_EQ_INT(c.limits.max_chain_depth, 1);
        CHECK_EQ_INT(c.limits.max_jobs, 1);
        config_done(&c);
        CHECK_EQ_INT(load("[Limits]\nMaxVirtualSize=70368744177664\n", &c), 0);
        CHECK_EQ_INT(c.limits.max_virtual_size, UINT64_C(70368744177664));
        config_done(&c);

        /* strtoull's "+": accepted as before. */
        CHECK_EQ_INT(load("[Limits]\nMaxJobs=+5\n", &c), 0);
        CHECK_EQ_INT(c.limits.max_jobs, 5);
        config_done(&c);
}

/* [Cluster]: every key, and each check of cluster_settings_check() with its message. */
static void test_cluster(void) {
        static const struct {
                const char *text, *why;
        } bad[] = {
                { "Mode=cluster\n", "invalid value for Mode" },
                { "Mode=Sanlock\n", "invalid value for Mode" },
                { "HostId=x\n", "invalid value for HostId" },
                { "IoTimeout=-1\n", "invalid value for IoTimeout" },
                { "Mode=sanlock\nLockspace=ls:/a\nLeases=/b\n", "HostId= must be set" },
                { "Mode=sanlock\nHostId=0\nLockspace=ls:/a\nLeases=/b\n", "HostId= must be set" },
                { "Mode=sanlock\nHostId=2001\nLockspace=ls:/a\nLeases=/b\n", "HostId= must be set" },
                { "Mode=sanlock\nHostId=1\nLeases=/b\n", "Lockspace= must be NAME:PATH" },
                { "Mode=sanlock\nHostId=1\nLockspace=/a\nLeases=/b\n", "Lockspace= must be NAME:PATH" },
                { "Mode=sanlock\nHostId=1\nLockspace=ls:a\nLeases=/b\n", "Lockspace= must be NAME:PATH" },
                { "Mode=sanlock\nHostId=1\nLockspace=:/a\nLeases=/b\n", "Lockspace= must be NAME:PATH" },
                { "Mode=sanlock\nHostId=1\nLockspace=l s:/a\nLeases=/b\n", "Lockspace= must be NAME:PATH" },
                { "Mode=sanlock\nHostId=1\nLockspace=abcdefghijabcdefghijabcdefghijabcdefghijabcdefgh:/a\nLeases=/b\n",
                  "Lockspace= must be NAME:PATH" },
                { "Mode=sanlock\nHostId=1\nLockspace=ls:/a\n", "Leases= must be the absolute path" },
                { "Mode=sanlock\nHostId=1\nLockspace=ls:/a\nLeases=b\n", "Leases= must be the absolute path" },
                { "Mode=sanlock\nHostId=1\nLockspace=ls:/a\nLeases=/b\nIoTimeout=0\n", "IoTimeout= must be from 1 to 300" },
                { "Mode=sanlock\nHostId=1\nLockspace=ls:/a\nLeases=/b\nIoTimeout=301\n", "IoTimeout= must be from 1 to 300" },
        };
        char text[512];
        Config c;

        CHECK_EQ_INT(load("[Cluster]\nMode=sanlock\nHostId=2000\nLockspace=vdisk-1.a_b:/shared/ls\nLeases=/shared/leases\n"
                          "IoTimeout=300\n", &c), 0);
        CHECK_EQ_INT(strlen(log_text), 0);
        CHECK_EQ_INT(c.cluster.mode, CLUSTER_MODE_SANLOCK);
        CHECK_EQ_INT(c.cluster.host_id, 2000);
        CHECK(streq_ptr(c.cluster.lockspace, "vdisk-1.a_b:/shared/ls"));
        CHECK(streq_ptr(c.cluster.leases, "/shared/leases"));
        CHECK_EQ_INT(c.cluster.io_timeout, 300);
        config_done(&c);

        /* Mode=local: the other keys are not checked (they may be prepared for a later switch). */
        CHECK_EQ_INT(load("[Cluster]\nMode=local\nHostId=0\nLockspace=junk\n", &c), 0);
        CHECK_EQ_INT(c.cluster.mode, CLUSTER_MODE_LOCAL);
        config_done(&c);

        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                snprintf(text, sizeof(text), "[Cluster]\n%s", bad[i].text);
                CHECK_EQ_INT(load(text, &c), -EINVAL);
                CHECK_CONTAINS(log_text, bad[i].why);
                config_done(&c);
        }
}

static void test_defaults_and_missing(const char *shipped) {
        char missing[300];
        Config c;

        CHECK_EQ_INT(load("", &c), 0);
        CHECK_EQ_INT(strlen(log_text), 0);
        check_defaults(&c);
        config_done(&c);

        /* The shipped file: every key commented out, so the defaults, and no warning. */
        CHECK_EQ_INT(load_path(shipped, &c), 0);
        CHECK_EQ_INT(strlen(log_text), 0);
        check_defaults(&c);
        config_done(&c);

        snprintf(missing, sizeof(missing), "%s/missing.conf", tmpdir);
        CHECK_EQ_INT(load_path(missing, &c), -ENOENT);
        CHECK_EQ_INT(strlen(log_text), 0);
        check_defaults(&c);
        config_done(&c);

        /* A directory opens, but cannot be read: an error, not the defaults. */
        CHECK_EQ_INT(load_path(tmpdir, &c), -EIO);
        CHECK_CONTAINS(log_text, "read error");
        config_done(&c);
}

static void test_bad_values(void) {
        static const char *const u32_keys[] = {
                "MaxChainDepth", "MaxJobs", "MaxVMs", "MaxDisksPerVM", "MaxImages", "MaxLeases",
                "MaxLeasesPerCaller", "MaxLeaseFds", "MaxLeaseFdsPerCaller",
        };
        static const char *const bad[] = {
                "", "abc", "-1", "1x", "0x10", "1K", "1.5", "1 2", "18446744073709551616",
        };
        char text[256], what[300];
        Config c;

        for (size_t i = 0; i < ELEMENTSOF(u32_keys); i++) {
                for (size_t j = 0; j < ELEMENTSOF(bad); j++) {
                        snprintf(text, sizeof(text), "[Limits]\n# a comment\n%s=%s\n", u32_keys[i], bad[j]);
                        snprintf(what, sizeof(what), "invalid value for %s", u32_keys[i]);
                        CHECK_EQ_INT(load(text, &c), -EINVAL);
                        CHECK_CONTAINS(log_text, at(3, what));
                        config_done(&c);
                }
                /* One more than a 32-bit number holds. */
                snprintf(text, sizeof(text), "[Limits]\n%s=4294967296\n", u32_keys[i]);
                CHECK_EQ_INT(load(text, &c), -EINVAL);
                snprintf(what, sizeof(what), "invalid value for %s", u32_keys[i]);
                CHECK_CONTAINS(log_text, at(2, what));
                config_done(&c);
        }
        for (size_t j = 0; j < ELEMENTSOF(bad); j++) {
                snprintf(text, sizeof(text), "[Limits]\nMaxVirtualSize=%s\n", bad[j]);
                CHECK_EQ_INT(load(text, &c), -EINVAL);
                CHECK_CONTAINS(log_text, at(2, "invalid value for MaxVirtualSize"));
                config_done(&c);
        }

        /* Parsed, but out of range: the file without a line. */
        static const char *const out_of_range[] = {
                "MaxChainDepth=0", "MaxJobs=0", "MaxVirtualSize=0", "MaxVirtualSize=511",
                "MaxVirtualSize=70368744177665",
        };
        for (size_t i = 0; i < ELEMENTSOF(out_of_range); i++) {
                snprintf(text, sizeof(text), "[Limits]\n%s\n", out_of_range[i]);
                CHECK_EQ_INT(load(text, &c), -EINVAL);
                snprintf(what, sizeof(what), "%s: limits out of range", conf_path);
                CHECK_CONTAINS(log_text, what);
                config_done(&c);
        }

        /* The first error ends the parse: the second bad line is not reached. */
        CHECK_EQ_INT(load("[Limits]\nMaxJobs=x\nMaxVMs=y\n", &c), -EINVAL);
        CHECK_CONTAINS(log_text, at(2, "invalid value for MaxJobs"));
        CHECK(!strstr(log_text, "MaxVMs"));
        config_done(&c);
}

static void test_unknown(void) {
        char section63[128], section64[128];
        Config c;

        CHECK_EQ_INT(load("[Limits]\nMaxJobs=4\nMaxThings=9\n[Foo]\nMaxVMs=5\nBar=1\n[Store]\nmaxjobs=2\n", &c), 0);
        CHECK_CONTAINS(log_text, at(3, "unknown setting [Limits] MaxThings, ignoring"));
        CHECK_CONTAINS(log_text, at(5, "unknown setting [Foo] MaxVMs, ignoring"));
        CHECK_CONTAINS(log_text, at(6, "unknown setting [Foo] Bar, ignoring"));
        CHECK_CONTAINS(log_text, at(8, "unknown setting [Store] maxjobs, ignoring"));
        CHECK_EQ_INT(c.limits.max_jobs, 4);
        CHECK_EQ_INT(c.limits.max_vms, LIMITS_DEFAULT_MAX_VMS);
        config_done(&c);

        /* Names are case-sensitive; a key before any section header has the section "". */
        CHECK_EQ_INT(load("MaxJobs=2\n[limits]\nMaxJobs=3\n", &c), 0);
        CHECK_CONTAINS(log_text, at(1, "unknown setting [] MaxJobs, ignoring"));
        CHECK_CONTAINS(log_text, at(3, "unknown setting [limits] MaxJobs, ignoring"));
        CHECK_EQ_INT(c.limits.max_jobs, LIMITS_DEFAULT_MAX_JOBS);
        config_done(&c);

        /* A ':' before the '=' is part of the key (inih alone would read the key "Max"). */
        CHECK_EQ_INT(load("[Limits]\nMax:Jobs = 4\nMaxJobs:4=5\n", &c), 0);
        CHECK_CONTAINS(log_text, at(2, "unknown setting [Limits] Max:Jobs, ignoring"));
        CHECK_CONTAINS(log_text, at(3, "unknown setting [Limits] MaxJobs:4, ignoring"));
        CHECK_EQ_INT(c.limits.max_jobs, LIMITS_DEFAULT_MAX_JOBS);
        config_done(&c);

        /* An unknown key's value is not looked at. */
        CHECK_EQ_INT(load("[Limits]\nMaxWhatever=not a number\n", &c), 0);
        CHECK_CONTAINS(log_text, at(2, "unknown setting [Limits] MaxWhatever, ignoring"));
        config_done(&c);

        /* Section names up to 63 bytes are fine (and unknown), 64 are malformed. */
        snprintf(section63, sizeof(section63), "[%s]\nK=1\n",
                 "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijk");
        CHECK_EQ_INT(load(section63, &c), 0);
        CHECK_CONTAINS(log_text, ": unknown setting [");
        config_done(&c);
        snprintf(section64, sizeof(section64), "[%s]\nK=1\n",
                 "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyzabcdefghijkl");
        CHECK_EQ_INT(load(section64, &c), -EINVAL);
        CHECK_CONTAINS(log_text, at(1, "invalid section header"));
        config_done(&c);
}

static void test_comments_and_blanks(void) {
        Config c;

        CHECK_EQ_INT(load("# comment\n"
                          "; comment\n"
                          "   # indented comment\n"
                          "\n"
                          "  \t \n"
                          "  [Limits]  \n"
                          "  MaxJobs   =   6  \n"
                          "MaxVMs=7\r\n"
                          "[Access]\n"
                          "AdminGroup = wheel ; not a comment\n"
                          "[Store]\n"
                          "Directory=/a#b\n", &c), 0);
        CHECK_EQ_INT(strlen(log_text), 0);
        CHECK_EQ_INT(c.limits.max_jobs, 6);
        CHECK_EQ_INT(c.limits.max_vms, 7);
        CHECK(streq_ptr(c.admin_group, "wheel ; not a comment"));
        CHECK(streq_ptr(c.store_directory, "/a#b"));
        config_done(&c);

        /* An indented line is a line of its own, not the continuation of the one before. */
        CHECK_EQ_INT(load("[Limits]\nMaxJobs=4\n  MaxVMs=5\n", &c), 0);
        CHECK_EQ_INT(strlen(log_text), 0);
        CHECK_EQ_INT(c.limits.max_jobs, 4);
        CHECK_EQ_INT(c.limits.max_vms, 5);
        config_done(&c);

        /* No inline comments: the comment is part of the value, which is then not a number. */
        CHECK_EQ_INT(load("[Limits]\nMaxJobs=4 # four\n", &c), -EINVAL);
        CHECK_CONTAINS(log_text, at(2, "invalid value for MaxJobs"));
        config_done(&c);
        CHECK_EQ_INT(load("[Limits]\nMaxJobs=4 ; four\n", &c), -EINVAL);
        CHECK_CONTAINS(log_text, at(2, "invalid value for MaxJobs"));
        config_done(&c);

        /* A key with an empty value: the empty path is kept, an empty group means none. */
        CHECK_EQ_INT(load("[Store]\nDirectory=\n[Access]\nAdminGroup=\n", &c), 0);
        CHECK(streq_ptr(c.store_directory, ""));
        CHECK(c.admin_group == NULL);
        config_done(&c);

        /* The last line needs no newline; a NUL byte ends a line as in a C string. */
        CHECK_EQ_INT(load("[Limits]\nMaxJobs=9", &c), 0);
        CHECK_EQ_INT(c.limits.max_jobs, 9);
        config_done(&c);
        static const char with_nul[] = "[Limits]\nMaxJobs=3\0garbage\nMaxVMs=4\n";
        CHECK_EQ_INT(load_bytes(with_nul, sizeof(with_nul) - 1, &c), 0);
        CHECK_EQ_INT(c.limits.max_jobs, 3);
        CHECK_EQ_INT(c.limits.max_vms, 4);
        config_done(&c);
}

static void test_duplicates(void) {
        Config c;

        /* The last value wins; a section may appear twice. */
        CHECK_EQ_INT(load("[Limits]\nMaxJobs=3\n[Store]\nDirectory=/one\n[Limits]\nMaxJobs=5\n"
                          "[Store]\nDirectory=/two\n[Access]\nAdminGroup=wheel\nAdminGroup=\n", &c), 0);
        CHECK_EQ_INT(strlen(log_text), 0);
        CHECK_EQ_INT(c.limits.max_jobs, 5);
        CHECK(streq_ptr(c.store_directory, "/two"));
        CHECK(c.admin_group == NULL);
        config_done(&c);

        /* A bad duplicate is an error even after a good one. */
        CHECK_EQ_INT(load("[Limits]\nMaxJobs=3\nMaxJobs=three\n", &c), -EINVAL);
        CHECK_CONTAINS(log_text, at(3, "invalid value for MaxJobs"));
        config_done(&c);
}

static void test_malformed(void) {
        static const struct {
                const char *text;
                unsigned line;
                const char *what;
        } cases[] = {
                { "[Limits]\nMaxJobs\n", 2, "expected KEY=VALUE" },
                { "[Limits]\nMaxJobs: 4\n", 2, "expected KEY=VALUE" },      /* inih alone would take ':' */
                { "[Limits]\nMaxJobs=4\n  5\n", 3, "expected KEY=VALUE" },  /* no continuation lines */
                { "\xef\xbb\xbf[Limits]\nMaxJobs=4\n", 1, "expected KEY=VALUE" }, /* no byte-order mark */
                { "# c\n[Limits\nMaxJobs=4\n", 2, "invalid section header" },
                { "[Limits] x\nMaxJobs=4\n", 1, "invalid section header" },  /* inih alone ignores " x" */
                { "[Limits]]\nMaxJobs=4\n", 1, "invalid section header" },
                { "[Limits] # comment\n", 1, "invalid section header" },
        };
        Config c;

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                CHECK_EQ_INT(load(cases[i].text, &c), -EINVAL);
                CHECK_CONTAINS(log_text, at(cases[i].line, cases[i].what));
                config_done(&c);
        }

        /* A malformed line after a good one: the good value was read, the error stops the rest. */
        CHECK_EQ_INT(load("[Limits]\nMaxJobs=4\nbogus\nMaxVMs=x\n", &c), -EINVAL);
        CHECK_CONTAINS(log_text, at(3, "expected KEY=VALUE"));
        CHECK(!strstr(log_text, "MaxVMs"));
        config_done(&c);
}

static void test_long_lines(void) {
        static const size_t lengths[] = { 150, 196, 197, 198, 253, 254, 255, 256, 300, 4096, 100000 };
        Config c;

        /* inih's buffer starts at 256 bytes and grows: the value arrives whole whatever its length,
         * and the lines after it keep their numbers. */
        for (size_t i = 0; i < ELEMENTSOF(lengths); i++) {
                size_t n = lengths[i];
                char *text = malloc(n + 64), *want = malloc(n + 2);

                if (!text || !want) {
                        CHECK(!"out of memory");
                        free(text);
                        free(want);
                        return;
                }
                memset(want, 'd', n);
                want[0] = '/';
                want[n] = 0;
                snprintf(text, n + 64, "[Store]\nDirectory=%s\n[Limits]\nMaxJobs=x\n", want);
                CHECK_EQ_INT(load(text, &c), -EINVAL);
                CHECK_CONTAINS(log_text, at(4, "invalid value for MaxJobs"));
                CHECK(c.store_directory && strlen(c.store_directory) == n);
                CHECK(streq_ptr(c.store_directory, want));
                config_done(&c);
                free(text);
                free(want);
        }
}

int main(int argc, char *argv[]) {
        if (argc != 2) {
                fprintf(stderr, "usage: test-config DATA/vdiskd.conf\n");
                return EXIT_FAILURE;
        }
        CHECK(mkdtemp(tmpdir) != NULL);
        snprintf(conf_path, sizeof(conf_path), "%s/vdiskd.conf", tmpdir);

        test_every_key();
        test_cluster();
        test_defaults_and_missing(argv[1]);
        test_bad_values();
        test_unknown();
        test_comments_and_blanks();
        test_duplicates();
        test_malformed();
        test_long_lines();

        (void) unlink(conf_path);
        {
                char log_path[300];
                snprintf(log_path, sizeof(log_path), "%s/log", tmpdir);
                (void) unlink(log_path);
        }
        (void) rmdir(tmpdir);
        TEST_MAIN_END();
}
