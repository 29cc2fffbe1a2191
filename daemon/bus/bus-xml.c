/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* GetDomainXML and AdoptDomainXML: libvirt <disk> XML of a chain, and adoption of a described chain. */

#include "cluster-lease.h"
#include "domain-xml.h"
#include "log.h"
#include "bus.h"

static int reply_op_error(sd_bus_error *error, int r, const OpError *err) {
        return bus_error_from_op(error, r, err->code ? err->reason : NULL);
}

int method_get_domain_xml(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        _cleanup_free_ char *xml = NULL;
        const char *vm, *disk;
        OpError err = {};
        int r;

        CHECK(sd_bus_message_read(msg, "ss", &vm, &disk));
        CHECK(bus_check_name("VM", vm, error));
        CHECK(bus_check_name("disk", disk, error));

        r = cluster_leases_vm(&held, m->store, vm, false, &err);
        if (r >= 0)
                r = domain_xml_build(m->store, vm, disk, &xml, &err);
        if (r < 0)
                return reply_op_error(error, r, &err);
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_reply_method_return(msg, "s", xml);
}

int method_adopt_domain_xml(sd_bus_message *msg, Manager *m, const Caller *c, sd_bus_error *error) {
        _cleanup_(cluster_leases_release) ClusterLeases held = CLUSTER_LEASES_FOR(m->cluster, c);
        const char *vm, *xml;
        char disk[NAME_MAX_LEN + 1];
        bool move = false;
        OpError err = {};
        int r;

        CHECK(sd_bus_message_read(msg, "ss", &vm, &xml));
        CHECK(bus_read_options(msg, (const OptionSpec[]) { { "move", 'b', &move }, {} }, error));
        CHECK(bus_check_name("VM", vm, error));

        /* The new disk's name comes from the XML: the VM's record lease keeps any other host from
         * making a disk of that name meanwhile. */
        r = cluster_leases_vm(&held, m->store, vm, true, &err);
        if (r >= 0)
                r = op_adopt_domain_xml(m->store, &m->config.limits, vm, xml, move, disk, &err);
        if (r < 0) {
                log_op(LOG_NOTICE, "adopt", vm, NULL, NULL, "Adoption into VM '%s' refused: %s", vm,
                       err.code ? err.reason : "unknown error");
                return reply_op_error(error, r, &err);
        }
        cluster_leases_release(&held); /* before the reply: the caller may go on at once, on any host */
        return sd_bus_reply_method_return(msg, "s", disk);
}
