/* SPDX-License-Identifier: LGPL-2.1-or-later */

/* Reshape: copying the ranges of the work list into the target. */

#include "reshape-internal.h"

/* ---- copying ---- */

/* How the copies are made, chosen by measurement (tests/bench/RESULTS-b345.md, "Copy engines"):
 *
 * - On a file system that shares extents (reflinks), copy_file_range over whole runs: the kernel
 *   shares the source's blocks instead of copying them, nothing is dirtied and nothing needs writing
 *   back.
 * - On any other (ext4 here), copy_file_range too: the kernel's page-cache copy was as fast as
 *   pread/pwrite, fallocate ahead, mmap and io_uring with a warm source once the data had to reach the
 *   disk, and faster than pread/pwrite and io_uring with a cold one (mmap + pwrite was faster still,
 *   but a source truncated under the mapping would kill the daemon with SIGBUS). What did matter: every byte copied must be on disk before the
 *   commit point, and with nothing else to start it, writeback began only at the end of the step, so
 *   the final flush wrote everything while the copy had sat idle. The copy therefore goes in chunks
 *   of COPY_KICK_BYTES and starts the target's writeback (sync_file_range, which waits for nothing)
 *   whenever that much has been copied into it: the disk writes while the copy goes on.
 *
 * pread/pwrite remains for where copy_file_range is refused (EXDEV, EOPNOTSUPP, ...). */
bool reshape_fs_shares_extents(int64_t f_type) {
        switch ((uint32_t) f_type) {
        case 0x9123683EU: /* btrfs */
        case 0x58465342U: /* XFS (reflink is the default of mkfs.xfs since xfsprogs 5.1) */
        case 0xCA451A4EU: /* bcachefs */
        case 0x7461636FU: /* OCFS2 */
        case 0x2FC12FC1U: /* ZFS (block cloning) */
        case 0x6969U:     /* NFS (server-side clone or copy) */
        case 0xFE534D42U: /* SMB2 (server-side copy) */
        case 0xFF534D42U: /* CIFS */
                return true;
        default:
                return false;
        }
}

/* Copies into dst count towards starting its writeback once COPY_KICK_BYTES have accumulated. */
static void copy_kick(ReshapeOp *op, int dst, uint64_t n) {
        if (op->cp_kick_fd != dst) {
                struct statfs sf;
                op->cp_kick_fd = dst;
                op->cp_unkicked = 0;
                op->cp_shares = fstatfs(dst, &sf) >= 0 && reshape_fs_shares_extents((int64_t) sf.f_type);
        }
        if (op->cp_shares)
                return;
        op->cp_unkicked += n;
        if (op->cp_unkicked < COPY_KICK_BYTES)
                return;
        (void) sync_file_range(dst, 0, 0, SYNC_FILE_RANGE_WRITE);
        op->cp_unkicked = 0;
}

int reshape_copy_flush(ReshapeOp *op, OpError *err) {
        int src = op->cp_src;
        uint64_t so = op->cp_src_off, dof = op->cp_dst_off, len = op->cp_len;
        _cleanup_free_ uint8_t *buf = NULL;

        op->cp_len = 0;
        copy_kick(op, op->cp_dst, 0);
        while (len > 0) {
                loff_t in = (loff_t) so, out = (loff_t) dof;
                uint64_t chunk = op->cp_shares ? UINT64_C(1) << 30 : COPY_KICK_BYTES - op->cp_unkicked;
                ssize_t n = copy_file_range(src, &in, op->cp_dst, &out, MIN(len, chunk), 0);
                if (n < 0 && (errno == EXDEV || errno == EOPNOTSUPP || errno == EINVAL || errno == ENOSYS))
                        break;
                if (n < 0)
                        return op_error(err, negative_errno(), "cannot copy data");
                if (n == 0)
                        return 0; /* past the source's end: reads as zeros, and so does the target */
                so += (uint64_t) n;
                dof += (uint64_t) n;
                len -= (uint64_t) n;
                copy_kick(op, op->cp_dst, (uint64_t) n);
        }
        if (len > 0 && !(buf = malloc(COPY_BUFFER)))
                return op_error(err, -ENOMEM, "out of memory");
        while (len > 0) {
                ssize_t n = pread(src, buf, MIN(len, COPY_BUFFER), (off_t) so);
                if (n < 0)
                        return op_error(err, negative_errno(), "cannot read data");
                if (n == 0)
                        return 0;
                if (format_pwrite_full(op->cp_dst, buf, (size_t) n, dof) < 0)
                        return op_error(err, negative_errno(), "cannot write data");
                so += (uint64_t) n;
                dof += (uint64_t) n;
                len -= (uint64_t) n;
                copy_kick(op, op->cp_dst, (uint64_t) n);
        }
        return 0;
}

