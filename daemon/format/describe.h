/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

#include <json-c/json.h>

#include "qcow2.h"

typedef struct DescribeOptions {
        bool check;       /* run the full metadata walk (qcow2) */
        Qcow2Limits limits;
} DescribeOptions;

/*
 * A JSON description of the image in `fd`, read as the *declared* format: qemu-img info's key names
 * for the fields they share (format, virtual-size, actual-size, cluster-size, backing-filename,
 * backing-filename-format, dirty-flag, format-specific), plus vdisk's verdict "valid" and
 * "problems". Nothing the image references is opened. Fails only on I/O errors.
 */
int image_describe(int fd, ImageFormat declared, const DescribeOptions *opts, struct json_object **ret);

/* Extents as a JSON array of {start, length, state[, offset]}. */
struct json_object *extent_map_to_json(const ExtentMap *m);
