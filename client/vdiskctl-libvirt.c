/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * "vdiskctl libvirt start|stop": libvirt domains on vdisk disks.
 *
 * A domain XML names vdisk disks with <source vdisk='DISK'/> (disks of the VM given on the command
 * line). "start" takes a lease on each (OpenDisk), rewrites each such <disk> into the explicit chain
 * libvirt 9.0 accepts from file descriptors (every <source file=... fdgroup=...>, every <backingStore>
 * with its <format>, the chain ending in <backingStore/>, <driver type> on the top), defines the domain,
 * hands the fds to libvirt (virDomainFDAssociate) and starts it, all on one libvirt connection.
 *
 * Leases live as long as the bus connection that took them, so the process that took them stays: the
 * holder. "start" forks it; it detaches from the terminal once the domain runs, follows the domain's
 * lifecycle events and releases the leases when the domain stops (vdiskd re-checks the headers then).
 * A domain must never run on released leases, so the holder forks, before it takes any lease, a
 * guardian that keeps a copy of the bus connection's socket and nothing else: if the holder dies
 * (SIGKILL, a crash), the connection, and with it the leases, stay open until the guardian has
 * destroyed the domain; only then does the guardian exit and the leases end.
 */

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <systemd/sd-bus.h>

#include "bus-util.h"
#include "i18n.h"
#include "output.h"
#include "string-util.h"
#include "vdiskctl.h"


/* libvirt and libxml2 are loaded when "vdiskctl libvirt" runs, not linked: with them (some forty
 * libraries: libvirt's, libxml2's ICU, GnuTLS, GLib) every vdiskctl process spent ten times longer in the
 * dynamic loader than in the rest of its start (B1: vdiskctl chain and vdiskctl verify). Each function
 * below is called through a pointer resolved by libvirt_load(); the macros keep the calls as written. */
#define LIBVIRT_SONAME "libvirt.so.0"
#define LIBXML2_SONAME "libxml2.so.2"

#define LIBVIRT_FUNCTIONS(X) \
        X(virConnectClose) \
        X(virConnectDomainEventRegisterAny) \
        X(virConnectGetLibVersion) \
        X(virConnectOpen) \
        X(virConnectRegisterCloseCallback) \
        X(virConnectSetKeepAlive) \
        X(virDomainCreate) \
        X(virDomainDefineXML) \
        X(virDomainDestroy) \
        X(virDomainFDAssociate) \
        X(virDomainFree) \
        X(virDomainGetMetadata) \
        X(virDomainGetUUIDString) \
        X(virDomainGetXMLDesc) \
        X(virDomainIsActive) \
        X(virDomainLookupByName) \
        X(virDomainLookupByUUIDString) \
        X(virDomainSetMetadata) \
        X(virDomainUndefine) \
        X(virEventAddHandle) \
        X(virEventAddTimeout) \
        X(virEventRegisterDefaultImpl) \
        X(virEventRunDefaultImpl) \
        X(virEventUpdateTimeout) \
        X(virGetLastError) \
        X(virGetLastErrorMessage) \
        X(virSetErrorFunc)

#define LIBXML2_FUNCTIONS(X) \
        X(xmlDocDumpMemory) \
        X(xmlDocGetRootElement) \
        X(xmlFreeDoc) \
        X(xmlFreeNode) \
        X(xmlGetLastError) \
        X(xmlGetProp) \
        X(xmlHasProp) \
        X(xmlNewChild) \
        X(xmlNewProp) \
        X(xmlNewTextChild) \
        X(xmlNodeGetContent) \
        X(xmlReadFile) \
        X(xmlSetProp) \
        X(xmlUnlinkNode)

static struct {
#define DECLARE(f) __typeof__(&f) f;
        LIBVIRT_FUNCTIONS(DECLARE)
        LIBXML2_FUNCTIONS(DECLARE)
#undef DECLARE
        xmlFreeFunc *xmlFree; /* a variable of libxml2's, not a function */
} dl;

#define virConnectClose(...) dl.virConnectClose(__VA_ARGS__)
#define virConnectDomainEventRegisterAny(...) dl.virConnectDomainEventRegisterAny(__VA_ARGS__)
#define virConnectGetLibVersion(...) dl.virConnectGetLibVersion(__VA_ARGS__)
#define virConnectOpen(...) dl.virConnectOpen(__VA_ARGS__)
#define virConnectRegisterCloseCallback(...) dl.virConnectRegisterCloseCallback(__VA_ARGS__)
#define virConnectSetKeepAlive(...) dl.virConnectSetKeepAlive(__VA_ARGS__)
#define virDomainCreate(...) dl.virDomainCreate(__VA_ARGS__)
#define virDomainDefineXML(...) dl.virDomainDefineXML(__VA_ARGS__)
#define virDomainDestroy(...) dl.virDomainDestroy(__VA_ARGS__)
#define virDomainFDAssociate(...) dl.virDomainFDAssociate(__VA_ARGS__)
#define virDomainFree(...) dl.virDomainFree(__VA_ARGS__)
#define virDomainGetMetadata(...) dl.virDomainGetMetadata(__VA_ARGS__)
#define virDomainGetUUIDString(...) dl.virDomainGetUUIDString(__VA_ARGS__)
#define virDomainGetXMLDesc(...) dl.virDomainGetXMLDesc(__VA_ARGS__)
#define virDomainIsActive(...) dl.virDomainIsActive(__VA_ARGS__)
#define virDomainLookupByName(...) dl.virDomainLookupByName(__VA_ARGS__)
#define virDomainLookupByUUIDString(...) dl.virDomainLookupByUUIDString(__VA_ARGS__)
#define virDomainSetMetadata(...) dl.virDomainSetMetadata(__VA_ARGS__)
#define virDomainUndefine(...) dl.virDomainUndefine(__VA_ARGS__)
#define virEventAddHandle(...) dl.virEventAddHandle(__VA_ARGS__)
#define virEventAddTimeout(...) dl.virEventAddTimeout(__VA_ARGS__)
#define virEventRegisterDefaultImpl(...) dl.virEventRegisterDefaultImpl(__VA_ARGS__)
#define virEventRunDefaultImpl(...) dl.virEventRunDefaultImpl(__VA_ARGS__)
#define virEventUpdateTimeout(...) dl.virEventUpdateTimeout(__VA_ARGS__)
#define virGetLastError(...) dl.virGetLastError(__VA_ARGS__)
#define virGetLastErrorMessage(...) dl.virGetLastErrorMessage(__VA_ARGS__)
#define virSetErrorFunc(...) dl.virSetErrorFunc(__VA_ARGS__)
#define xmlDocDumpMemory(...) dl.xmlDocDumpMemory(__VA_ARGS__)
#define xmlDocGetRootElement(...) dl.xmlDocGetRootElement(__VA_ARGS__)
#define xmlFreeDoc(...) dl.xmlFreeDoc(__VA_ARGS__)
#define xmlFreeNode(...) dl.xmlFreeNode(__VA_ARGS__)
#define xmlGetLastError(...) dl.xmlGetLastError(__VA_ARGS__)
#define xmlGetProp(...) dl.xmlGetProp(__VA_ARGS__)
#define xmlHasProp(...) dl.xmlHasProp(__VA_ARGS__)
#define xmlNewChild(...) dl.xmlNewChild(__VA_ARGS__)
#define xmlNewProp(...) dl.xmlNewProp(__VA_ARGS__)
#define xmlNewTextChild(...) dl.xmlNewTextChild(__VA_ARGS__)
#define xmlNodeGetContent(...) dl.xmlNodeGetContent(__VA_ARGS__)
#define xmlReadFile(...) dl.xmlReadFile(__VA_ARGS__)
#define xmlSetProp(...) dl.xmlSetProp(__VA_ARGS__)
#define xmlUnlinkNode(...) dl.xmlUnlinkNode(__VA_ARGS__)
#define xmlFree(p) (*dl.xmlFree)(p)

