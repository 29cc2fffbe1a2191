/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* "vdiskctl libvirt" in a vdiskctl built without libvirt (meson -Dlibvirt=disabled, or no libvirt-dev
 * 9.0.0 or newer found): the command exists, so that the help, the manual and the completion are the
 * same in every build, and says why it cannot run. */

#include <stdlib.h>

#include "bus-util.h"
#include "i18n.h"
#include "vdiskctl.h"

int verb_libvirt(int argc, char *argv[]) {
        log_error(_("This vdiskctl was built without libvirt: build it with libvirt 9.0.0 or newer (libvirt-dev) and meson -Dlibvirt=enabled."));
        return EXIT_ERROR;
}
