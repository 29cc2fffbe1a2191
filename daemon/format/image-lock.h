/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * QEMU's image-lock protocol, the one implementation in vdisk. QEMU marks what a user of an image
 * file holds and what it refuses to share with open-file-description (OFD) locks of one byte each:
 * byte 100 + p for a permission p it holds, byte 200 + p for a permission p it refuses to others.
 * Permissions: 0 CONSISTENT_READ, 1 WRITE, 2 WRITE_UNCHANGED, 3 RESIZE, 4 GRAPH_MOD.
 *
 * The locks live on the open file description: they go when the last fd of it is closed, so a caller
 * that takes them keeps the fd open for as long as it needs them.
 */

/* An offline change of the file (Snapshot, Rebase, Commit, DeleteDisk, adoption by move): holds
 * CONSISTENT_READ, WRITE and RESIZE and refuses WRITE and RESIZE to others. -EBUSY if anyone holds or
 * refuses what this needs (a running QEMU on the file, even read-only as a backing file). */
int image_lock_for_change(int fd);

/* A consistent read (adoption by copy): holds CONSISTENT_READ and refuses WRITE and RESIZE to others.
 * -EBUSY while someone holds WRITE or RESIZE (a running VM's active layer); readers may stay. */
int image_lock_for_read(int fd);

/* Whether any other description holds any QEMU lock byte (100-104, 200-204) of the file: 1 yes, 0 no.
 * Takes no lock (OpenDisk hands the description out; the hypervisor takes its own locks). */
int image_lock_test_any(int fd);

/* Whether any other description holds WRITE or RESIZE (bytes 101, 103): a running QEMU writing the file.
 * 1 yes, 0 no. Takes no lock. */
int image_lock_test_writer(int fd);