static int libvirt_load(void) {
        void *virt, *xml;

        virt = dlopen(LIBVIRT_SONAME, RTLD_NOW | RTLD_LOCAL);
        if (!virt) {
                log_error(_("Cannot load libvirt (%s): %s"), LIBVIRT_SONAME, dlerror());
                return -ENOENT;
        }
        xml = dlopen(LIBXML2_SONAME, RTLD_NOW | RTLD_LOCAL);
        if (!xml) {
                log_error(_("Cannot load libxml2 (%s): %s"), LIBXML2_SONAME, dlerror());
                return -ENOENT;
        }
#define RESOLVE(lib, soname, f)                                                                   \
        do {                                                                                      \
                *(void **) &dl.f = dlsym(lib, #f);                                                \
                if (!dl.f) {                                                                      \
                        log_error(_("Cannot load %s: it has no %s"), soname, #f);                 \
                        return -ENOENT;                                                           \
                }                                                                                 \
        } while (0)
#define RESOLVE_VIRT(f) RESOLVE(virt, LIBVIRT_SONAME, f);
#define RESOLVE_XML(f) RESOLVE(xml, LIBXML2_SONAME, f);
        LIBVIRT_FUNCTIONS(RESOLVE_VIRT)
        LIBXML2_FUNCTIONS(RESOLVE_XML)
        RESOLVE(xml, LIBXML2_SONAME, xmlFree);
#undef RESOLVE_XML
#undef RESOLVE_VIRT
#undef RESOLVE
        /* Both stay loaded until the process ends. */
        return 0;
}

#define _noreturn_ __attribute__((noreturn))

static inline void *mfree(void *p) {
        free(p);
        return NULL;
}

/* libvirt 9.0.0 brought virDomainFDAssociate and <source fdgroup=...>. */
#define LIBVIRT_VERSION_NEEDED 9000000UL

#define LEASE_FDS_PER_CALL 16U

/* The domain metadata that tells "stop" which process holds the leases. */
#define VDISK_METADATA_URI "https://vdisk.dev/libvirt/1"
#define VDISK_METADATA_PREFIX "vdisk"

/* How long "stop" waits for the holder to release the leases. */
#define HOLDER_EXIT_TIMEOUT_MS 60000

typedef struct Layer {
        const char *format; /* points into the lease's blockdev JSON */
        int fd;
        char *group;
} Layer;

typedef struct VDisk {
        xmlNodePtr node; /* the <disk> element */
        char *name;
        bool read_only;
        char *lease;
        json_object *blockdev;
        int *fds;
        size_t n_fds, n_alloc;
        Layer *layers; /* top first */
        size_t n_layers;
} VDisk;

typedef struct Holder {
        const char *vm;
        const char *uri;
        char *domain_name;
        xmlDocPtr doc;
        VDisk *disks;
        size_t n_disks;

        sd_bus *bus;
        virConnectPtr conn;
        virDomainPtr dom;
        char uuid[VIR_UUID_STRING_BUFLEN];
        int lifecycle_cb;
        int bus_watch;
        int signal_watch;
        int signal_fd;
        int reconnect_timer;
        int guardian_fd; /* write end of the guardian's pipe */
        pid_t guardian;

        bool detached; /* messages go to syslog */
        bool done;
        int exit_status;
} Holder;

/* libvirt prints every error on stderr by default: vdiskctl reports them itself. */
static void libvirt_silence(void *userdata, virErrorPtr error) {
}

static const char *libvirt_error(void) {
        const char *m = virGetLastErrorMessage();

        return isempty(m) ? "unknown libvirt error" : m;
}

static int libvirt_error_code(void) {
        virErrorPtr e = virGetLastError();

        return e ? e->code : VIR_ERR_OK;
}

/* After the holder detached, its messages go to syslog (the journal). */
_printf_(3, 4) static void holder_log(const Holder *h, int priority, const char *format, ...) {
        va_list ap;

        va_start(ap, format);
        if (h && h->detached)
                vsyslog(priority, format, ap);
        else {
                vfprintf(stderr, format, ap);
                fputc('\n', stderr);
        }
        va_end(ap);
}

static void vdisk_done(VDisk *d) {
        for (size_t i = 0; i < d->n_fds; i++)
                safe_close(d->fds[i]);
        free(d->fds);
        for (size_t i = 0; i < d->n_layers; i++)
                free(d->layers[i].group);
        free(d->layers);
        free(d->name);
        free(d->lease);
        if (d->blockdev)
                json_object_put(d->blockdev);
        *d = (VDisk) {};
}

static void vdisk_close_fds(VDisk *d) {
        for (size_t i = 0; i < d->n_fds; i++)
                d->fds[i] = safe_close(d->fds[i]);
}

/* ---- The domain XML ---- */

static xmlNodePtr xml_child(xmlNodePtr parent, const char *name) {
        for (xmlNodePtr c = parent ? parent->children : NULL; c; c = c->next)
                if (c->type == XML_ELEMENT_NODE && streq((const char *) c->name, name))
                        return c;
        return NULL;
}

static int domain_xml_load(Holder *h, const char *file) {
        xmlNodePtr root, devices, name;
        size_t n = 0;

        /* No network, no entities, no DTD: the file is the caller's, but it is only a domain. */
        h->doc = xmlReadFile(file, NULL, XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
        if (!h->doc) {
                const xmlError *e = xmlGetLastError();
                const char *why = e && e->message ? e->message : _("not well-formed");

                log_error(_("Failed to read the domain XML '%s': %.*s"), file, (int) strcspn(why, "\n"), why);
                return EXIT_USAGE;
        }

        root = xmlDocGetRootElement(h->doc);
        if (!root || !streq((const char *) root->name, "domain")) {
                log_error(_("The domain XML '%s' has no <domain> element."), file);
                return EXIT_USAGE;
        }

        name = xml_child(root, "name");
        if (name) {
                _cleanup_free_ char *text = (char *) xmlNodeGetContent(name);
                if (isempty(text)) {
                        log_error(_("The domain XML '%s' has an empty <name>."), file);
                        return EXIT_USAGE;
                }
                h->domain_name = strdup(text);
        } else {
                /* No name: the domain is called like the VM. */
                if (!xmlNewTextChild(root, NULL, BAD_CAST "name", BAD_CAST h->vm))
                        return log_oom();
                h->domain_name = strdup(h->vm);
        }
        if (!h->domain_name)
                return log_oom();

        devices = xml_child(root, "devices");
        for (xmlNodePtr c = devices ? devices->children : NULL; c; c = c->next)
                if (c->type == XML_ELEMENT_NODE && streq((const char *) c->name, "disk") &&
                    xmlHasProp(xml_child(c, "source"), BAD_CAST "vdisk"))
                        n++;
        if (n == 0) {
                log_error(_("The domain XML '%s' names no vdisk disk: give a <disk> the element <source vdisk='DISK'/>."),
                          file);
                return EXIT_USAGE;
        }

        h->disks = calloc(n, sizeof(VDisk));
        if (!h->disks)
                return log_oom();
        for (xmlNodePtr c = devices->children; c; c = c->next) {
                xmlNodePtr source = xml_child(c, "source");
                _cleanup_free_ char *disk = NULL;

                if (c->type != XML_ELEMENT_NODE || !streq((const char *) c->name, "disk") ||
                    !xmlHasProp(source, BAD_CAST "vdisk"))
                        continue;
                disk = (char *) xmlGetProp(source, BAD_CAST "vdisk");
                if (isempty(disk)) {
                        log_error(_("The domain XML '%s' has a <source vdisk=''/> without a disk name."), file);
                        return EXIT_USAGE;
                }
                for (size_t j = 0; j < h->n_disks; j++)
                        if (streq(h->disks[j].name, disk)) {
                                log_error(_("The domain XML '%s' names disk '%s' twice."), file, disk);
                                return EXIT_USAGE;
                        }
                h->disks[h->n_disks++] = (VDisk) {
                        .node = c,
                        .name = TAKE_PTR(disk),
                        .read_only = xml_child(c, "readonly") != NULL,
                };
        }
        return 0;
}

/* <source file='LABEL' fdgroup='GROUP'/>: the path is a label only; libvirt never opens it. */
static xmlNodePtr xml_add_source(xmlNodePtr parent, const Holder *h, const VDisk *d, size_t i) {
        char path[256];
        xmlNodePtr s;

        (void) snprintf(path, sizeof(path), "/vdisk/%s/%s/%zu", h->vm, d->name, i);
        s = xmlNewChild(parent, NULL, BAD_CAST "source", NULL);
        if (!s || !xmlNewProp(s, BAD_CAST "file", BAD_CAST path) ||
            !xmlNewProp(s, BAD_CAST "fdgroup", BAD_CAST d->layers[i].group))
                return NULL;
        return s;
}

static void xml_remove_children(xmlNodePtr parent, const char *name) {
        for (xmlNodePtr c = parent->children, next; c; c = next) {
                next = c->next;
                if (c->type == XML_ELEMENT_NODE && streq((const char *) c->name, name)) {
                        xmlUnlinkNode(c);
                        xmlFreeNode(c);
                }
        }
}

/* The <disk> becomes type='file' with the explicit chain of the lease: without <driver type> libvirt
 * takes the top for raw and refuses a backing store; without the final <backingStore/> it would read
 * the last layer's header itself; without the <backingStore> elements it would open (and chown) the
 * backing files by path. */
static int disk_rewrite(const Holder *h, const VDisk *d) {
        xmlNodePtr driver, parent = d->node;

        xml_remove_children(d->node, "source");
        xml_remove_children(d->node, "backingStore");
        if (!xmlSetProp(d->node, BAD_CAST "type", BAD_CAST "file"))
                return log_oom();

        driver = xml_child(d->node, "driver");
        if (!driver) {
                driver = xmlNewChild(d->node, NULL, BAD_CAST "driver", NULL);
                if (!driver)
                        return log_oom();
        }
        if (!xmlSetProp(driver, BAD_CAST "name", BAD_CAST "qemu") ||
            !xmlSetProp(driver, BAD_CAST "type", BAD_CAST d->layers[0].format))
                return log_oom();

        if (!xml_add_source(d->node, h, d, 0))
                return log_oom();
        for (size_t i = 1; i < d->n_layers; i++) {
                xmlNodePtr b = xmlNewChild(parent, NULL, BAD_CAST "backingStore", NULL), f;

                if (!b || !xmlNewProp(b, BAD_CAST "type", BAD_CAST "file"))
                        return log_oom();
                f = xmlNewChild(b, NULL, BAD_CAST "format", NULL);
                if (!f || !xmlNewProp(f, BAD_CAST "type", BAD_CAST d->layers[i].format))
                        return log_oom();
                if (!xml_add_source(b, h, d, i))
                        return log_oom();
                parent = b;
        }
        if (!xmlNewChild(parent, NULL, BAD_CAST "backingStore", NULL))
                return log_oom();
        return 0;
}

/* ---- Leases ---- */

static int vdisk_take_fds(VDisk *d, sd_bus_message *reply, size_t *ret_taken) {
        size_t taken = 0;
        int fd, r;

        r = sd_bus_message_enter_container(reply, 'a', "h");
        if (r < 0)
                return log_bus_parse_error(r);
        while ((r = sd_bus_message_read_basic(reply, 'h', &fd)) > 0) {
                struct stat st;
                int copy;

                if (d->n_fds >= d->n_alloc)
                        return log_bus_parse_error(-EBADMSG);
                if (fstat(fd, &st) < 0 || (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)))
                        return log_error_errno(-EBADFD, _("Failed to take over a file descriptor passed by vdiskd"));
                copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                if (copy < 0)
                        return log_error_errno(-errno, _("Failed to take over a file descriptor passed by vdiskd"));
                d->fds[d->n_fds++] = copy;
                taken++;
        }
        if (r < 0)
                return log_bus_parse_error(r);
        r = sd_bus_message_exit_container(reply);
        if (r < 0)
                return log_bus_parse_error(r);
        *ret_taken = taken;
        return 0;
}

static json_object *blockdev_node(json_object *nodes, const char *name) {
        for (size_t i = 0; i < json_object_array_length(nodes); i++) {
                json_object *n = json_object_array_get_idx(nodes, i), *v;

                if (json_object_object_get_ex(n, "node-name", &v) && json_object_is_type(v, json_type_string) &&
                    streq(json_object_get_string(v), name))
                        return n;
        }
        return NULL;
}

static const char *json_string_key(json_object *o, const char *key) {
        json_object *v;

        if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

/* Walks the lease's -blockdev nodes from the top format node (named like the disk) down the backing
 * references: one layer per format node, its fd from the file node's /dev/fdset/<i+1>. */
static int vdisk_parse_chain(const Holder *h, VDisk *d) {
        size_t n_nodes = json_object_array_length(d->blockdev);
        const char *name = d->name;

        d->layers = calloc(MAX(n_nodes, (size_t) 1), sizeof(Layer));
        if (!d->layers)
                return log_oom();

        while (name) {
                json_object *node = blockdev_node(d->blockdev, name), *backing, *file;
                const char *format = json_string_key(node, "driver"), *filename, *set;
                unsigned long k;
                char *end;
                Layer *l;

                if (!format || d->n_layers >= n_nodes)
                        return log_bus_parse_error(-EBADMSG);
                if (json_object_object_get_ex(node, "data-file", NULL)) {
                        log_error(_("Disk '%s' of VM '%s' has a layer with an external data file, which vdiskctl cannot pass to libvirt."),
                                  d->name, h->vm);
                        return EXIT_REFUSED;
                }

                file = blockdev_node(d->blockdev, json_string_key(node, "file") ?: "");
                filename = json_string_key(file, "filename");
                set = filename ? startswith(filename, "/dev/fdset/") : NULL;
                if (!set || !ascii_isdigit(set[0]))
                        return log_bus_parse_error(-EBADMSG);
                errno = 0;
                k = strtoul(set, &end, 10);
                if (errno != 0 || *end || k == 0 || k > d->n_fds)
                        return log_bus_parse_error(-EBADMSG);

                l = &d->layers[d->n_layers];
                l->format = format;
                l->fd = d->fds[k - 1];
                if (asprintf(&l->group, "vdisk-%s-%zu", d->name, d->n_layers) < 0) {
                        l->group = NULL;
                        return log_oom();
                }
                d->n_layers++;

                if (!json_object_object_get_ex(node, "backing", &backing) || !backing)
                        name = NULL;
                else if (json_object_is_type(backing, json_type_string))
                        name = json_object_get_string(backing);
                else
                        return log_bus_parse_error(-EBADMSG);
        }
        return 0;
}

/* Returns 0, an exit status > 0 if vdiskd refused, or < 0 after logging. */
static int vdisk_open(Holder *h, VDisk *d) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
        enum json_tokener_error jerr;
        const char *path, *blockdev;
        uint32_t count;
        size_t taken;
        int r;

        r = manager_call_new(h->bus, "OpenDisk", &m);
        if (r >= 0)
                r = sd_bus_message_append(m, "ss", h->vm, d->name);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "{sv}");
        if (r >= 0 && d->read_only)
                r = sd_bus_message_append(m, "{sv}", "read_only", "b", 1);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0)
                return log_bus_create_error(r);

        r = sd_bus_call(h->bus, m, BUS_TIMEOUT_LONG, &error, &reply);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to open disk '%s' of VM '%s'"), d->name, h->vm);

        r = sd_bus_message_read(reply, "os", &path, &blockdev);
        if (r < 0)
                return log_bus_parse_error(r);
        d->lease = strdup(path);
        if (!d->lease)
                return log_oom();
        d->blockdev = json_tokener_parse_verbose(blockdev, &jerr);
        if (!d->blockdev || !json_object_is_type(d->blockdev, json_type_array))
                return log_bus_parse_error(-EBADMSG);

        r = sd_bus_get_property_trivial(h->bus, VDISK_BUS_NAME, d->lease, VDISK_LEASE_INTERFACE, "FdCount", &error, 'u',
                                        &count);
        if (r < 0)
                return log_call_error(&error, r, _("Failed to get the file descriptors of disk '%s' of VM '%s'"),
                                      d->name, h->vm);
        d->fds = calloc(MAX(count, 1U), sizeof(int));
        if (!d->fds)
                return log_oom();
        d->n_alloc = count;

        r = vdisk_take_fds(d, reply, &taken);
        if (r < 0)
                return r;
        while (d->n_fds < d->n_alloc) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *more = NULL;
                uint32_t want = (uint32_t) MIN(d->n_alloc - d->n_fds, (size_t) LEASE_FDS_PER_CALL);

                r = sd_bus_call_method(h->bus, VDISK_BUS_NAME, d->lease, VDISK_LEASE_INTERFACE, "GetFds", &error, &more,
                                       "uu", (uint32_t) d->n_fds, want);
                if (r < 0)
                        return log_call_error(&error, r, _("Failed to get the file descriptors of disk '%s' of VM '%s'"),
                                              d->name, h->vm);
                r = vdisk_take_fds(d, more, &taken);
                if (r < 0)
                        return r;
                if (taken == 0)
                        return log_bus_parse_error(-EBADMSG);
        }

        return vdisk_parse_chain(h, d);
}