static int copy_add(ReshapeOp *op, int src, uint64_t src_off, int dst, uint64_t dst_off, uint64_t len, OpError *err) {
        if (op->cp_len > 0 && op->cp_src == src && op->cp_dst == dst && op->cp_src_off + op->cp_len == src_off &&
            op->cp_dst_off + op->cp_len == dst_off) {
                op->cp_len += len;
                return 0;
        }
        if (op->cp_len > 0) {
                int r = reshape_copy_flush(op, err);
                if (r < 0)
                        return r;
        }
        op->cp_src = src;
        op->cp_dst = dst;
        op->cp_src_off = src_off;
        op->cp_dst_off = dst_off;
        op->cp_len = len;
        return 0;
}

static int zero_range(int fd, uint64_t offset, uint64_t length, OpError *err) {
        _cleanup_free_ uint8_t *z = NULL;

        if (length == 0 || fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) offset, (off_t) length) >= 0)
                return 0;
        z = calloc(1, COPY_BUFFER);
        if (!z)
                return op_error(err, -ENOMEM, "out of memory");
        for (uint64_t x = 0; x < length; x += COPY_BUFFER)
                if (format_pwrite_full(fd, z, MIN(COPY_BUFFER, length - x), offset + x) < 0)
                        return op_error(err, negative_errno(), "cannot write zeros");
        return 0;
}

/* Before a data file is written in place: its old bytes into its undo log, flushed. */
static int data_file_prepare(ReshapeOp *op, uint64_t a, uint64_t b, OpError *err) {
        int r = undo_save(&op->target.data_undo, a, b - a, err);
        if (r >= 0)
                r = undo_sync(&op->target.data_undo, err);
        if (r >= 0 && op->cp_len > 0)
                r = reshape_copy_flush(op, err);
        if (r >= 0)
                r = zero_range(op->target.data_fd, a, b - a, err);
        return r;
}

/* The content of view[] over [a, b) into new clusters of the qcow2 target (zero clusters as flags);
 * with an external data file, into the data file at the guest offsets. */
