/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * GetDomainXML and AdoptDomainXML over the store: the libvirt <disk> element of a chain, and the
 * adoption of a chain that such an element describes explicitly.
 *
 * Adoption reads host paths (root only, at the bus edge). Nothing a file contains is followed: a
 * backing name in a header is only compared with the XML (stat, never open), the format of every
 * layer comes from the XML, and the files are checked like uploads. All checks run before the first
 * change, so a refusal leaves the store and the caller's files as they were.
 */

#include <fcntl.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <libxml/xmlsave.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "domain-xml.h"
#include "image-lock.h"
#include "log.h"
#include "undo.h"

/* libxml2: no DTD loading or validation, no entity substitution (without a DOCTYPE there is nothing to
 * substitute anyway), no network, the caller's encoding (D-Bus strings are UTF-8). XML_PARSE_HUGE lifts
 * libxml2's nesting limit of 256 elements, which a chain of up to max_chain_depth layers needs (before
 * libxml2 2.11 it lifts it entirely: domain_xml_parse() applies its own); its other limits are moot
 * under DOMAIN_XML_MAX_SIZE, and its entity limits under the DOCTYPE refusal. */
#define DOMAIN_XML_PARSE_OPTIONS \
        (XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING | XML_PARSE_IGNORE_ENC | XML_PARSE_HUGE)

/* Nesting of elements other than <backingStore>: a <disk> needs 4 (disk, source, dataStore, format). */
#define DOMAIN_XML_MAX_NESTING 8U

/* Length of a user-supplied string quoted in an error message; longer ones are not quoted. */
#define QUOTE_MAX 256U
#define LABEL_MAX (QUOTE_MAX + 64U)

/* Images copied in may exceed their virtual size by this much (metadata, snapshots), like uploads. */
#define ADOPT_FILE_SLACK (UINT64_C(1) << 30)
#define ADOPT_COPY_CHUNK (UINT64_C(1) << 30)
/* The copy runs inside the method call, and the event loop waits for it: at most this much data (about
 * a minute of copying) per adoption. Larger chains can be moved, which copies nothing. */
#define ADOPT_MAX_COPY_BYTES (UINT64_C(16) << 30)
#define ADOPT_STORE_MODE 0600

static void xml_doc_freep(xmlDoc **d) {
        if (*d)
                xmlFreeDoc(*d);
}

static void xml_charp_freep(xmlChar **p) {
        if (*p)
                xmlFree(*p);
}

static void xml_parser_ctxt_freep(xmlParserCtxt **c) {
        if (*c)
                xmlFreeParserCtxt(*c);
}

static void xml_buffer_freep(xmlBuffer **b) {
        if (*b)
                xmlBufferFree(*b);
}

#define _cleanup_xml_ _cleanup_(xml_charp_freep)

/* A user-supplied string fit for a one-line message: short and without control characters. */
static bool quotable(const char *s) {
        size_t n = 0;

        for (const unsigned char *p = (const unsigned char *) s; *p; p++)
                if (*p < 0x20 || *p == 0x7f || ++n > QUOTE_MAX)
                        return false;
        return true;
}

static const char *quote(const char *s, char buf[static QUOTE_MAX + 3]) {
        if (!s || !quotable(s))
                return "(unprintable)";
        snprintf(buf, QUOTE_MAX + 3, "'%s'", s);
        return buf;
}

/* "the top layer" or "backing layer N", with its path when it can be shown. */
static const char *layer_label(size_t i, const char *path, char buf[static LABEL_MAX]) {
        int n = i == 0 ? snprintf(buf, LABEL_MAX, "the top layer") : snprintf(buf, LABEL_MAX, "backing layer %zu", i);

        if (path && quotable(path) && n > 0 && (size_t) n < LABEL_MAX)
                snprintf(buf + n, LABEL_MAX - (size_t) n, " ('%s')", path);
        return buf;
}

void domain_xml_disk_done(DomainXmlDisk *d) {
        for (size_t i = 0; i < d->n_layers; i++)
                free(d->layers[i].path);
        free(d->layers);
        free(d->target);
        *d = (DomainXmlDisk) {};
}

/* ------------------------------------------------------------------------------------------ parse */

static bool is_element(const xmlNode *n, const char *name) {
        return n->type == XML_ELEMENT_NODE && !n->ns && xmlStrEqual(n->name, BAD_CAST name);
}

static bool has_element_children(const xmlNode *n) {
        for (const xmlNode *c = n->children; c; c = c->next)
                if (c->type == XML_ELEMENT_NODE)
                        return true;
        return false;
}

/* The child element `name` of `parent` (NULL if there is none); -EINVAL if there are several. */
static int only_child(xmlNode *parent, const char *name, xmlNode **ret) {
        xmlNode *found = NULL;

        for (xmlNode *c = parent->children; c; c = c->next)
                if (is_element(c, name)) {
                        if (found)
                                return -EINVAL;
                        found = c;
                }
        *ret = found;
        return 0;
}

static xmlChar *get_prop(xmlNode *n, const char *name) {
        return xmlGetNoNsProp(n, BAD_CAST name);
}

static int parse_format(const xmlChar *value, const char *label, ImageFormat *ret, OpError *err) {
        ImageFormat f = image_format_from_string((const char *) value);
        char q[QUOTE_MAX + 3];

        if (f < 0)
                return op_error(err, -EINVAL, "%s: format %s is not \"raw\" or \"qcow2\"", label,
                                quote((const char *) value, q));
        *ret = f;
        return 0;
}

/* The path of a layer's <source file=…>. Anything inside <source> but a security label changes what
 * the layer is (a data store, slices, encryption): vdisk cannot take that over. */