/* Every lease is released (vdiskd re-checks the top headers right then), even if one fails. */
static void holder_release(Holder *h) {
        for (size_t j = 0; j < h->n_disks; j++) {
                _cleanup_(sd_bus_error_free) sd_bus_error error = SD_BUS_ERROR_NULL;
                VDisk *d = &h->disks[j];

                if (!d->lease)
                        continue;
                if (sd_bus_call_method(h->bus, VDISK_BUS_NAME, d->lease, VDISK_LEASE_INTERFACE, "Release", &error, NULL,
                                       NULL) < 0)
                        holder_log(h, LOG_ERR, _("Failed to release the lease on disk '%s' of VM '%s': %s"), d->name, h->vm,
                                   error.message ?: error.name ?: "?");
                d->lease = mfree(d->lease);
        }
}

/* ---- The guardian ---- */

/* The guardian's messages: 'U' and the domain's UUID once it is defined; 'D' when the holder is done
 * and the domain no longer runs. End of file without 'D': the holder died. */
static int guardian_send(Holder *h, char what, const char *text) {
        char buf[1 + VIR_UUID_STRING_BUFLEN] = { what };
        size_t n = 1;

        if (h->guardian_fd < 0)
                return 0;
        if (text) {
                n += strlen(text);
                memcpy(buf + 1, text, n - 1);
        }
        if (write(h->guardian_fd, buf, n) != (ssize_t) n)
                return -errno ?: -EIO;
        return 0;
}

