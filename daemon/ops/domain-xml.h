/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * libvirt <disk> XML: the explicit chain of a disk (GetDomainXML), and adoption of an existing chain
 * that such XML describes (AdoptDomainXML). The XML is built and parsed with libxml2 only; parsing
 * refuses document type declarations (so no entity is ever declared, let alone expanded or loaded),
 * never touches the network and is bounded in input size and chain depth.
 */

#include "ops.h"

/* The largest XML AdoptDomainXML reads: a 1024-layer chain as GetDomainXML writes it is ~400 KiB. */
#define DOMAIN_XML_MAX_SIZE (UINT64_C(1) << 20)

typedef struct DomainXmlLayer {
        char *path; /* absolute host path, as written in <source file=…> */
        ImageFormat format;
} DomainXmlLayer;

typedef struct DomainXmlDisk {
        char *target;           /* <target dev=…>: the disk name */
        DomainXmlLayer *layers; /* top first */
        size_t n_layers;
} DomainXmlDisk;

void domain_xml_disk_done(DomainXmlDisk *d);

/* "the top layer" or "backing layer N", with its path when it can be shown, for error messages. */
#define DOMAIN_XML_LABEL_MAX (256U + 64U)
const char *domain_xml_layer_label(size_t i, const char *path, char buf[static DOMAIN_XML_LABEL_MAX]);

/*
 * Parses a <disk> element that describes its chain explicitly: every layer states its format (<driver
 * type> for the top, <format type> in each <backingStore>) and the chain ends in <backingStore/>.
 * Pure: opens no file. -E2BIG above DOMAIN_XML_MAX_SIZE, -ELOOP for more than `max_depth` layers,
 * -EOPNOTSUPP for what vdisk cannot adopt (other disk or source types, data stores, encryption),
 * -EINVAL for anything else, naming what is missing or wrong.
 */
int domain_xml_parse(const char *xml, size_t size, uint32_t max_depth, DomainXmlDisk *ret, OpError *err);

/* The <disk> element (no XML declaration) of disk `disk` of VM `vm`, with absolute paths into the store. */
int domain_xml_build(Store *s, const char *vm, const char *disk, char **ret_xml, OpError *err);

/*
 * Takes the chain described by `xml` into the store as a new disk of `vm` (its name: <target dev>).
 * Every file is checked against its declared format as an upload is, except that a qcow2 layer may
 * name a backing file: the name must resolve to the next layer's file, or to nothing that exists.
 * The files are copied (or, with `move`, hard-linked into the store and unlinked from their old
 * place after the commit) as new private layers whose headers name their new siblings with backing
 * formats. On any refusal nothing has changed, in the store or in the caller's files.
 */
int op_adopt_domain_xml(Store *s, const Limits *lim, const char *vm, const char *xml, bool move,
                        char ret_disk[static NAME_MAX_LEN + 1], OpError *err);