static int parse_source(xmlNode *node, const char *label, char **ret, OpError *err) {
        _cleanup_xml_ xmlChar *file = NULL;
        xmlNode *source;

        if (only_child(node, "source", &source) < 0)
                return op_error(err, -EINVAL, "%s has more than one <source>", label);
        if (!source)
                return op_error(err, -EINVAL, "%s has no <source>", label);
        for (xmlNode *c = source->children; c; c = c->next)
                if (c->type == XML_ELEMENT_NODE && !is_element(c, "seclabel"))
                        return op_error(err, -EOPNOTSUPP, "%s: <source> holds a <%s> element, which vdisk cannot adopt", label,
                                        quotable((const char *) c->name) ? (const char *) c->name : "(unprintable)");
        file = get_prop(source, "file");
        if (!file)
                return op_error(err, -EINVAL, "%s: <source> has no file attribute", label);
        if (file[0] != '/')
                return op_error(err, -EINVAL, "%s: the source path is not absolute", label);
        if (xmlStrlen(file) >= PATH_MAX)
                return op_error(err, -EINVAL, "%s: the source path is too long", label);
        *ret = strdup((const char *) file);
        return *ret ? 0 : op_error(err, -ENOMEM, "out of memory");
}

static int check_disk_element(xmlNode *root, char **ret_target, OpError *err) {
        _cleanup_xml_ xmlChar *type = NULL, *device = NULL, *dev = NULL;
        xmlNode *target, *encryption;

        if (!root || !is_element(root, "disk"))
                return op_error(err, -EINVAL, "the root element must be <disk>");
        type = get_prop(root, "type");
        if (!type)
                return op_error(err, -EINVAL, "<disk> has no type attribute (only type='file' can be adopted)");
        if (!xmlStrEqual(type, BAD_CAST "file"))
                return op_error(err, -EOPNOTSUPP, "only <disk type='file'> can be adopted");
        device = get_prop(root, "device");
        if (device && !xmlStrEqual(device, BAD_CAST "disk"))
                return op_error(err, -EOPNOTSUPP, "only <disk device='disk'> can be adopted");
        if (only_child(root, "encryption", &encryption) < 0 || encryption)
                return op_error(err, -EOPNOTSUPP, "encrypted disks cannot be adopted");

        if (only_child(root, "target", &target) < 0)
                return op_error(err, -EINVAL, "<disk> has more than one <target>");
        if (!target)
                return op_error(err, -EINVAL, "<disk> has no <target>: its dev attribute names the new disk");
        dev = get_prop(target, "dev");
        if (!dev)
                return op_error(err, -EINVAL, "<target> has no dev attribute: it names the new disk");
        if (!disk_name_is_valid((const char *) dev))
                return op_error(err, -EINVAL, "<target dev> is not a valid disk name: must match " DISK_NAME_RULE);
        *ret_target = strdup((const char *) dev);
        return *ret_target ? 0 : op_error(err, -ENOMEM, "out of memory");
}

/* The top layer's format, from <driver name='qemu' type=…>. */
static int parse_driver(xmlNode *root, ImageFormat *ret, OpError *err) {
        _cleanup_xml_ xmlChar *name = NULL, *type = NULL;
        xmlNode *driver;

        if (only_child(root, "driver", &driver) < 0)
                return op_error(err, -EINVAL, "<disk> has more than one <driver>");
        if (!driver)
                return op_error(err, -EINVAL, "the top layer has no format: <driver type=…> is missing");
        name = get_prop(driver, "name");
        if (name && !xmlStrEqual(name, BAD_CAST "qemu"))
                return op_error(err, -EOPNOTSUPP, "<driver name> must be \"qemu\"");
        type = get_prop(driver, "type");
        if (!type)
                return op_error(err, -EINVAL, "the top layer has no format: <driver> has no type attribute");
        return parse_format(type, "the top layer", ret, err);
}

/* A backing layer's format, from <format type=…>. */
static int parse_backing_format(xmlNode *node, const char *label, ImageFormat *ret, OpError *err) {
        _cleanup_xml_ xmlChar *type = NULL;
        xmlNode *format;

        if (only_child(node, "format", &format) < 0)
                return op_error(err, -EINVAL, "%s has more than one <format>", label);
        if (!format)
                return op_error(err, -EINVAL, "%s has no format: <format type=…> is missing", label);
        type = get_prop(format, "type");
        if (!type)
                return op_error(err, -EINVAL, "%s has no format: <format> has no type attribute", label);
        return parse_format(type, label, ret, err);
}

/* The layer below `node` (NULL at the explicit end of the chain). */
static int parse_backing_store(xmlNode *node, ImageFormat f, const char *label, size_t below, xmlNode **ret,
                               OpError *err) {
        _cleanup_xml_ xmlChar *type = NULL;
        xmlNode *bs;

        if (only_child(node, "backingStore", &bs) < 0)
                return op_error(err, -EINVAL, "%s has more than one <backingStore>", label);
        if (!bs)
                return op_error(err, -EINVAL, "%s has no <backingStore>: the chain must end in an explicit <backingStore/>",
                                label);
        type = get_prop(bs, "type");
        if (!type && !has_element_children(bs)) {
                *ret = NULL;
                return 0;
        }
        if (f == IMAGE_FORMAT_RAW)
                return op_error(err, -EINVAL, "%s is raw and cannot have a backing layer", label);
        if (!type)
                return op_error(err, -EINVAL, "backing layer %zu: <backingStore> has no type attribute", below);
        if (!xmlStrEqual(type, BAD_CAST "file"))
                return op_error(err, -EOPNOTSUPP, "backing layer %zu: only <backingStore type='file'> can be adopted", below);
        *ret = bs;
        return 0;
}

/* Nothing but the caller's string is ever read: no DTD, no entity, no XInclude. In case a later
 * libxml2 or a change of options ever asks for an external resource, the answer is no. */
static xmlParserInputPtr refuse_external_entity(_unused_ const char *url, _unused_ const char *id,
                                                _unused_ xmlParserCtxtPtr ctxt) {
        return NULL;
}

/* <backingStore> nests once per layer, bounded by the chain's own check; other elements need no more
 * than a few levels (disk, source, dataStore, format). */