int reshape_materialize_qcow2(ReshapeOp *op, const size_t *view, size_t n, uint64_t a, uint64_t b, OpError *err) {
        _cleanup_free_ Piece *pp = NULL;
        Pieces ps = {};
        uint64_t cs = op->target.cluster_size, size = op->layers[op->target_index].size;
        bool v3 = qcow2_edit_header(op->target.edit)->version >= 3;
        size_t k = 0;
        int r;

        size = MAX(size, qcow2_edit_header(op->target.edit)->size);
        r = reshape_view_resolve(op, view, n, 0, SIZE_MAX, a, b, &ps, err);
        pp = ps.p;
        if (r < 0)
                return r;
        if (op->target.data_fd >= 0) {
                /* Data at guest offsets in the data file: what the view takes from the target itself is
                 * in place already; everything else is copied or zeroed there; every cluster maps to it. */
                uint64_t end = MIN(b, size);
                r = undo_save(&op->target.data_undo, a, end - a, err);
                if (r >= 0)
                        r = undo_sync(&op->target.data_undo, err);
                for (size_t j = 0; r >= 0 && j < ps.n; j++) {
                        const Piece *p = &ps.p[j];
                        uint64_t e = MIN(p->start + p->length, end);
                        if (p->start >= e || (p->kind == PIECE_DATA && p->layer == op->target_index && p->host == p->start))
                                continue;
                        if (p->kind == PIECE_DATA)
                                r = copy_add(op, reshape_piece_fd(op, p), p->host, op->target.data_fd, p->start, e - p->start, err);
                        else if (op->cp_len > 0 && (r = reshape_copy_flush(op, err)) < 0)
                                break;
                        else
                                r = zero_range(op->target.data_fd, p->start, e - p->start, err);
                }
                for (uint64_t c = a / cs; r >= 0 && c * cs < end; c++)
                        r = qcow2_edit_map(op->target.edit, c, c * cs, err);
                return r;
        }

        for (uint64_t c = a / cs; c * cs < b; c++) {
                uint64_t cstart = c * cs, cend = MIN(cstart + cs, MIN(b, size)), host = 0;
                bool zero = true;
                size_t first;

                while (k < ps.n && ps.p[k].start + ps.p[k].length <= cstart)
                        k++;
                first = k;
                for (size_t j = first; j < ps.n && ps.p[j].start < cend; j++)
                        if (ps.p[j].kind == PIECE_DATA)
                                zero = false;

                if (!zero || !v3) {
                        r = qcow2_edit_alloc(op->target.edit, 1, &host, err);
                        if (r < 0)
                                return r;
                } else
                        host = QCOW2_EDIT_ZERO;
                for (size_t j = first; !zero && j < ps.n && ps.p[j].start < cend; j++) {
                        const Piece *p = &ps.p[j];
                        uint64_t s = MAX(p->start, cstart), e = MIN(p->start + p->length, cend);
                        if (p->kind != PIECE_DATA || s >= e)
                                continue;
                        r = copy_add(op, reshape_piece_fd(op, p), p->host + (s - p->start), op->target.fd, host + (s - cstart), e - s,
                                     err);
                        if (r < 0)
                                return r;
                }
                r = qcow2_edit_map(op->target.edit, c, host, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The content of view[] over [a, b) into `buf`. */
static int read_view(ReshapeOp *op, const size_t *view, size_t n, uint64_t a, uint64_t b, uint8_t *buf, OpError *err) {
        _cleanup_free_ Piece *pp = NULL;
        Pieces ps = {};
        int r;

        memset(buf, 0, b - a);
        r = reshape_view_resolve(op, view, n, 0, SIZE_MAX, a, b, &ps, err);
        pp = ps.p;
        if (r < 0)
                return r;
        for (size_t j = 0; j < ps.n; j++) {
                const Piece *p = &ps.p[j];
                ssize_t got;
                if (p->kind != PIECE_DATA)
                        continue;
                got = pread(reshape_piece_fd(op, p), buf + (p->start - a), p->length, (off_t) p->host);
                if (got < 0)
                        return op_error(err, negative_errno(), "cannot read layer %s", op->layers[p->layer].layer->id);
        }
        return 0;
}

/* Rebase onto an image outside the chain: like qemu-img, clusters whose old and new content are
 * equal byte for byte are left alone (an updated base image shares most of its content). */
int reshape_materialize_compare(ReshapeOp *op, uint64_t a, uint64_t b, OpError *err) {
        uint64_t cs = op->target.cluster_size, size = op->layers[0].size;
        _cleanup_free_ uint8_t *old = malloc(cs), *new = malloc(cs);
        int r;

        if (!old || !new)
                return op_error(err, -ENOMEM, "out of memory");
        for (uint64_t c = a / cs; c * cs < b; c++) {
                uint64_t s = c * cs, e = MIN(s + cs, size), host;
                bool zero = true;

                r = read_view(op, op->old_view, op->n_old_view, s, e, old, err);
                if (r >= 0)
                        r = read_view(op, op->new_view, op->n_new_view, s, e, new, err);
                if (r < 0)
                        return r;
                if (memcmp(old, new, e - s) == 0)
                        continue;
                for (uint64_t k = 0; k < e - s && zero; k++)
                        zero = old[k] == 0;
                if (zero && op->target.data_fd < 0 && qcow2_edit_header(op->target.edit)->version >= 3) {
                        r = qcow2_edit_map(op->target.edit, c, QCOW2_EDIT_ZERO, err);
                        if (r < 0)
                                return r;
                        continue;
                }
                if (op->target.data_fd >= 0) {
                        host = s;
                        r = data_file_prepare(op, s, e, err);
                        if (r < 0)
                                return r;
                        if (format_pwrite_full(op->target.data_fd, old, e - s, s) < 0)
                                return op_error(err, negative_errno(), "cannot write the data file of layer %s",
                                                op->target.layer->id);
                } else {
                        r = qcow2_edit_alloc(op->target.edit, 1, &host, err);
                        if (r < 0)
                                return r;
                        if (format_pwrite_full(op->target.fd, old, e - s, host) < 0)
                                return op_error(err, negative_errno(), "cannot write layer %s", op->target.layer->id);
                }
                r = qcow2_edit_map(op->target.edit, c, host, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Commit into a raw layer: L's data over the old bytes, which go to the undo log first. */
int reshape_materialize_raw(ReshapeOp *op, uint64_t a, uint64_t b, OpError *err) {
        _cleanup_free_ Piece *pp = NULL;
        Pieces ps = {};
        size_t top = op->old_view[0];
        int r;

        /* Only L itself: whatever L leaves unallocated is the target's own content already. */
        r = reshape_view_resolve(op, op->old_view, 1, 0, SIZE_MAX, a, b, &ps, err);
        pp = ps.p;
        if (r < 0)
                return r;
        r = undo_save(&op->target.undo, a, b - a, err);
        if (r >= 0)
                r = undo_sync(&op->target.undo, err);
        if (r < 0)
                return r;
        for (size_t j = 0; j < ps.n; j++) {
                const Piece *p = &ps.p[j];

                if (p->kind == PIECE_DATA) {
                        r = copy_add(op, reshape_piece_fd(op, p), p->host, op->target.fd, p->start, p->length, err);
                        if (r < 0)
                                return r;
                } else if (p->kind == PIECE_ZERO) {
                        /* Allocated zeros in L, or past L's end: the committed view reads zeros. */
                        if (op->cp_len > 0 && (r = reshape_copy_flush(op, err)) < 0)
                                return r;
                        r = zero_range(op->target.fd, p->start, p->length, err);
                        if (r < 0)
                                return r;
                }
        }
        (void) top;
        return 0;
}

