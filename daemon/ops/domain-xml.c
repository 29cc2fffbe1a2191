/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * GetDomainXML over the store: the libvirt <disk> element of a chain; and the parser of such an element
 * that AdoptDomainXML (adopt.c) takes.
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
#define LABEL_MAX DOMAIN_XML_LABEL_MAX


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
const char *domain_xml_layer_label(size_t i, const char *path, char buf[static DOMAIN_XML_LABEL_MAX]) {
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
                domain_xml_layer_label(i, NULL, label);
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
        /* The paths leave the daemon and a QEMU started from them writes the top layer: a new one made
         * durable first (docs/design.md, "Commit protocol"). */
        if (d->n_chain > 0 && wal_layer_pending(s, d->chain[0])) {
                r = wal_checkpoint(s);
                if (r < 0)
                        return op_error(err, r, "cannot make the disk's new layers durable");
        }
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