_noreturn_ static void guardian_run(const char *uri, int fd, int keep_fd) {
        char uuid[VIR_UUID_STRING_BUFLEN] = "", buf[64];
        bool done = false;
        int null_fd;

        /* Nothing of the caller's: no terminal, no pipe the caller waits on. */
        null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);
        if (null_fd >= 0) {
                (void) dup2(null_fd, STDIN_FILENO);
                (void) dup2(null_fd, STDOUT_FILENO);
                (void) dup2(null_fd, STDERR_FILENO);
        }
        for (int i = 3; i < 4096; i++)
                if (i != fd && i != keep_fd)
                        (void) close(i);
        (void) signal(SIGINT, SIG_IGN);
        (void) signal(SIGHUP, SIG_IGN);
        (void) signal(SIGTERM, SIG_IGN);
        openlog("vdiskctl-libvirt-guardian", LOG_PID, LOG_DAEMON);

        for (;;) {
                ssize_t n = read(fd, buf, sizeof(buf));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break;
                for (ssize_t i = 0; i < n; i++) {
                        if (buf[i] == 'D')
                                done = true;
                        else if (buf[i] == 'U' && (size_t) (n - i - 1) >= VIR_UUID_STRING_BUFLEN - 1) {
                                memcpy(uuid, buf + i + 1, VIR_UUID_STRING_BUFLEN - 1);
                                uuid[VIR_UUID_STRING_BUFLEN - 1] = '\0';
                                i += VIR_UUID_STRING_BUFLEN - 1;
                        }
                }
        }

        if (!done && uuid[0]) {
                virConnectPtr conn;
                virDomainPtr dom;

                /* The holder died: the domain goes first, the leases (our copy of the connection) after. */
                virSetErrorFunc(NULL, libvirt_silence);
                conn = virConnectOpen(uri);
                dom = conn ? virDomainLookupByUUIDString(conn, uuid) : NULL;
                if (dom && virDomainIsActive(dom) == 1) {
                        if (virDomainDestroy(dom) < 0)
                                syslog(LOG_ERR, "Failed to destroy domain %s whose holder died: %s", uuid, libvirt_error());
                        else
                                syslog(LOG_WARNING, "The holder of domain %s died: domain destroyed, leases released", uuid);
                } else if (!dom && !conn)
                        syslog(LOG_ERR, "Failed to reach libvirt to stop domain %s whose holder died: %s", uuid,
                               libvirt_error());
                if (dom)
                        virDomainFree(dom);
                if (conn)
                        virConnectClose(conn);
        }
        _exit(EXIT_OK);
}