static size_t nesting_weight(const xmlNode *n) {
        return xmlStrEqual(n->name, BAD_CAST "backingStore") ? 0 : 1;
}

/* How deep elements other than <backingStore> nest, from `root` down, walked without recursion; stops
 * counting past `limit`. */
static size_t element_depth(xmlNode *root, size_t limit) {
        size_t depth = 1, max = 1;
        xmlNode *n = root;

        while (n && max <= limit) {
                xmlNode *child = NULL;
                for (xmlNode *c = n->children; c && !child; c = c->next)
                        if (c->type == XML_ELEMENT_NODE)
                                child = c;
                if (child) {
                        n = child;
                        depth += nesting_weight(n);
                        max = MAX(max, depth);
                        continue;
                }
                /* No element below: the next element sibling, here or further up. */
                while (n && n != root) {
                        xmlNode *sib = n->next;
                        while (sib && sib->type != XML_ELEMENT_NODE)
                                sib = sib->next;
                        if (sib) {
                                depth = depth - nesting_weight(n) + nesting_weight(sib);
                                max = MAX(max, depth);
                                n = sib;
                                break;
                        }
                        depth -= nesting_weight(n);
                        n = n->parent;
                }
                if (n == root)
                        break;
        }
        return max;
}

int domain_xml_parse(const char *xml, size_t size, uint32_t max_depth, DomainXmlDisk *ret, OpError *err) {
        _cleanup_(xml_parser_ctxt_freep) xmlParserCtxt *ctxt = NULL;
        _cleanup_(xml_doc_freep) xmlDoc *doc = NULL;
        _cleanup_(domain_xml_disk_done) DomainXmlDisk d = {};
        size_t allocated = 0;
        xmlNode *root, *node;
        int r;

        if (size > DOMAIN_XML_MAX_SIZE)
                return op_error(err, -E2BIG, "the XML has %zu bytes, the limit is %" PRIu64, size, DOMAIN_XML_MAX_SIZE);
        if (memchr(xml, 0, size))
                return op_error(err, -EINVAL, "the XML contains a NUL byte");
        /* Refused before libxml2 sees it: a DOCTYPE is the only way to declare entities (internal ones
         * that multiply, external ones that read files). A libvirt <disk> element never has one. */
        if (memmem(xml, size, "<!DOCTYPE", strlen("<!DOCTYPE")))
                return op_error(err, -EINVAL, "document type declarations (<!DOCTYPE>, entities) are not accepted");

        xmlSetExternalEntityLoader(refuse_external_entity);
        ctxt = xmlNewParserCtxt();
        if (!ctxt)
                return op_error(err, -ENOMEM, "out of memory");
        doc = xmlCtxtReadMemory(ctxt, xml, (int) size, NULL, "UTF-8", DOMAIN_XML_PARSE_OPTIONS);
        if (!doc) {
                const xmlError *e = xmlCtxtGetLastError(ctxt);
                return op_error(err, -EINVAL, "the XML is not well-formed (line %d)", e ? e->line : 0);
        }
        if (doc->intSubset || doc->extSubset)
                return op_error(err, -EINVAL, "document type declarations are not accepted");

        root = xmlDocGetRootElement(doc);
        /* XML_PARSE_HUGE lifts libxml2's own nesting limit (before 2.11 entirely): ours, besides the
         * <backingStore> levels that the chain's check below counts. */
        if (root && element_depth(root, DOMAIN_XML_MAX_NESTING) > DOMAIN_XML_MAX_NESTING)
                return op_error(err, -E2BIG, "the XML nests elements other than <backingStore> deeper than the limit of %u levels",
                                DOMAIN_XML_MAX_NESTING);
        r = check_disk_element(root, &d.target, err);
        if (r < 0)
                return r;

        node = root;
        for (size_t i = 0; node; i++) {
                char label[LABEL_MAX];
                ImageFormat f = _IMAGE_FORMAT_INVALID;
                xmlNode *below = NULL;

                if (i >= max_depth)
                        return op_error(err, -ELOOP, "the chain has more than %" PRIu32 " layers (MaxChainDepth)", max_depth);
                layer_label(i, NULL, label);
                r = i == 0 ? parse_driver(root, &f, err) : parse_backing_format(node, label, &f, err);
                if (r < 0)
                        return r;

                if (d.n_layers == allocated) {
                        size_t n = allocated ? allocated * 2 : 8;
                        DomainXmlLayer *a = reallocarray(d.layers, n, sizeof(DomainXmlLayer));
                        if (!a)
                                return op_error(err, -ENOMEM, "out of memory");
                        d.layers = a;
                        allocated = n;
                }
                d.layers[d.n_layers] = (DomainXmlLayer) { .format = f };
                r = parse_source(node, label, &d.layers[d.n_layers].path, err);
                if (r < 0)
                        return r;
                d.n_layers++;

                r = parse_backing_store(node, f, label, i + 1, &below, err);
                if (r < 0)
                        return r;
                node = below;
        }

        *ret = d;
        d = (DomainXmlDisk) {};
        return 0;
}

/* ------------------------------------------------------------------------------------------ build */

static xmlNode *add_child(xmlNode *parent, const char *name) {
        return parent ? xmlNewChild(parent, NULL, BAD_CAST name, NULL) : NULL;
}

static xmlNode *add_prop(xmlNode *n, const char *name, const char *value) {
        if (n && !xmlNewProp(n, BAD_CAST name, BAD_CAST value))
                return NULL;
        return n;
}

/* <source file=PATH/images/FILE>, with a <dataStore> for an external data file. */
static int add_source(xmlNode *parent, const char *images, const Layer *l) {
        _cleanup_free_ char *path = NULL, *data = NULL;
        xmlNode *source, *ds;

        if (asprintf(&path, "%s/%s", images, l->file) < 0)
                return -ENOMEM;
        source = add_prop(add_child(parent, "source"), "file", path);
        if (!source)
                return -ENOMEM;
        if (!l->data_file)
                return 0;
        if (asprintf(&data, "%s/%s", images, l->data_file) < 0)
                return -ENOMEM;
        ds = add_prop(add_child(source, "dataStore"), "type", "file");
        if (!add_prop(add_child(ds, "format"), "type", "raw") || !add_prop(add_child(ds, "source"), "file", data))
                return -ENOMEM;
        return 0;
}

