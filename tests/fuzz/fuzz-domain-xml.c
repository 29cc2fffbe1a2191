/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Fuzz target: AdoptDomainXML's reader — domain_xml_parse() turns a libvirt <disk> element into a
 * chain description (paths and formats) without opening any file. An accepted chain must be
 * non-empty, within the depth limit, and name a target and a path for every layer.
 */

#include <stdlib.h>
#include <string.h>

#include "domain-xml.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Deep enough to reach the limit quickly; real chains are checked against max_chain_depth. */
#define FUZZ_MAX_DEPTH 16U

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        DomainXmlDisk d = {};
        OpError err = {};
        int r;

        r = domain_xml_parse((const char *) data, size, FUZZ_MAX_DEPTH, &d, &err);
        if (r < 0) {
                if (d.n_layers != 0 || d.layers || d.target || err.code != r || !memchr(err.reason, 0, sizeof(err.reason)))
                        abort();
                return 0;
        }
        if (!d.target || d.n_layers == 0 || d.n_layers > FUZZ_MAX_DEPTH)
                abort();
        for (size_t i = 0; i < d.n_layers; i++)
                if (!d.layers[i].path || !image_format_to_string(d.layers[i].format))
                        abort();
        domain_xml_disk_done(&d);
        return 0;
}