static int guardian_start(Holder *h) {
        /* Asked before the fork: sd-bus refuses every call in a forked child. */
        int p[2], bus_fd = sd_bus_get_fd(h->bus);
        pid_t pid;

        if (bus_fd < 0)
                return log_error_errno(bus_fd, _("Failed to start the guardian process"));

        if (pipe2(p, O_CLOEXEC) < 0)
                return log_error_errno(-errno, _("Failed to start the guardian process"));
        pid = fork();
        if (pid < 0) {
                safe_close(p[0]);
                safe_close(p[1]);
                return log_error_errno(-errno, _("Failed to start the guardian process"));
        }
        if (pid == 0) {
                safe_close(p[1]);
                guardian_run(h->uri, p[0], bus_fd);
        }
        safe_close(p[0]);
        h->guardian_fd = p[1];
        h->guardian = pid;
        return 0;
}

/* ---- libvirt ---- */

static int holder_destroy(Holder *h) {
        if (!h->dom || virDomainIsActive(h->dom) != 1)
                return 0;
        if (virDomainDestroy(h->dom) < 0) {
                holder_log(h, LOG_ERR, _("Failed to stop domain '%s': %s"), h->domain_name, libvirt_error());
                return -EIO;
        }
        return 0;
}

/* The end of the holder: the domain stopped (or was destroyed), the leases go. */
static void holder_finish(Holder *h, int status) {
        if (h->done)
                return;
        holder_release(h);
        (void) guardian_send(h, 'D', NULL);
        h->done = true;
        h->exit_status = status;
}

static int on_lifecycle(virConnectPtr conn, virDomainPtr dom, int event, int detail, void *userdata) {
        Holder *h = userdata;

        if (event != VIR_DOMAIN_EVENT_STOPPED)
                return 0;
        holder_log(h, LOG_INFO, _("Domain '%s' stopped: releasing the leases on its disks."), h->domain_name);
        holder_finish(h, EXIT_OK);
        return 0;
}

/* Neither vdiskd nor the bus may go while the domain runs: the leases would be gone. */
static void holder_lost_leases(Holder *h, const char *why) {
        holder_log(h, LOG_ERR, _("%s: stopping domain '%s', whose disks are no longer leased."), why, h->domain_name);
        (void) holder_destroy(h);
        for (size_t j = 0; j < h->n_disks; j++)
                h->disks[j].lease = mfree(h->disks[j].lease);
        holder_finish(h, EXIT_ERROR);
}

static int on_vdiskd_gone(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *name, *old_owner, *new_owner;

        if (sd_bus_message_read(m, "sss", &name, &old_owner, &new_owner) < 0 || !streq(name, VDISK_BUS_NAME) ||
            !isempty(new_owner))
                return 0;
        holder_lost_leases(userdata, _("vdiskd stopped"));
        return 0;
}

static void on_bus_io(int watch, int fd, int events, void *userdata) {
        Holder *h = userdata;
        int r;

        do {
                r = sd_bus_process(h->bus, NULL);
        } while (r > 0 && !h->done);
        if (r < 0 && !h->done)
                holder_lost_leases(h, _("The connection to the system bus was lost"));
}