int domain_xml_build(Store *s, const char *vm, const char *disk, char **ret_xml, OpError *err) {
        _cleanup_(xml_doc_freep) xmlDoc *doc = NULL;
        _cleanup_(xml_buffer_freep) xmlBuffer *buf = NULL;
        _cleanup_free_ char *images = NULL;
        xmlSaveCtxt *save;
        xmlNode *root, *node;
        size_t len;
        char *out;
        Disk *d;
        int r;

        r = op_find_disk(s, vm, disk, NULL, &d, err);
        if (r < 0)
                return r;
        /* libvirt needs absolute paths; the store's is what the daemon was started with. */
        len = strlen(s->path);
        while (len > 1 && s->path[len - 1] == '/')
                len--;
        if (s->path[0] != '/')
                return op_error(err, -EOPNOTSUPP, "the store directory is not an absolute path");
        if (asprintf(&images, "%.*s/images", len > 1 ? (int) len : 0, s->path) < 0)
                return op_error(err, -ENOMEM, "out of memory");

        doc = xmlNewDoc(BAD_CAST "1.0");
        root = doc ? xmlNewNode(NULL, BAD_CAST "disk") : NULL;
        if (!root)
                return op_error(err, -ENOMEM, "out of memory");
        xmlDocSetRootElement(doc, root);
        if (!add_prop(add_prop(root, "type", "file"), "device", "disk"))
                return op_error(err, -ENOMEM, "out of memory");

        node = root;
        for (size_t k = 0; k < d->n_chain; k++) {
                const Layer *l = store_find_layer(s, d->chain[k]);
                const char *format;

                if (!l)
                        return op_error(err, -EBADMSG, "the record of layer %s is missing", d->chain[k]);
                format = image_format_to_string(l->format);
                if (k == 0) {
                        if (!add_prop(add_prop(add_child(root, "driver"), "name", "qemu"), "type", format))
                                return op_error(err, -ENOMEM, "out of memory");
                } else {
                        node = add_prop(add_child(node, "backingStore"), "type", "file");
                        if (!add_prop(add_child(node, "format"), "type", format))
                                return op_error(err, -ENOMEM, "out of memory");
                }
                r = add_source(node, images, l);
                if (r < 0)
                        return op_error(err, r, "out of memory");
        }
        /* The explicit end of the chain: libvirt probes nothing below it. */
        if (!add_child(node, "backingStore") ||
            !add_prop(add_prop(add_child(root, "target"), "dev", disk), "bus", "virtio"))
                return op_error(err, -ENOMEM, "out of memory");

        /* The element alone, without an XML declaration, as virsh dumpxml shows devices. */
        buf = xmlBufferCreate();
        save = buf ? xmlSaveToBuffer(buf, "UTF-8", XML_SAVE_FORMAT | XML_SAVE_NO_DECL) : NULL;
        if (!save)
                return op_error(err, -ENOMEM, "out of memory");
        r = xmlSaveTree(save, root) < 0 ? -ENOMEM : 0;
        if (xmlSaveClose(save) < 0 || r < 0)
                return op_error(err, -ENOMEM, "cannot serialize the XML");

        len = (size_t) xmlBufferLength(buf);
        out = malloc(len + 2);
        if (!out)
                return op_error(err, -ENOMEM, "out of memory");
        memcpy(out, xmlBufferContent(buf), len);
        if (len == 0 || out[len - 1] != '\n')
                out[len++] = '\n';
        out[len] = 0;
        *ret_xml = out;
        return 0;
}

/* ------------------------------------------------------------------------------------------ adopt */

typedef struct Source {
        const DomainXmlLayer *xml;
        char label[LABEL_MAX];
        int dir_fd;  /* the directory that holds the file */
        char *name;  /* the file's name in it */
        int fd;      /* O_RDONLY, checked and locked: what is copied (or moved) */
        struct stat st;
        uint64_t virtual_size;
        bool rewrite_header; /* qcow2 with a backing name or format to replace */
        Layer *layer;        /* the new record; the store owns it once written */
        bool in_store;
        /* move: the store's name of the same inode. Its mode (in the intent) and header (in an undo log)
         * are given back by the journal's roll-back. */
        int rw_fd;
} Source;

typedef struct Adoption {
        Store *store;
        const Limits *lim;
        const char *vm;
        bool move;
        Txn *txn; /* once the journal entry is written */
        DomainXmlDisk disk;
        Source *src;
        size_t n;
        struct stat images_st;
} Adoption;

static void adoption_done(Adoption *a) {
        for (size_t i = 0; i < a->n; i++) {
                Source *src = &a->src[i];
                safe_close(src->dir_fd);
                safe_close(src->fd);
                safe_close(src->rw_fd);
                free(src->name);
                if (!src->in_store)
                        layer_free(src->layer);
        }
        free(a->src);
        domain_xml_disk_done(&a->disk);
}

/* Opens a layer's file: its directory (following the path as given), then the file itself without
 * following a symlink, with the type checked before the open (opening a device can have effects). */
