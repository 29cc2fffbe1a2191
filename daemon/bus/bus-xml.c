/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* GetDomainXML and AdoptDomainXML: libvirt <disk> XML of a chain, and adoption of a described chain. */

#include "manager.h"

int method_get_domain_xml(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return sd_bus_error_set(error, "org.vdisk1.Error.NotSupported", "GetDomainXML is not implemented yet");
}

int method_adopt_domain_xml(sd_bus_message *msg, void *userdata, sd_bus_error *error) {
        return sd_bus_error_set(error, "org.vdisk1.Error.NotSupported", "AdoptDomainXML is not implemented yet");
}