static void on_signal(int watch, int fd, int events, void *userdata) {
        struct signalfd_siginfo si;
        Holder *h = userdata;

        if (read(fd, &si, sizeof(si)) != sizeof(si))
                return;
        /* The holder must exit: the domain may not outlive the leases. */
        holder_log(h, LOG_WARNING, _("Received signal %u: stopping domain '%s'."), si.ssi_signo, h->domain_name);
        if (holder_destroy(h) >= 0)
                holder_finish(h, EXIT_OK);
}

static void on_connection_closed(virConnectPtr conn, int reason, void *userdata);

static int holder_watch_domain(Holder *h) {
        h->lifecycle_cb = virConnectDomainEventRegisterAny(h->conn, h->dom, VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                                           VIR_DOMAIN_EVENT_CALLBACK(on_lifecycle), h, NULL);
        if (h->lifecycle_cb < 0)
                return -EIO;
        if (virConnectRegisterCloseCallback(h->conn, on_connection_closed, h, NULL) < 0)
                return -EIO;
        (void) virConnectSetKeepAlive(h->conn, 5, 3);
        return 0;
}

/* libvirtd restarted: the domain keeps running; connect again and find out whether it still does. */
static void on_reconnect(int timer, void *userdata) {
        Holder *h = userdata;
        virConnectPtr conn;
        virDomainPtr dom;

        conn = virConnectOpen(h->uri);
        if (!conn)
                return; /* try again at the next tick */
        dom = virDomainLookupByUUIDString(conn, h->uuid);
        if (!dom) {
                virConnectClose(conn);
                return;
        }
        virEventUpdateTimeout(timer, -1);
        h->conn = conn;
        h->dom = dom;
        if (holder_watch_domain(h) < 0) {
                holder_log(h, LOG_ERR, _("Failed to follow domain '%s': %s"), h->domain_name, libvirt_error());
                (void) holder_destroy(h);
                holder_finish(h, EXIT_ERROR);
                return;
        }
        holder_log(h, LOG_INFO, _("Connected to libvirt again, following domain '%s'."), h->domain_name);
        if (virDomainIsActive(dom) != 1)
                on_lifecycle(conn, dom, VIR_DOMAIN_EVENT_STOPPED, 0, h);
}

static void on_connection_closed(virConnectPtr conn, int reason, void *userdata) {
        Holder *h = userdata;

        if (h->done || conn != h->conn)
                return;
        holder_log(h, LOG_WARNING, _("The connection to libvirt was closed: connecting again."));
        if (h->dom)
                virDomainFree(h->dom);
        h->dom = NULL;
        h->lifecycle_cb = -1;
        /* Not closed here: libvirt still holds it while it runs this callback. */
        h->conn = NULL;
        virEventUpdateTimeout(h->reconnect_timer, 1000);
}

static int libvirt_connect(Holder *h) {
        unsigned long version = 0;

        h->conn = virConnectOpen(h->uri);
        if (!h->conn) {
                log_error(_("Failed to connect to libvirt%s%s: %s"), h->uri ? " " : "", h->uri ?: "", libvirt_error());
                return EXIT_ERROR;
        }
        if (virConnectGetLibVersion(h->conn, &version) < 0) {
                log_error(_("Failed to get the version of libvirt: %s"), libvirt_error());
                return EXIT_ERROR;
        }
        if (version < LIBVIRT_VERSION_NEEDED) {
                log_error(_("libvirt %lu.%lu.%lu is too old: disks passed as file descriptors (fdgroup, virDomainFDAssociate) need libvirt 9.0.0 or newer."),
                          version / 1000000, version / 1000 % 1000, version % 1000);
                return EXIT_ERROR;
        }
        return 0;
}

/* ---- start ---- */

static void holder_done(Holder *h) {
        for (size_t j = 0; j < h->n_disks; j++)
                vdisk_done(&h->disks[j]);
        free(h->disks);
        free(h->domain_name);
        if (h->doc)
                xmlFreeDoc(h->doc);
        if (h->dom)
                virDomainFree(h->dom);
        if (h->conn)
                virConnectClose(h->conn);
        safe_close(h->guardian_fd);
        safe_close(h->signal_fd);
        if (h->bus)
                sd_bus_flush_close_unref(h->bus);
}

/* Sets up what runs the domain; returns 0 once it runs, or an exit status / < 0 after saying why.
 * *ret_restore holds what to undo when it fails after the definition. */