static int source_open(Adoption *a, size_t i, OpError *err) {
        Source *src = &a->src[i];
        const char *path = src->xml->path, *slash = strrchr(path, '/');
        _cleanup_free_ char *dir = NULL;
        struct stat st;

        layer_label(i, path, src->label);
        if (!slash || !slash[1] || streq(slash + 1, ".") || streq(slash + 1, ".."))
                return op_error(err, -EINVAL, "%s: the source path does not name a file", src->label);
        dir = strndup(path, slash == path ? 1 : (size_t) (slash - path));
        src->name = strdup(slash + 1);
        if (!dir || !src->name)
                return op_error(err, -ENOMEM, "out of memory");

        src->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (src->dir_fd < 0)
                return op_error(err, errno == ENOENT || errno == ENOTDIR ? -ENOENT : -EINVAL,
                                "%s: cannot open its directory: %s", src->label, strerror(errno));
        if (fstatat(src->dir_fd, src->name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return op_error(err, errno == ENOENT ? -ENOENT : -EINVAL, "%s: %s", src->label, strerror(errno));
        if (S_ISLNK(st.st_mode))
                return op_error(err, -EINVAL, "%s is a symbolic link; name the file itself", src->label);
        if (!S_ISREG(st.st_mode))
                return op_error(err, -EINVAL, "%s is not a regular file", src->label);

        src->fd = openat(src->dir_fd, src->name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (src->fd < 0)
                return op_error(err, errno == ELOOP ? -EINVAL : errno == ENOENT ? -ENOENT : -EINVAL, "%s: %s", src->label,
                                errno == ELOOP ? "is a symbolic link" : strerror(errno));
        if (fstat(src->fd, &src->st) < 0)
                return op_error(err, negative_errno(), "%s: cannot stat the file", src->label);
        if (!S_ISREG(src->st.st_mode) || src->st.st_dev != st.st_dev || src->st.st_ino != st.st_ino)
                return op_error(err, -EINVAL, "%s changed while it was opened", src->label);

        for (size_t j = 0; j < i; j++)
                if (a->src[j].st.st_dev == src->st.st_dev && a->src[j].st.st_ino == src->st.st_ino)
                        return op_error(err, -EINVAL, "%s and %s are the same file", a->src[j].label, src->label);
        return 0;
}

/* What `move` needs: the file can become the store's without copying, and leave its old name. */
static int source_check_move(Adoption *a, Source *src, OpError *err) {
        struct stat dst;

        if (fstat(src->dir_fd, &dst) < 0)
                return op_error(err, negative_errno(), "%s: cannot stat its directory", src->label);
        if (dst.st_dev == a->images_st.st_dev && dst.st_ino == a->images_st.st_ino)
                return op_error(err, -EINVAL, "%s is already a file of the store", src->label);
        if (src->st.st_dev != a->images_st.st_dev)
                return op_error(err, -EOPNOTSUPP, "%s is on another file system than the store; adopt without \"move\" to copy it",
                                src->label);
        if (src->st.st_nlink != 1)
                return op_error(err, -EOPNOTSUPP, "%s has %ju links; \"move\" needs a file with a single name", src->label,
                                (uintmax_t) src->st.st_nlink);
        if (src->st.st_uid != a->store->uid)
                return op_error(err, -EOPNOTSUPP, "%s is not owned by the store's owner (uid %u); adopt without \"move\" to copy it",
                                src->label, (unsigned) a->store->uid);
        if (faccessat(src->dir_fd, ".", W_OK | X_OK, AT_EACCESS) < 0)
                return op_error(err, -EOPNOTSUPP, "%s cannot be removed from its directory (%s); adopt without \"move\"",
                                src->label, strerror(errno));
        return 0;
}

/*
 * The header's backing name, read as libvirt and QEMU would (relative to the directory of the layer's
 * file), must name the next layer's file, or nothing that exists (a chain whose files were moved: the
 * XML is the authority). The name is only looked up, never opened. A backing format in the header
 * must be the XML's.
 */
static int source_check_backing(Source *src, const Qcow2Header *h, const Source *next, OpError *err) {
        const char *name = h->backing_file, *colon, *slash;
        struct stat st;
        int r;

        if (h->has_backing_file && name[0]) {
                /* "proto:…" and "json:{…}" are not file names to QEMU: they cannot be compared with a file. */
                colon = strchr(name, ':');
                slash = strchr(name, '/');
                if (colon && (!slash || colon < slash))
                        return op_error(err, -EMEDIUMTYPE, "%s: the header's backing name is not a plain file name", src->label);

                r = fstatat(src->dir_fd, name, &st, 0) < 0 ? -errno : 0;
                if (r == -ENOENT || r == -ENOTDIR) {
                        /* Moved away: the XML says what is below. */
                } else if (r < 0)
                        return op_error(err, -EMEDIUMTYPE, "%s: cannot tell which file the header's backing name refers to (%s)",
                                        src->label, strerror(-r));
                else if (!next)
                        return op_error(err, -EMEDIUMTYPE,
                                        "%s: the header names an existing backing file, but the XML ends the chain here", src->label);
                else if (st.st_dev != next->st.st_dev || st.st_ino != next->st.st_ino)
                        return op_error(err, -EMEDIUMTYPE, "%s: the header names an existing backing file other than %s",
                                        src->label, next->label);
        }
        if (next && h->has_backing_format && !streq(h->backing_format, image_format_to_string(next->xml->format)))
                return op_error(err, -EMEDIUMTYPE, "%s: the header's backing format differs from the XML's (%s)", src->label,
                                image_format_to_string(next->xml->format));
        src->rewrite_header = next || h->has_backing_file || h->has_backing_format;
        return 0;
}

static int source_validate(Adoption *a, size_t i, OpError *err) {
        Source *src = &a->src[i], *next = i + 1 < a->n ? &a->src[i + 1] : NULL;
        _cleanup_free_ Qcow2Header *h = NULL;
        OpError e = {};
        int r;

        if ((uint64_t) src->st.st_size > a->lim->max_virtual_size + ADOPT_FILE_SLACK)
                return op_error(err, -E2BIG, "%s has %" PRIu64 " bytes, more than any image of at most %" PRIu64 " bytes (MaxVirtualSize) can take",
                                src->label, (uint64_t) src->st.st_size, a->lim->max_virtual_size);
        r = a->move ? image_lock_for_change(src->fd) : image_lock_for_read(src->fd);
        if (r == -EBUSY)
                return op_error(err, -EBUSY, "%s is in use by a QEMU", src->label);
        if (r < 0)
                return op_error(err, r, "%s: cannot lock the file", src->label);

        h = calloc(1, sizeof(Qcow2Header));
        if (!h)
                return op_error(err, -ENOMEM, "out of memory");
        r = op_validate_chain_layer(src->fd, src->xml->format, a->lim, &src->virtual_size, h, &e);
        if (r < 0)
                return op_error(err, r, "%s: %s", src->label, e.reason);
        if (src->xml->format == IMAGE_FORMAT_QCOW2)
                return source_check_backing(src, h, next, err);
        return 0;
}

static int copy_range(int from, int to, uint64_t start, uint64_t end) {
        while (start < end) {
                loff_t in = (loff_t) start, out = (loff_t) start;
                ssize_t n = copy_file_range(from, &in, to, &out, (size_t) MIN(end - start, ADOPT_COPY_CHUNK), 0);

                if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS)) {
                        /* No in-kernel copy between these files: through a buffer. */
                        uint8_t buf[1 << 16];
                        n = pread(from, buf, (size_t) MIN(end - start, (uint64_t) sizeof(buf)), (off_t) start);
                        if (n > 0 && format_pwrite_full(to, buf, (size_t) n, start) < 0)
                                return -EIO;
                }
                if (n < 0)
                        return negative_errno();
                if (n == 0)
                        return -EIO; /* the file shrank */
                start += (uint64_t) n;
        }
        return 0;
}

/* Copies data extents only: holes stay holes. */
static int copy_sparse(int from, int to, uint64_t size) {
        uint64_t pos = 0;
        int r;

        while (pos < size) {
                off_t data = lseek(from, (off_t) pos, SEEK_DATA), hole;

                if (data < 0 && errno == ENXIO)
                        break;
                if (data < 0)
                        data = (off_t) pos;
                hole = lseek(from, data, SEEK_HOLE);
                if (hole < 0 || (uint64_t) hole > size)
                        hole = (off_t) size;
                r = copy_range(from, to, (uint64_t) data, (uint64_t) hole);
                if (r < 0)
                        return r;
                pos = (uint64_t) hole;
        }
        if (ftruncate(to, (off_t) size) < 0)
                return negative_errno();
        return 0;
}

typedef struct CopyArgs {
        Adoption *adoption;
        size_t index;
        OpError *err;
} CopyArgs;

/* The new header's backing: the next layer's new file, with its format; none at the bottom. */
static void new_backing(Adoption *a, size_t i, const char **ret_file, const char **ret_format) {
        const Source *next = i + 1 < a->n ? &a->src[i + 1] : NULL;

        *ret_file = next ? next->layer->file : NULL;
        *ret_format = next ? image_format_to_string(next->layer->format) : NULL;
}

/* Fills the store's temporary file: the copy, checked again (the source could have changed since it
 * was checked; the copy cannot), then its backing pointer rewritten. */
static int fill_copy(int fd, void *userdata) {
        CopyArgs *args = userdata;
        Adoption *a = args->adoption;
        Source *src = &a->src[args->index];
        const char *file, *format;
        FormatError ferr = {};
        OpError e = {};
        uint64_t vsize;
        int r;

        r = copy_sparse(src->fd, fd, (uint64_t) src->st.st_size);
        if (r < 0)
                return op_error(args->err, r, "%s: copying failed", src->label);
        r = op_validate_chain_layer(fd, src->layer->format, a->lim, &vsize, NULL, &e);
        if (r < 0)
                return op_error(args->err, r, "%s changed while it was copied: %s", src->label, e.reason);
        if (vsize != src->virtual_size)
                return op_error(args->err, -EBUSY, "%s changed while it was copied", src->label);
        if (!src->rewrite_header)
                return 0;
        new_backing(a, args->index, &file, &format);
        r = qcow2_set_backing(fd, file, format, &ferr);
        if (r < 0)
                return op_error(args->err, r, "%s: cannot rewrite the backing file name: %s", src->label, ferr.reason);
        return 0;
}

static int materialize_copy(Adoption *a, size_t i, OpError *err) {
        Source *src = &a->src[i];
        CopyArgs args = { .adoption = a, .index = i, .err = err };
        int r;

        r = store_put_layer(a->store, src->layer);
        if (r < 0)
                return op_error(err, r, "cannot write the layer record");
        src->in_store = true;
        txn_crash_point(a->txn, "after-layer-record");

        r = store_create_layer_file(a->store, src->layer, fill_copy, &args);
        if (r < 0)
                return op_error(err, r, "%s: cannot create the image file", src->label);
        txn_crash_point(a->txn, "after-file");

        src->layer->state = LAYER_READY;
        r = store_save_layer(a->store, src->layer);
        if (r < 0)
                return op_error(err, r, "cannot write the layer record");
        return 0;
}

/* move, first half: a second name for the file in the store. Until the commit the file keeps its old
 * name too, so that a roll-back (which removes the store's names) never loses the caller's data. */
static int materialize_link(Adoption *a, size_t i, OpError *err) {
        Source *src = &a->src[i];
        struct stat st;
        int r;

        r = store_put_layer(a->store, src->layer);
        if (r < 0)
                return op_error(err, r, "cannot write the layer record");
        src->in_store = true;
        txn_crash_point(a->txn, "after-layer-record");

        if (linkat(src->dir_fd, src->name, a->store->images_fd, src->layer->file, 0) < 0) {
                r = negative_errno();
                if (r == -EXDEV)
                        return op_error(err, -EOPNOTSUPP, "%s is on another mount than the store; adopt without \"move\"",
                                        src->label);
                return op_error(err, r, "%s: cannot link the file into the store: %s", src->label, strerror(-r));
        }
        if (fstatat(a->store->images_fd, src->layer->file, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return op_error(err, negative_errno(), "cannot stat a linked file");
        if (st.st_dev != src->st.st_dev || st.st_ino != src->st.st_ino)
                return op_error(err, -EBUSY, "%s was replaced while it was adopted", src->label);
        src->layer->inode = (uint64_t) st.st_ino;
        txn_crash_point(a->txn, "after-file");
        return 0;
}

/* move, second half: mode, a last check and the new backing pointer, each undone on failure. */
static int materialize_moved_header(Adoption *a, size_t i, OpError *err) {
        Source *src = &a->src[i];
        _cleanup_free_ uint8_t *header = NULL;
        _cleanup_close_ int log_fd = -EBADF;
        const char *file, *format;
        FormatError ferr = {};
        UndoLog undo;
        OpError e = {};
        struct stat st;
        uint64_t vsize;
        size_t size;
        int r;

        src->rw_fd = open_beneath(a->store->images_fd, src->layer->file, O_RDWR, 0);
        if (src->rw_fd < 0)
                return op_error(err, src->rw_fd, "%s: cannot open the linked file", src->label);
        if (fstat(src->rw_fd, &st) < 0)
                return op_error(err, negative_errno(), "cannot stat a linked file");
        if (st.st_dev != src->st.st_dev || st.st_ino != src->st.st_ino)
                return op_error(err, -EBUSY, "%s was replaced while it was adopted", src->label);
        if ((st.st_mode & 07777) != ADOPT_STORE_MODE && fchmod(src->rw_fd, ADOPT_STORE_MODE) < 0)
                return op_error(err, negative_errno(), "%s: cannot change its mode", src->label);
        r = op_validate_chain_layer(src->rw_fd, src->layer->format, a->lim, &vsize, NULL, &e);
        if (r < 0)
                return op_error(err, r, "%s changed while it was adopted: %s", src->label, e.reason);
        if (vsize != src->virtual_size)
                return op_error(err, -EBUSY, "%s changed while it was adopted", src->label);

        if (src->rewrite_header) {
                new_backing(a, i, &file, &format);
                r = qcow2_build_backing_header(src->rw_fd, file, format, &header, &size, &ferr);
                if (r < 0)
                        return op_error(err, r, "%s: cannot rewrite the backing file name: %s", src->label, ferr.reason);
                /* The caller's bytes go to an undo log first: a roll-back, even after a crash, gives the
                 * file back exactly as it was. */
                log_fd = txn_undo_create(a->txn, src->layer->id, false);
                if (log_fd < 0)
                        return op_error(err, log_fd, "cannot create an undo log in the journal");
                r = undo_begin(&undo, log_fd, src->rw_fd, &ferr);
                if (r >= 0)
                        r = undo_save(&undo, 0, size, &ferr);
                if (r >= 0)
                        r = undo_sync(&undo, &ferr);
                if (r < 0)
                        return op_error(err, r, "%s: cannot save the header in the undo log: %s", src->label, ferr.reason);
                r = format_pwrite_full(src->rw_fd, header, size, 0);
                if (r >= 0 && fdatasync(src->rw_fd) < 0)
                        r = negative_errno();
                if (r < 0)
                        return op_error(err, r, "%s: cannot write the header", src->label);
                txn_crash_point(a->txn, "after-header");
        }

        src->layer->state = LAYER_READY;
        r = store_save_layer(a->store, src->layer);
        if (r < 0)
                return op_error(err, r, "cannot write the layer record");
        return 0;
}

/* move, after the commit: the old names go. If we die before, recovery removes them (the journal entry
 * names them, with device and inode); the data is safe either way. */
static void remove_old_names(void *userdata) {
        Adoption *a = userdata;

        for (size_t i = 0; i < a->n; i++) {
                Source *src = &a->src[i];
                struct stat st;

                if (fstatat(src->dir_fd, src->name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != src->st.st_dev ||
                    st.st_ino != src->st.st_ino) {
                        log_warning("%s was renamed or replaced during the adoption; leaving it", src->label);
                        continue;
                }
                if (unlinkat(src->dir_fd, src->name, 0) < 0 || fsync_directory(src->dir_fd) < 0)
                        log_error("Cannot remove the old name of %s: %s", src->label, strerror(errno));
        }
}

static int new_layers(Adoption *a, OpError *err) {
        for (size_t i = 0; i < a->n; i++) {
                Source *src = &a->src[i];
                Layer *l;
                char file[LAYER_ID_LEN + 8];
                int r;

                l = src->layer = calloc(1, sizeof(Layer));
                if (!l)
                        return op_error(err, -ENOMEM, "out of memory");
                r = layer_id_new(l->id);
                if (r < 0)
                        return op_error(err, r, "cannot generate a layer id");
                snprintf(file, sizeof(file), "%s.%s", l->id, image_format_to_string(src->xml->format));
                l->file = strdup(file);
                l->vm = strdup(a->vm);
                if (!l->file || !l->vm)
                        return op_error(err, -ENOMEM, "out of memory");
                l->format = src->xml->format;
                l->virtual_size = src->virtual_size;
                l->state = LAYER_CREATING;
                l->generation = 1;
        }
        for (size_t i = 0; i + 1 < a->n; i++) {
                Layer *l = a->src[i].layer, *below = a->src[i + 1].layer;
                l->backing = strdup(below->id);
                l->backing_format = below->format;
                if (!l->backing)
                        return op_error(err, -ENOMEM, "out of memory");
        }
        return 0;
}

/* The VM record once the disk is added: the commit point. */
static int next_vm(Adoption *a, const Vm *v, Vm **ret, OpError *err) {
        _cleanup_(vm_freep) Vm *next = NULL;
        Disk *disks, *d;
        int r;

        r = vm_copy(v, &next);
        if (r < 0)
                return op_error(err, r, "out of memory");
        disks = reallocarray(next->disks, next->n_disks + 1, sizeof(Disk));
        if (!disks)
                return op_error(err, -ENOMEM, "out of memory");
        next->disks = disks;
        d = &next->disks[next->n_disks++];
        *d = (Disk) {};
        d->name = strdup(a->disk.target);
        d->chain = calloc(a->n, sizeof(char *));
        if (!d->name || !d->chain)
                return op_error(err, -ENOMEM, "out of memory");
        for (size_t i = 0; i < a->n; i++) {
                d->chain[i] = strdup(a->src[i].layer->id);
                if (!d->chain[i])
                        return op_error(err, -ENOMEM, "out of memory");
                d->n_chain++;
        }
        next->generation++;
        *ret = TAKE_PTR(next);
        return 0;
}

static int adopt_checks(Adoption *a, Vm *v, OpError *err) {
        uint64_t needed = 0;
        struct statvfs vfs;
        int r;

        if (vm_find_disk(v, a->disk.target))
                return op_error(err, -EEXIST, "VM '%s' already has a disk '%s'", a->vm, a->disk.target);
        if (v->n_disks >= a->lim->max_disks_per_vm)
                return op_error(err, -E2BIG, "VM '%s' has the maximum number of disks (%" PRIu32 ")", a->vm,
                                a->lim->max_disks_per_vm);
        if (a->store->n_layers + a->disk.n_layers > a->lim->max_images)
                return op_error(err, -E2BIG, "the store cannot hold %zu more layers (limit %" PRIu32 ")", a->disk.n_layers,
                                a->lim->max_images);
        if (fstat(a->store->images_fd, &a->images_st) < 0)
                return op_error(err, negative_errno(), "cannot stat the store");

        a->src = calloc(a->disk.n_layers, sizeof(Source));
        if (!a->src)
                return op_error(err, -ENOMEM, "out of memory");
        for (size_t i = 0; i < a->disk.n_layers; i++) {
                a->src[i] = (Source) { .xml = &a->disk.layers[i], .dir_fd = -EBADF, .fd = -EBADF, .rw_fd = -EBADF };
                a->n++;
                r = source_open(a, i, err);
                if (r < 0)
                        return r;
                if (a->move) {
                        r = source_check_move(a, &a->src[i], err);
                        if (r < 0)
                                return r;
                }
        }
        /* Once every file is open: the backing checks compare each header with the next file. */
        for (size_t i = 0; i < a->n; i++) {
                r = source_validate(a, i, err);
                if (r < 0)
                        return r;
                needed += (uint64_t) a->src[i].st.st_blocks * 512;
        }
        if (!a->move && needed > ADOPT_MAX_COPY_BYTES)
                return op_error(err, -E2BIG, "the chain holds %" PRIu64 " bytes of data; an adoption copies at most %" PRIu64
                                " (use \"move\" to adopt it without copying)", needed, ADOPT_MAX_COPY_BYTES);
        if (!a->move && fstatvfs(a->store->images_fd, &vfs) >= 0 && needed > (uint64_t) vfs.f_bavail * vfs.f_frsize)
                return op_error(err, -ENOSPC, "the store has %" PRIu64 " bytes free, the chain needs %" PRIu64,
                                (uint64_t) vfs.f_bavail * vfs.f_frsize, needed);
        return 0;
}

int op_adopt_domain_xml(Store *s, const Limits *lim, const char *vm, const char *xml, bool move,
                        char ret_disk[static NAME_MAX_LEN + 1], OpError *err) {
        _cleanup_(adoption_done) Adoption a = { .store = s, .lim = lim, .vm = vm, .move = move };
        _cleanup_(vm_freep) Vm *next = NULL;
        _cleanup_(txn_abortp) Txn *t = NULL;
        Vm *v;
        int r;

        v = store_find_vm(s, vm);
        if (!v)
                return op_error(err, -ENOENT, "no VM '%s'", vm);
        r = domain_xml_parse(xml, strlen(xml), lim->max_chain_depth, &a.disk, err);
        if (r < 0)
                return r;
        r = adopt_checks(&a, v, err);
        if (r < 0)
                return r;
        r = new_layers(&a, err);
        if (r < 0)
                return r;
        r = next_vm(&a, v, &next, err);
        if (r < 0)
                return r;

        /* Nothing has changed so far. From here on the journal accounts for every new layer. */
        r = txn_new(s, "adopt", INTENT_COMMIT_VM, vm, next->generation, &t);
        for (size_t i = 0; r >= 0 && i < a.n; i++)
                r = txn_add_new(t, a.src[i].layer->id);
        /* move: the old names go after the commit point (through the directories we checked), by
         * recovery too if we die in between. */
        for (size_t i = 0; move && r >= 0 && i < a.n; i++)
                r = txn_add_unlink(t, a.src[i].xml->path, (uint64_t) a.src[i].st.st_dev,
                                   (uint64_t) a.src[i].st.st_ino, a.src[i].st.st_mode & 07777);
        if (r >= 0) {
                txn_set_unlink_func(t, remove_old_names, &a);
                r = txn_start(t);
        }
        if (r < 0)
                return op_error(err, r, "cannot write the journal");
        a.txn = t;

        /* Bottom up, so that every layer's backing file exists before the layer. */
        for (size_t i = a.n; r >= 0 && i-- > 0;)
                r = move ? materialize_link(&a, i, err) : materialize_copy(&a, i, err);
        if (move && r >= 0)
                r = fsync_directory(s->images_fd);
        for (size_t i = a.n; move && r >= 0 && i-- > 0;)
                r = materialize_moved_header(&a, i, err);
        if (r >= 0) {
                /* Also removes the old names and the undo logs of the headers. */
                r = txn_commit(t, txn_write_vm, next);
                if (r < 0)
                        op_record_error(err, r, "VM");
                else
                        next = NULL; /* the store owns it */
        }
        if (r < 0)
                /* txn_abortp() gives moved files their header and mode back, removes the new records and the
                 * store's names. */
                return r;

        memcpy(ret_disk, a.disk.target, strlen(a.disk.target) + 1);
        log_op(LOG_INFO, "adopt", vm, a.disk.target, a.src[0].layer->id, "Adopted a chain of %zu layer(s) as disk '%s' of VM '%s'%s",
               a.n, a.disk.target, vm, move ? " (moved)" : "");
        return 0;
}
