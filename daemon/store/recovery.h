/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Recovery at start: each journal entry is rolled forward (its commit point was reached: the clean-up is
 * finished) or back (not reached: what it created goes, what it changed in place is restored from its undo
 * logs); then undo logs of no entry, layers no operation finished, private layers no disk uses, and files
 * no record names are removed. A journal entry that cannot be read stops the start (nothing is changed).
 */

typedef struct Store Store;

/* Replays the journal and removes orphans; called by store_open() once the records are loaded. */
int store_recover(Store *s);