static int holder_start(Holder *h, const char *file) {
        _cleanup_free_ char *old_xml = NULL;
        xmlChar *xml = NULL;
        virDomainPtr old;
        int size, r;

        r = domain_xml_load(h, file);
        if (r != 0)
                return r;

        virSetErrorFunc(NULL, libvirt_silence);
        if (virEventRegisterDefaultImpl() < 0) {
                log_error(_("Failed to set up the libvirt event loop: %s"), libvirt_error());
                return EXIT_ERROR;
        }

        r = bus_connect(&h->bus);
        if (r < 0)
                return r;
        r = guardian_start(h);
        if (r < 0)
                return r;

        r = libvirt_connect(h);
        if (r != 0)
                return r;

        old = virDomainLookupByName(h->conn, h->domain_name);
        if (old) {
                int active = virDomainIsActive(old);

                if (active == 1) {
                        virDomainFree(old);
                        log_error(_("Domain '%s' is already running."), h->domain_name);
                        return EXIT_REFUSED;
                }
                old_xml = virDomainGetXMLDesc(old, VIR_DOMAIN_XML_INACTIVE | VIR_DOMAIN_XML_SECURE);
                /* A new definition of the same name replaces the old one only with its UUID. */
                if (old_xml && !xml_child(xmlDocGetRootElement(h->doc), "uuid")) {
                        char uuid[VIR_UUID_STRING_BUFLEN];

                        if (virDomainGetUUIDString(old, uuid) < 0 ||
                            !xmlNewTextChild(xmlDocGetRootElement(h->doc), NULL, BAD_CAST "uuid", BAD_CAST uuid))
                                old_xml = mfree(old_xml);
                }
                virDomainFree(old);
                if (!old_xml) {
                        log_error(_("Failed to read the definition of domain '%s': %s"), h->domain_name, libvirt_error());
                        return EXIT_ERROR;
                }
        }

        /* One after the other: a refusal ends them all, as the holder exits. */
        for (size_t j = 0; j < h->n_disks; j++) {
                r = vdisk_open(h, &h->disks[j]);
                if (r != 0)
                        return r;
                r = disk_rewrite(h, &h->disks[j]);
                if (r < 0)
                        return r;
        }

        xmlDocDumpMemory(h->doc, &xml, &size);
        if (!xml)
                return log_oom();
        h->dom = virDomainDefineXML(h->conn, (const char *) xml);
        xmlFree(xml);
        if (!h->dom) {
                log_error(_("Failed to define domain '%s': %s"), h->domain_name, libvirt_error());
                return EXIT_ERROR;
        }
        if (virDomainGetUUIDString(h->dom, h->uuid) < 0 || guardian_send(h, 'U', h->uuid) < 0) {
                log_error(_("Failed to pass domain '%s' to the guardian process."), h->domain_name);
                r = EXIT_ERROR;
                goto undefine;
        }

        /* Before the start: a domain that stops at once is seen stopping. */
        if (holder_watch_domain(h) < 0) {
                log_error(_("Failed to follow domain '%s': %s"), h->domain_name, libvirt_error());
                r = EXIT_ERROR;
                goto undefine;
        }

        for (size_t j = 0; j < h->n_disks; j++) {
                const VDisk *d = &h->disks[j];

                for (size_t i = 0; i < d->n_layers; i++) {
                        int fd = d->layers[i].fd;
                        unsigned flags = i == 0 && !d->read_only ? VIR_DOMAIN_FD_ASSOCIATE_SECLABEL_WRITABLE : 0;

                        if (virDomainFDAssociate(h->dom, d->layers[i].group, 1, &fd, flags) < 0) {
                                if (libvirt_error_code() == VIR_ERR_NO_SUPPORT)
                                        log_error(_("libvirt refused the file descriptors of disk '%s': disks passed as file descriptors (fdgroup, virDomainFDAssociate) need libvirt 9.0.0 or newer."),
                                                  d->name);
                                else
                                        log_error(_("Failed to pass the file descriptors of disk '%s' to libvirt: %s"),
                                                  d->name, libvirt_error());
                                r = EXIT_ERROR;
                                goto undefine;
                        }
                }
        }

        if (virDomainCreate(h->dom) < 0) {
                log_error(_("Failed to start domain '%s': %s"), h->domain_name, libvirt_error());
                r = EXIT_ERROR;
                goto undefine;
        }

        /* libvirt and QEMU have their own copies now. */
        for (size_t j = 0; j < h->n_disks; j++)
                vdisk_close_fds(&h->disks[j]);
        return 0;

undefine:
        /* The definition as it was before: the old one, or none. */
        if (old_xml) {
                virDomainPtr d = virDomainDefineXML(h->conn, old_xml);
                if (d)
                        virDomainFree(d);
        } else
                (void) virDomainUndefine(h->dom);
        return r;
}

static void holder_set_metadata(Holder *h) {
        char buf[128];

        (void) snprintf(buf, sizeof(buf), "<holder pid='%d' guardian='%d'/>", (int) getpid(), (int) h->guardian);
        if (virDomainSetMetadata(h->dom, VIR_DOMAIN_METADATA_ELEMENT, buf, VDISK_METADATA_PREFIX, VDISK_METADATA_URI,
                                 VIR_DOMAIN_AFFECT_LIVE) < 0)
                holder_log(h, LOG_WARNING, _("Failed to record the holder in domain '%s': %s"), h->domain_name,
                           libvirt_error());
}

static int holder_detach(Holder *h) {
        int null_fd = open("/dev/null", O_RDWR | O_CLOEXEC);

        if (null_fd < 0)
                return -errno;
        (void) dup2(null_fd, STDIN_FILENO);
        (void) dup2(null_fd, STDOUT_FILENO);
        (void) dup2(null_fd, STDERR_FILENO);
        safe_close(null_fd);
        openlog("vdiskctl-libvirt", LOG_PID, LOG_DAEMON);
        h->detached = true;
        return 0;
}

/* The holder's life after the start: libvirt's events, the bus and signals, until the domain stops. */
static int holder_loop(Holder *h) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        int r;

        r = sd_bus_match_signal(h->bus, &slot, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                "NameOwnerChanged", on_vdiskd_gone, h);
        if (r < 0)
                return r;
        h->bus_watch = virEventAddHandle(sd_bus_get_fd(h->bus), VIR_EVENT_HANDLE_READABLE, on_bus_io, h, NULL);
        h->signal_watch = virEventAddHandle(h->signal_fd, VIR_EVENT_HANDLE_READABLE, on_signal, h, NULL);
        h->reconnect_timer = virEventAddTimeout(-1, on_reconnect, h, NULL);
        if (h->bus_watch < 0 || h->signal_watch < 0 || h->reconnect_timer < 0)
                return -EIO;

        /* vdiskd might have gone already, or the domain stopped before we listened. */
        on_bus_io(h->bus_watch, -1, 0, h);
        if (!h->done && virDomainIsActive(h->dom) == 0)
                on_lifecycle(h->conn, h->dom, VIR_DOMAIN_EVENT_STOPPED, 0, h);

        while (!h->done)
                if (virEventRunDefaultImpl() < 0) {
                        holder_log(h, LOG_ERR, _("libvirt event loop failed: %s"), libvirt_error());
                        (void) holder_destroy(h);
                        holder_finish(h, EXIT_ERROR);
                }
        return h->exit_status;
}

/* The forked holder. Writes "PID GUARDIAN UUID\n" to `report` once the domain runs. */
_noreturn_ static void holder_main(const char *vm, const char *file, const char *uri, int report) {
        Holder h = {
                .vm = vm,
                .uri = uri,
                .guardian_fd = -EBADF,
                .signal_fd = -EBADF,
                .lifecycle_cb = -1,
        };
        sigset_t mask;
        char line[128];
        int r, n;

        (void) setsid();
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGHUP);
        if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0 ||
            (h.signal_fd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK)) < 0) {
                r = log_error_errno(-errno, _("Failed to block signals"));
                goto finish;
        }
        (void) signal(SIGPIPE, SIG_IGN);

        r = holder_start(&h, file);
        if (r != 0)
                goto finish;

        holder_set_metadata(&h);
        n = snprintf(line, sizeof(line), "%d %d %s\n", (int) getpid(), (int) h.guardian, h.uuid);
        if (write(report, line, (size_t) n) != n) {
                /* The caller is gone: nobody knows the domain runs. */
                (void) holder_destroy(&h);
                r = EXIT_ERROR;
                goto finish;
        }
        report = safe_close(report);
        (void) holder_detach(&h);

        r = holder_loop(&h);
        if (r < 0) {
                holder_log(&h, LOG_ERR, _("Failed to follow domain '%s': %s"), h.domain_name, strerror(-r));
                (void) holder_destroy(&h);
                holder_finish(&h, EXIT_ERROR);
                r = EXIT_ERROR;
        }

