/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* GetDomainXML and AdoptDomainXML: libvirt <disk> XML of a chain, and adoption of a described chain. */

#include "domain-xml.h"
#include "log.h"
#include "manager.h"

#define CHECK(expr)                          \
        do {                                 \
                int _r = (expr);             \
                if (_r < 0)                  \
                        return _r;           \
        } while (0)

static int reply_op_error(sd_bus_error *error, int r, const OpError *err) {
        return bus_error_from_op(error, r, err->code ? err->reason : NULL);
}

int method_get_domain_xml(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        _cleanup_free_ char *xml = NULL;
        Manager *m = userdata;
        const char *vm, *disk;
        OpError err = {};
        Caller c;
        int r;

        CHECK(sd_bus_message_read(msg, "ss", &vm, &disk));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));
        CHECK(auth_caller(m, msg, &c, error));
        CHECK(auth_require_vm(m, &c, vm, error));

        r = domain_xml_build(m->store, vm, disk, &xml, &err);
        if (r < 0)
                return reply_op_error(error, r, &err);
        return sd_bus_reply_method_return(msg, "s", xml);
}

int method_adopt_domain_xml(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        Manager *m = userdata;
        const char *vm, *xml;
        char disk[NAME_MAX_LEN + 1];
        bool move = false;
        OpError err = {};
        Caller c;
        int r;

        CHECK(sd_bus_message_read(msg, "ss", &vm, &xml));
        CHECK(bus_read_options(msg, (const OptionSpec[]) { { "move", 'b', &move }, {} }, error));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(auth_caller(m, msg, &c, error));
        /* The XML names host paths that the daemon opens: root's decision only (security.md, rule 7). */
        CHECK(auth_require_root(&c, error));

        r = op_adopt_domain_xml(m->store, &m->config.limits, vm, xml, move, disk, &err);
        if (r < 0) {
                log_op(LOG_NOTICE, "adopt", vm, NULL, NULL, "Adoption into VM '%s' refused: %s", vm,
                       err.code ? err.reason : "unknown error");
                return reply_op_error(error, r, &err);
        }
        return sd_bus_reply_method_return(msg, "s", disk);
}