finish:
        if (r != 0)
                holder_release(&h);
        (void) guardian_send(&h, 'D', NULL);
        holder_done(&h);
        fflush(stderr);
        _exit(r < 0 ? EXIT_ERROR : r);
}

static int verb_libvirt_start(const char *vm, const char *file) {
        _cleanup_close_ int report_read = -EBADF;
        char buf[256] = "", uuid[VIR_UUID_STRING_BUFLEN];
        int p[2], status, holder_pid, guardian_pid;
        size_t n = 0;
        pid_t pid;

        if (pipe2(p, O_CLOEXEC) < 0)
                return log_error_errno(-errno, _("Failed to start the holder process"));
        fflush(stdout);
        fflush(stderr);
        pid = fork();
        if (pid < 0) {
                safe_close(p[0]);
                safe_close(p[1]);
                return log_error_errno(-errno, _("Failed to start the holder process"));
        }
        if (pid == 0) {
                safe_close(p[0]);
                holder_main(vm, file, arg_connect, p[1]);
        }
        safe_close(p[1]);
        report_read = p[0];

        for (;;) {
                ssize_t k = read(report_read, buf + n, sizeof(buf) - 1 - n);

                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                n += (size_t) k;
                if (memchr(buf, '\n', n) || n >= sizeof(buf) - 1)
                        break;
        }
        buf[n] = '\0';

        if (sscanf(buf, "%d %d %36s", &holder_pid, &guardian_pid, uuid) != 3) {
                /* The holder failed and said why on stderr. */
                if (waitpid(pid, &status, 0) < 0)
                        return log_error_errno(-errno, _("Failed to start the holder process"));
                return WIFEXITED(status) && WEXITSTATUS(status) != 0 ? WEXITSTATUS(status) : EXIT_ERROR;
        }

        if (arg_json != JSON_OFF) {
                _cleanup_json_ json_object *o = json_object_new_object();

                if (!o || json_add_string(o, "vm", vm) < 0 || json_add_string(o, "uuid", uuid) < 0 ||
                    json_add_uint64(o, "holder", (uint64_t) holder_pid) < 0 ||
                    json_add_uint64(o, "guardian", (uint64_t) guardian_pid) < 0)
                        return log_oom();
                return show_json(o);
        }
        printf(_("Domain %s started; process %d holds the leases of its disks until it stops.\n"), uuid, holder_pid);
        return EXIT_OK;
}

/* ---- stop ---- */

static int pid_wait_exit(pid_t pid, int timeout_ms) {
        int fd = (int) syscall(SYS_pidfd_open, pid, 0);
        struct pollfd p;
        int r;

        if (fd < 0)
                return errno == ESRCH ? 0 : -errno;
        p = (struct pollfd) { .fd = fd, .events = POLLIN };
        r = poll(&p, 1, timeout_ms);
        safe_close(fd);
        if (r < 0)
                return -errno;
        return r == 0 ? -ETIMEDOUT : 0;
}

static int verb_libvirt_stop(const char *name) {
        _cleanup_free_ char *meta = NULL;
        virConnectPtr conn;
        virDomainPtr dom;
        int holder = 0, r = EXIT_OK;
        const char *p;

        virSetErrorFunc(NULL, libvirt_silence);
        conn = virConnectOpen(arg_connect);
        if (!conn) {
                log_error(_("Failed to connect to libvirt%s%s: %s"), arg_connect ? " " : "", arg_connect ?: "",
                          libvirt_error());
                return EXIT_ERROR;
        }
        dom = virDomainLookupByName(conn, name);
        if (!dom) {
                log_error(_("Domain '%s' does not exist."), name);
                virConnectClose(conn);
                return EXIT_REFUSED;
        }
        if (virDomainIsActive(dom) != 1) {
                log_error(_("Domain '%s' is not running."), name);
                r = EXIT_REFUSED;
                goto finish;
        }

        meta = virDomainGetMetadata(dom, VIR_DOMAIN_METADATA_ELEMENT, VDISK_METADATA_URI, VIR_DOMAIN_AFFECT_LIVE);
        if (meta && (p = strstr(meta, "pid='")))
                holder = atoi(p + 5);
        if (meta && holder <= 0 && (p = strstr(meta, "pid=\"")))
                holder = atoi(p + 5);

        if (virDomainDestroy(dom) < 0) {
                log_error(_("Failed to stop domain '%s': %s"), name, libvirt_error());
                r = EXIT_ERROR;
                goto finish;
        }

        /* Done when the leases are: the holder releases them and exits. */
        if (holder > 0 && pid_wait_exit(holder, HOLDER_EXIT_TIMEOUT_MS) < 0) {
                log_error(_("Domain '%s' stopped, but its holder (process %d) did not exit."), name, holder);
                r = EXIT_ERROR;
        }

finish:
        virDomainFree(dom);
        virConnectClose(conn);
        return r;
}

int verb_libvirt(int argc, char *argv[]) {
        if ((streq(argv[1], "start") || streq(argv[1], "stop")) && argc == 3 && libvirt_load() < 0)
                return EXIT_ERROR;
        if (streq(argv[1], "start")) {
                if (argc != 3) {
                        log_usage(argv[0], _("'libvirt start' takes one argument, the VM."));
                        return EXIT_USAGE;
                }
                if (!arg_domain) {
                        log_usage(argv[0], _("'libvirt start' needs --domain=FILE, the domain XML."));
                        return EXIT_USAGE;
                }
                return verb_libvirt_start(argv[2], arg_domain);
        }
        if (streq(argv[1], "stop")) {
                if (argc != 3) {
                        log_usage(argv[0], _("'libvirt stop' takes one argument, the domain."));
                        return EXIT_USAGE;
                }
                if (arg_domain) {
                        log_usage(argv[0], _("Option --domain cannot be used with 'libvirt stop'."));
                        return EXIT_USAGE;
                }
                return verb_libvirt_stop(argv[2]);
        }
        log_usage(argv[0], _("Unknown libvirt command '%s': use start or stop."), argv[1]);
        return EXIT_USAGE;
}
