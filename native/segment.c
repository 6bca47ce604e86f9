/* segment.c: one segment file: create, open (recovery scan or follow),
 * index, read, scan, seal, verify.
 *
 * Reader rules, after LevelDB's log reader: a header or payload cut off by
 * the end of the bytes we have is a clean end of what the writer finished,
 * not corruption; after a checksum mismatch the length field is not trusted;
 * zero-filled (preallocated) space ends the scan. Every byte read from a file
 * is bounds-checked against what the file holds, so a hostile file can only
 * make an operation fail. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "aof_internal.h"

/* ------------------------------------------------------------------ errors */

static __thread aof_error last_err;

int aof_fail(int code, int sys_errno, uint64_t pos, const char *fmt, ...) {
    va_list ap;
    last_err.code = code;
    last_err.sys_errno = sys_errno;
    last_err.pos = pos;
    va_start(ap, fmt);
    vsnprintf(last_err.msg, sizeof last_err.msg, fmt, ap);
    va_end(ap);
    return code;
}

void aof_last_error(aof_error *out) { *out = last_err; }

const char *aof_strerror(int code) {
    switch (code) {
    case AOF_OK: return "ok";
    case AOF_EIO: return "I/O error";
    case AOF_ECORRUPT: return "corrupt segment data";
    case AOF_EFORMAT: return "not an aoflite segment";
    case AOF_EVERSION: return "segment format version is newer than this aoflite";
    case AOF_EFULL: return "segment full";
    case AOF_ENOTFOUND: return "not found";
    case AOF_EINVAL: return "invalid argument";
    case AOF_ENOMEM: return "out of memory";
    case AOF_ESEALED: return "segment is sealed";
    case AOF_ETOOBIG: return "record or batch too large";
    case AOF_ENOSEG: return "no active segment";
    case AOF_ENOKEY: return "key not registered";
    case AOF_ECLOSED: return "closed";
    case AOF_ETXN: return "transaction misuse";
    case AOF_ETIMEDOUT: return "timed out";
    case AOF_EREADONLY: return "read-only";
    case AOF_EBROKEN: return "writer stopped after a failed sync (reopen the store)";
    default: return "unknown error";
    }
}

int64_t aof_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int sys_fail(const aof_seg *s, const char *what, uint64_t pos);

/* ------------------------------------------------------------- the index */

static uint32_t slot_of(uint32_t key_id, uint32_t nslots) {
    return (key_id * 2654435761u) & (nslots - 1);
}

aof_keyidx *aof_idx_find(aof_seg *s, uint32_t key_id) {
    if (!s->nslots) return NULL;
    for (uint32_t i = slot_of(key_id, s->nslots);; i = (i + 1) & (s->nslots - 1)) {
        uint32_t v = s->slots[i];
        if (!v) return NULL;
        if (s->keys[v - 1].key_id == key_id) return &s->keys[v - 1];
    }
}

static int rehash(aof_seg *s, uint32_t nslots) {
    uint32_t *slots = calloc(nslots, sizeof *slots);
    if (!slots) return aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory growing key index");
    for (uint32_t k = 0; k < s->nkeys; k++) {
        uint32_t i = slot_of(s->keys[k].key_id, nslots);
        while (slots[i]) i = (i + 1) & (nslots - 1);
        slots[i] = k + 1;
    }
    free(s->slots);
    s->slots = slots;
    s->nslots = nslots;
    return AOF_OK;
}

aof_keyidx *aof_idx_define(aof_seg *s, uint32_t key_id, uint64_t first_offset, uint64_t def_pos) {
    aof_keyidx *k = aof_idx_find(s, key_id);
    if (!k) {
        if (s->nkeys == s->keys_cap) {
            uint32_t cap = s->keys_cap ? s->keys_cap * 2 : 16;
            aof_keyidx *keys = realloc(s->keys, cap * sizeof *keys);
            if (!keys) {
                aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory growing key index");
                return NULL;
            }
            s->keys = keys;
            s->keys_cap = cap;
        }
        /* keep the table at most half full */
        if ((s->nkeys + 1) * 2 > s->nslots && rehash(s, s->nslots ? s->nslots * 2 : 32))
            return NULL;
        k = &s->keys[s->nkeys++];
        memset(k, 0, sizeof *k);
        k->key_id = key_id;
        uint32_t i = slot_of(key_id, s->nslots);
        while (s->slots[i]) i = (i + 1) & (s->nslots - 1);
        s->slots[i] = s->nkeys;
    }
    k->first_offset = first_offset;
    k->count = 0;
    k->def_pos = def_pos;
    return k;
}

int aof_idx_push(aof_seg *s, aof_keyidx *k, uint64_t pos) {
    (void)s;
    if (k->count == k->cap) {
        uint64_t cap = k->cap ? k->cap * 2 : 64;
        uint64_t *p = realloc(k->pos, cap * sizeof *p);
        if (!p) return aof_fail(AOF_ENOMEM, ENOMEM, pos, "out of memory growing key index");
        k->pos = p;
        k->cap = cap;
    }
    k->pos[k->count++] = pos;
    return AOF_OK;
}

int aof_undo_push(aof_seg *s, uint32_t entry) {
    if (s->nundo == s->undo_cap) {
        uint64_t cap = s->undo_cap ? s->undo_cap * 2 : 256;
        uint32_t *u = realloc(s->undo, cap * sizeof *u);
        if (!u) return aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory growing undo log");
        s->undo = u;
        s->undo_cap = cap;
    }
    s->undo[s->nundo++] = entry;
    return AOF_OK;
}

uint64_t aof_idx_undo(aof_seg *s, void (*each)(void *, uint32_t), void *arg) {
    uint64_t data = 0;
    while (s->nundo) {
        uint32_t e = s->undo[--s->nundo];
        aof_keyidx *k = aof_idx_find(s, e & ~AOF_UNDO_KEYDEF);
        if (!k) continue;
        if (e & AOF_UNDO_KEYDEF) {
            k->def_pos = 0;
            k->count = 0;
        } else {
            if (k->count) k->count--;
            data++;
            if (each) each(arg, k->key_id);
        }
    }
    s->pending = 0;
    return data;
}

/* ---------------------------------------------------------------- records */

void aof_encode_header(unsigned char *h, uint32_t key_id, uint16_t flags, uint64_t offset,
                       uint64_t lsn, int64_t ts, const void *payload, uint32_t len) {
    st32(h + AOF_R_LENGTH, len);
    st32(h + AOF_R_KEY_ID, key_id);
    st16(h + AOF_R_FLAGS, flags);
    st16(h + AOF_R_RESERVED, 0);
    st64(h + AOF_R_OFFSET, offset);
    st64(h + AOF_R_LSN, lsn);
    st64(h + AOF_R_TIMESTAMP, (uint64_t)ts);
    uint32_t crc = aof_crc32c(0, h + 4, AOF_RECORD_HEADER_BYTES - 4);
    if (len) crc = aof_crc32c(crc, payload, len);
    st32(h + AOF_R_CRC, aof_crc_mask(crc));
}

uint64_t aof_encode_record(unsigned char *h, uint32_t key_id, uint16_t flags, uint64_t offset,
                           uint64_t lsn, int64_t ts, const void *payload, uint32_t len) {
    if (len) memcpy(h + AOF_RECORD_HEADER_BYTES, payload, len);
    aof_encode_header(h, key_id, flags, offset, lsn, ts, h + AOF_RECORD_HEADER_BYTES, len);
    return AOF_RECORD_HEADER_BYTES + (uint64_t)len;
}

uint64_t aof_put_record(aof_seg *s, uint64_t pos, uint32_t key_id, uint16_t flags,
                        uint64_t offset, uint64_t lsn, int64_t ts, const void *payload,
                        uint32_t len) {
    return pos + aof_encode_record(s->base + pos, key_id, flags, offset, lsn, ts, payload, len);
}

int aof_seg_pwrite(aof_seg *s, const struct iovec *iov, int iovcnt, uint64_t pos) {
    size_t want = 0;
    for (int i = 0; i < iovcnt; i++) want += iov[i].iov_len;
    ssize_t n;
    if (AOF_IOFAIL(AOF_IO_PWRITE)) return sys_fail(s, "writing", pos);
    do n = pwritev(s->fd, iov, iovcnt, (off_t)pos);
    while (n < 0 && errno == EINTR);
    if (n < 0) return sys_fail(s, "writing", pos);
    if ((size_t)n == want) return AOF_OK;
    /* a short write (a signal, a full disk): the rest one piece at a time,
     * so a persistent failure is reported with its errno */
    size_t skip = (size_t)n;
    for (int i = 0; i < iovcnt; i++) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            pos += iov[i].iov_len;
            continue;
        }
        const char *b = (const char *)iov[i].iov_base + skip;
        size_t left = iov[i].iov_len - skip;
        pos += skip;
        skip = 0;
        while (left) {
            ssize_t m = pwrite(s->fd, b, left, (off_t)pos);
            if (m < 0 && errno == EINTR) continue;
            if (m <= 0) {
                if (m == 0) errno = ENOSPC;
                return sys_fail(s, "writing", pos);
            }
            b += m;
            left -= (size_t)m;
            pos += (uint64_t)m;
        }
    }
    return AOF_OK;
}

/* Checks the record at pos against the bytes below end. Returns AOF_STOP_END
 * with *rec_end set when it is sound, or the AOF_STOP_* reason it is not. */
static int check_record(const aof_seg *s, uint64_t pos, uint64_t end, uint64_t *rec_end) {
    const unsigned char *h = s->base + pos;
    if (end - pos < AOF_RECORD_HEADER_BYTES) {
        for (uint64_t i = pos; i < end; i++)
            if (s->base[i]) return AOF_STOP_TORN;
        return AOF_STOP_END;
    }
    int zero = 1;
    for (unsigned i = 0; i < AOF_RECORD_HEADER_BYTES && zero; i++) zero = h[i] == 0;
    if (zero) return AOF_STOP_END;
    uint32_t len = ld32(h + AOF_R_LENGTH);
    if (len > AOF_MAX_RECORD_BYTES) return AOF_STOP_BADHEADER;
    if ((uint64_t)len > end - pos - AOF_RECORD_HEADER_BYTES) return AOF_STOP_TORN;
    uint32_t crc = aof_crc32c(0, h + 4, AOF_RECORD_HEADER_BYTES - 4 + (size_t)len);
    if (aof_crc_unmask(ld32(h + AOF_R_CRC)) != crc) return AOF_STOP_CHECKSUM;
    uint16_t flags = ld16(h + AOF_R_FLAGS);
    if (ld16(h + AOF_R_RESERVED) || (flags & ~AOF_FLAGS_KNOWN)) return AOF_STOP_BADHEADER;
    *rec_end = pos + AOF_RECORD_HEADER_BYTES + len;
    return AOF_STOP_END;
}

/* Fills row i of the columns with the data record at pos. It ends its
 * batch when it carries the flag itself (a single append, the last of an
 * append_many) or when a transaction's commit record follows it: readers
 * below end only ever see committed records, so that record is there. */
static void fill_rec(const aof_seg *s, uint64_t pos, uint64_t end, uint64_t *out, size_t cap, size_t i) {
    const unsigned char *h = s->base + pos;
    uint64_t rec_end = pos + AOF_RECORD_HEADER_BYTES + ld32(h + AOF_R_LENGTH);
    uint64_t batch_end = (ld16(h + AOF_R_FLAGS) & AOF_FLAG_BATCH_END) != 0;
    if (!batch_end && rec_end <= end && end - rec_end >= AOF_RECORD_HEADER_BYTES)
        batch_end = (ld16(s->base + rec_end + AOF_R_FLAGS) & AOF_FLAG_COMMIT) != 0;
    out[AOF_COL_OFFSET * cap + i] = ld64(h + AOF_R_OFFSET);
    out[AOF_COL_LSN * cap + i] = ld64(h + AOF_R_LSN);
    out[AOF_COL_TIMESTAMP * cap + i] = ld64(h + AOF_R_TIMESTAMP);
    out[AOF_COL_KEY_ID * cap + i] = ld32(h + AOF_R_KEY_ID);
    out[AOF_COL_VSTART * cap + i] = pos + AOF_RECORD_HEADER_BYTES;
    out[AOF_COL_VEND * cap + i] = rec_end;
    out[AOF_COL_BATCH_END * cap + i] = batch_end;
}

/* Walks records from committed_end to end, indexing them; a batch counts once
 * its BATCH_END record is seen. What follows the last complete batch is undone
 * and described in rep. */
static int scan_records(aof_seg *s, uint64_t end, aof_scan_report *rep) {
    uint64_t pos = s->committed_end, rec_end = 0;
    int reason;
    for (;;) {
        reason = check_record(s, pos, end, &rec_end);
        if (reason != AOF_STOP_END || rec_end <= pos) break;
        const unsigned char *h = s->base + pos;
        uint32_t len = ld32(h + AOF_R_LENGTH), key_id = ld32(h + AOF_R_KEY_ID);
        uint16_t flags = ld16(h + AOF_R_FLAGS);
        uint64_t offset = ld64(h + AOF_R_OFFSET), lsn = ld64(h + AOF_R_LSN);
        aof_keyidx *k = key_id ? aof_idx_find(s, key_id) : NULL;
        int rc = AOF_OK;
        if (flags & AOF_FLAG_CONTROL) {
            if (lsn != s->next_lsn) { reason = AOF_STOP_SEQUENCE; break; }
            if (flags & AOF_FLAG_KEYDEF) {
                if (!key_id || (key_id & AOF_UNDO_KEYDEF) || (k && k->def_pos) || len == 0 ||
                    len > AOF_MAX_KEY_BYTES ||
                    (flags & AOF_FLAG_COMMIT)) {
                    reason = AOF_STOP_SEQUENCE;
                    break;
                }
                if (!aof_idx_define(s, key_id, offset, pos)) return last_err.code;
                rc = aof_undo_push(s, key_id | AOF_UNDO_KEYDEF);
            } else if (!(flags & AOF_FLAG_COMMIT) || !(flags & AOF_FLAG_BATCH_END) || key_id ||
                       len) {
                reason = AOF_STOP_BADHEADER;
                break;
            }
        } else {
            if (!k || !k->def_pos || offset != k->first_offset + k->count ||
                lsn != s->next_lsn || (key_id & AOF_UNDO_KEYDEF)) {
                reason = AOF_STOP_SEQUENCE;
                break;
            }
            if ((rc = aof_idx_push(s, k, pos)) == AOF_OK) rc = aof_undo_push(s, key_id);
            s->next_lsn++;
            s->pending++;
        }
        if (rc) return rc;
        pos = rec_end;
        if (flags & AOF_FLAG_BATCH_END) {
            s->committed_end = pos;
            s->record_count += s->pending;
            s->last_lsn = s->next_lsn - 1;
            s->pending = 0;
            s->nundo = 0;
        }
    }
    uint64_t dropped = aof_idx_undo(s, NULL, NULL);
    s->next_lsn = s->last_lsn ? s->last_lsn + 1 : s->first_lsn;
    if (rep) {
        rep->valid_end = s->committed_end;
        rep->stop_pos = pos;
        rep->dropped_records = dropped;
        rep->reason = reason;
        /* the incomplete batch, plus the header we stopped on unless it
         * was clean zero space (what lies past a bad header is unknowable) */
        uint64_t tail = pos - s->committed_end, rest = end - pos;
        if (reason != AOF_STOP_END) tail += rest < AOF_RECORD_HEADER_BYTES ? rest : AOF_RECORD_HEADER_BYTES;
        rep->dropped_bytes = tail;
    }
    s->write_pos = s->committed_end;
    return AOF_OK;
}

/* ------------------------------------------------------- header and footer */

static void put_header(aof_seg *s) {
    unsigned char *h = s->base;
    memset(h, 0, AOF_HEADER_BYTES);
    memcpy(h + AOF_H_MAGIC, AOF_SEG_MAGIC, 8);
    st32(h + AOF_H_VERSION, AOF_FORMAT_VERSION);
    st32(h + AOF_H_HEADER_BYTES, AOF_HEADER_BYTES);
    st64(h + AOF_H_STORE_ID, s->store_id);
    st64(h + AOF_H_SEGMENT_ID, s->segment_id);
    st64(h + AOF_H_FIRST_LSN, s->first_lsn);
    st64(h + AOF_H_CREATED_MS, (uint64_t)s->created_ms);
    st32(h + AOF_H_CRC, aof_crc_mask(aof_crc32c(0, h, AOF_H_CRC)));
}

static int parse_header(aof_seg *s, uint64_t avail) {
    const unsigned char *h = s->base;
    const char *name = s->path ? s->path : "<buffer>";
    if (avail < AOF_HEADER_BYTES || memcmp(h + AOF_H_MAGIC, AOF_SEG_MAGIC, 8) != 0)
        return aof_fail(AOF_EFORMAT, 0, 0, "%s: not an aoflite segment (bad magic or too short)", name);
    /* the CRC first: a damaged version field is damage, not a newer format */
    if (aof_crc_unmask(ld32(h + AOF_H_CRC)) != aof_crc32c(0, h, AOF_H_CRC))
        return aof_fail(AOF_ECORRUPT, 0, 0, "%s: segment header checksum mismatch at byte 0", name);
    s->version = ld32(h + AOF_H_VERSION);
    if (s->version > AOF_FORMAT_VERSION)
        return aof_fail(AOF_EVERSION, 0, AOF_H_VERSION,
                        "%s: segment format version %u is newer than this aoflite's %u", name,
                        s->version, AOF_FORMAT_VERSION);
    if (s->version == 0 || ld32(h + AOF_H_HEADER_BYTES) != AOF_HEADER_BYTES)
        return aof_fail(AOF_ECORRUPT, 0, 0, "%s: segment header at byte 0 holds impossible fields", name);
    s->store_id = ld64(h + AOF_H_STORE_ID);
    s->segment_id = ld64(h + AOF_H_SEGMENT_ID);
    s->first_lsn = ld64(h + AOF_H_FIRST_LSN);
    s->created_ms = (int64_t)ld64(h + AOF_H_CREATED_MS);
    s->next_lsn = s->first_lsn;
    s->committed_end = s->write_pos = AOF_HEADER_BYTES;
    return AOF_OK;
}

/* From here on reads go through the on-disk index. */
static void set_sealed(aof_seg *s, uint64_t ipos, uint64_t ibytes, uint64_t nkeys, uint64_t nrec,
                       uint32_t file_crc) {
    s->sealed = 1;
    s->index = s->base + ipos;
    s->index_pos = ipos;
    s->index_bytes = ibytes;
    s->key_count = nkeys;
    s->record_count = nrec;
    s->file_crc = file_crc;
    s->committed_end = s->write_pos = ipos;
}

/* Returns 1 when the last AOF_FOOTER_BYTES of the first len bytes are a
 * sound footer whose index checks out; fills the sealed fields. */
static int parse_footer(aof_seg *s, uint64_t len) {
    if (len < AOF_HEADER_BYTES + AOF_FOOTER_BYTES) return 0;
    const unsigned char *f = s->base + len - AOF_FOOTER_BYTES;
    if (memcmp(f + AOF_F_MAGIC, AOF_FOOTER_MAGIC, 8) != 0) return 0;
    if (aof_crc_unmask(ld32(f + AOF_F_CRC)) != aof_crc32c(0, f, AOF_F_CRC)) return 0;
    if (!(ld32(f + AOF_F_FLAGS) & AOF_FOOTER_SEALED)) return 0;
    uint64_t ipos = ld64(f + AOF_F_INDEX_POS), ibytes = ld64(f + AOF_F_INDEX_BYTES);
    uint64_t nrec = ld64(f + AOF_F_RECORD_COUNT), nkeys = ld32(f + AOF_F_KEY_COUNT);
    uint64_t body = len - AOF_FOOTER_BYTES;
    /* overflow-safe: each term is bounded before it is multiplied */
    if (ipos < AOF_HEADER_BYTES || ipos > body || ibytes != body - ipos) return 0;
    if (nkeys > ibytes / AOF_KEY_ENTRY_BYTES || nrec > ibytes / 8 ||
        nkeys * AOF_KEY_ENTRY_BYTES + nrec * 8 != ibytes)
        return 0;
    if (aof_crc_unmask(ld32(f + AOF_F_INDEX_CRC)) != aof_crc32c(0, s->base + ipos, ibytes))
        return 0;
    /* key entries: strictly ascending ids, position runs laid end to end */
    const unsigned char *e = s->base + ipos;
    uint64_t next_start = 0;
    uint32_t prev = 0;
    for (uint64_t i = 0; i < nkeys; i++, e += AOF_KEY_ENTRY_BYTES) {
        uint32_t id = ld32(e + AOF_K_KEY_ID);
        uint64_t count = ld64(e + AOF_K_COUNT), start = ld64(e + AOF_K_POS_START);
        uint64_t def_pos = ld64(e + AOF_K_DEF_POS), first = ld64(e + AOF_K_FIRST_OFFSET);
        if (id <= prev || count == 0 || start != next_start || count > nrec - start ||
            def_pos < AOF_HEADER_BYTES || def_pos >= ipos || first + count < first)
            return 0;
        prev = id;
        next_start = start + count;
    }
    if (next_start != nrec) return 0;
    set_sealed(s, ipos, ibytes, nkeys, nrec, ld32(f + AOF_F_FILE_CRC));
    s->last_lsn = ld64(f + AOF_F_LAST_LSN);
    return 1;
}

/* ------------------------------------------------------------ open, close */

static aof_seg *seg_alloc(const char *path) {
    aof_seg *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    pthread_mutex_init(&s->mu, NULL);
    s->fd = -1;
    if (path && !(s->path = strdup(path))) {
        free(s);
        return NULL;
    }
    return s;
}

static void free_index(aof_seg *s) {
    for (uint32_t i = 0; i < s->nkeys; i++) free(s->keys[i].pos);
    free(s->keys);
    free(s->slots);
    free(s->undo);
    s->keys = NULL;
    s->slots = s->undo = NULL;
    s->nkeys = s->keys_cap = s->nslots = 0;
    s->nundo = s->undo_cap = 0;
}

void aof_seg_free(aof_seg *s) {
    if (!s) return;
    if (s->mem && s->base) munmap(s->base, s->map_len);
    if (s->fd >= 0) close(s->fd);
    free_index(s);
    free(s->path);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int sys_fail(const aof_seg *s, const char *what, uint64_t pos) {
    int e = errno;
    return aof_fail(AOF_EIO, e, pos, "%s %s: %s", what, s->path ? s->path : "<buffer>",
                    strerror(e));
}

static int preallocate(aof_seg *s, uint64_t from, uint64_t to) {
    int rc = AOF_IOFAIL(AOF_IO_FALLOCATE) ? errno
                                          : posix_fallocate(s->fd, (off_t)from, (off_t)(to - from));
    if (rc == EOPNOTSUPP || rc == EINVAL) rc = ftruncate(s->fd, (off_t)to) ? errno : 0;
    if (rc) {
        errno = rc;
        return sys_fail(s, "preallocating", from);
    }
    return AOF_OK;
}

/* Durability log for the power-loss tests: with aof_synclog_open called,
 * every completed sync appends one line naming what it made durable:
 *   R path from to   bytes [from, to) of path (page-aligned from)
 *   F path size      all of path, and its size
 *   D path           the entries of directory path
 * Unopened, each site costs one branch. */
static int synclog_fd = -1;
static pthread_mutex_t synclog_mu = PTHREAD_MUTEX_INITIALIZER;

int aof_synclog_open(const char *path) {
    if (synclog_fd >= 0) close(synclog_fd);
    synclog_fd = path ? open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644) : -1;
    return synclog_fd >= 0 || !path ? AOF_OK : aof_fail(AOF_EIO, errno, 0, "opening sync log %s", path);
}

static void synclog(char kind, const char *path, uint64_t a, uint64_t b) {
    if (synclog_fd < 0 || !path) return;
    char line[4200];
    int n = kind == 'R' ? snprintf(line, sizeof line, "R %s %llu %llu\n", path, (unsigned long long)a, (unsigned long long)b)
            : kind == 'F' ? snprintf(line, sizeof line, "F %s %llu\n", path, (unsigned long long)a)
                          : snprintf(line, sizeof line, "D %s\n", path);
    if (n <= 0 || n >= (int)sizeof line) return;
    pthread_mutex_lock(&synclog_mu);
    if (write(synclog_fd, line, (size_t)n) < 0) { /* a test aid: losing a line only weakens the test */ }
    pthread_mutex_unlock(&synclog_mu);
}

static int file_sync(aof_seg *s, uint64_t pos) {
    /* the size logged is taken before the sync: another thread may grow
     * the file meanwhile, and a size past what fdatasync covered must not
     * pass for durable */
    struct stat st;
    int logged = synclog_fd >= 0 && !fstat(s->fd, &st);
    if (AOF_IOFAIL(AOF_IO_FDATASYNC) || fdatasync(s->fd)) return sys_fail(s, "syncing", pos);
    if (logged) synclog('F', s->path, (uint64_t)st.st_size, 0);
    return AOF_OK;
}

int aof_seg_sync_file(aof_seg *s) { return file_sync(s, 0); }

static int sync_dir(const char *path) {
    char *copy = strdup(path);
    if (!copy) return aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory");
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = AOF_OK;
    if (fd < 0 || AOF_IOFAIL(AOF_IO_DIRSYNC) || fsync(fd)) {
        int e = errno;
        rc = aof_fail(AOF_EIO, e, 0, "syncing the directory of %s: %s", path, strerror(e));
    } else {
        synclog('D', copy, 0, 0);
    }
    if (fd >= 0) close(fd);
    free(copy);
    return rc;
}

/* The file size an active segment holding need bytes is allocated to: the
 * first step, doubled until need fits, capped at the capacity (never below
 * need), whole pages. Creation, recovery and growth within the capacity
 * all land on these steps. */
static uint64_t grow_step(const aof_seg *s, uint64_t need) {
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t size = AOF_GROW_FIRST;
    while (size < need && size < s->capacity) size *= 2;
    if (size > s->capacity) size = s->capacity;
    if (size < need) size = need;
    return (size + page - 1) & ~(page - 1);
}

static int map_writable(aof_seg *s) {
    void *p = AOF_IOFAIL(AOF_IO_MMAP) ? MAP_FAILED
                                      : mmap(NULL, AOF_RESERVE_BYTES, PROT_READ | PROT_WRITE,
                                             MAP_SHARED | MAP_NORESERVE, s->fd, 0);
    if (p == MAP_FAILED) return sys_fail(s, "mapping", 0);
    s->base = p;
    s->map_len = AOF_RESERVE_BYTES;
    s->mem = 1;
    return AOF_OK;
}

int aof_seg_create(const char *path, uint64_t store_id, uint64_t segment_id,
                   uint64_t first_lsn, uint64_t capacity, aof_seg **out) {
    if (!path || !out || capacity < AOF_HEADER_BYTES + AOF_FOOTER_BYTES ||
        capacity > AOF_RESERVE_BYTES)
        return aof_fail(AOF_EINVAL, 0, 0, "aof_seg_create: bad argument (capacity %llu)",
                        (unsigned long long)capacity);
    aof_seg *s = seg_alloc(path);
    if (!s) return aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory");
    int rc;
    s->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (s->fd < 0) {
        rc = sys_fail(s, "creating", 0);
        goto fail;
    }
    AOF_FAILPOINT("create.opened");
    s->mode = AOF_OPEN_WRITE;
    s->capacity = capacity;
    s->store_id = store_id;
    s->segment_id = segment_id;
    s->first_lsn = s->next_lsn = first_lsn;
    s->created_ms = aof_now_ms();
    s->version = AOF_FORMAT_VERSION;
    uint64_t first = grow_step(s, AOF_HEADER_BYTES);
    if ((rc = preallocate(s, 0, first)) || (rc = map_writable(s))) goto fail;
    s->file_bytes = first;
    put_header(s);
    s->committed_end = s->write_pos = AOF_HEADER_BYTES;
    AOF_FAILPOINT("create.header_written");
    /* the header must be durable before any record can be acknowledged */
    if ((rc = file_sync(s, 0))) goto fail;
    if ((rc = sync_dir(path))) goto fail;
    *out = s;
    return AOF_OK;
fail:
    if (s->fd >= 0) unlink(path);
    aof_seg_free(s);
    return rc;
}

/* Copies file bytes [s->filled, size) into the follower's private buffer. */
static int follow_read(aof_seg *s, uint64_t size) {
    if (size > s->map_len)
        return aof_fail(AOF_ETOOBIG, 0, size, "%s: segment larger than the follow reserve",
                        s->path);
    while (s->filled < size) {
        ssize_t n = AOF_IOFAIL(AOF_IO_PREAD)
                        ? -1
                        : pread(s->fd, s->base + s->filled, (size_t)(size - s->filled), (off_t)s->filled);
        if (n < 0) {
            if (errno == EINTR) continue;
            return sys_fail(s, "reading", s->filled);
        }
        if (n == 0) break;
        s->filled += (uint64_t)n;
    }
    return AOF_OK;
}

/* How far a follower reads: the file minus trailing zero pages would be
 * ideal, but the file is preallocated; the scan stops at zeros anyway, so
 * read in steps and stop once a step ends the scan before its end. Steps
 * start small, since a tail loop woken for one batch needs a few hundred
 * bytes and copying a whole megabyte of zeros was most of its cost, and
 * double while the scan keeps running into their end. */
#define AOF_FOLLOW_STEP_FIRST (64ull << 10)
#define AOF_FOLLOW_STEP (1ull << 20)

/* How often a refresh starts the uncommitted region over because the
 * writer rewrote it meanwhile, before it gives up until the next refresh. */
#define AOF_FOLLOW_RETRIES 64

/* Every byte past committed_end that the scan may accept must have been
 * copied while the feed's change generation stood still: a rollback or a
 * failed batch's cleanup rewrites that region in place, and bytes copied
 * before it and after it could otherwise stitch into a batch that never
 * existed (a rolled-back record under a later batch's end). */
static int follow_scan(aof_seg *s, aof_scan_report *rep) {
    struct stat st;
    if (fstat(s->fd, &st)) return sys_fail(s, "stat", 0);
    uint64_t size = (uint64_t)st.st_size;
    /* re-read everything past the last complete batch: the writer may have
     * finished what we saw half-written */
    if (s->filled > s->committed_end) s->filled = s->committed_end;
    uint64_t gen = aof_feed_gen(s->feed), step = AOF_FOLLOW_STEP_FIRST;
    int retries = 0;
    for (;;) {
        if (gen & 1) {
            /* a rewrite is under way: wait it out briefly, then settle for
             * what is committed */
            if (++retries > AOF_FOLLOW_RETRIES) break;
            sched_yield();
            gen = aof_feed_gen(s->feed);
            continue;
        }
        uint64_t want = s->filled + step;
        int rc = follow_read(s, want < size ? want : size);
        if (rc) return rc;
        AOF_PAUSE("follow.after_read");
        uint64_t now = aof_feed_gen(s->feed);
        if (now != gen) {
            s->filled = s->committed_end;
            gen = now;
            if (++retries > AOF_FOLLOW_RETRIES) break;
            continue;
        }
        if ((rc = scan_records(s, s->filled, rep))) return rc;
        /* read on only while the scan ran into the end of what we copied */
        if (s->filled >= size) break;
        if (rep->reason != AOF_STOP_TORN && rep->stop_pos + AOF_RECORD_HEADER_BYTES <= s->filled)
            break;
        if (step < AOF_FOLLOW_STEP) step *= 2;
    }
    if (retries > AOF_FOLLOW_RETRIES) {
        /* nothing past committed_end was accepted this time */
        memset(rep, 0, sizeof *rep);
        rep->valid_end = rep->stop_pos = s->committed_end;
        rep->reason = AOF_STOP_END;
    }
    return AOF_OK;
}

/* A file may be sealed under a follower: sets *size to the size of the
 * file when its last bytes are a sound footer (a sealed file never changes
 * again, so that size is final), else to 0. The size is the one the footer
 * was read at: a size taken earlier may be the preallocated one, and
 * mapping that much of a file the seal shrank faults on access. A read
 * that fails is an error, never "not sealed". */
static int sealed_on_disk(aof_seg *s, uint64_t *size) {
    struct stat st;
    unsigned char f[AOF_FOOTER_BYTES];
    *size = 0;
    if (fstat(s->fd, &st)) return sys_fail(s, "stat", 0);
    if ((uint64_t)st.st_size < AOF_HEADER_BYTES + AOF_FOOTER_BYTES) return AOF_OK;
    off_t at = st.st_size - (off_t)sizeof f;
    ssize_t n = AOF_IOFAIL(AOF_IO_PREAD) ? -1 : pread(s->fd, f, sizeof f, at);
    if (n < 0) return sys_fail(s, "reading", (uint64_t)at);
    if (n == (ssize_t)sizeof f && memcmp(f + AOF_F_MAGIC, AOF_FOOTER_MAGIC, 8) == 0 &&
        aof_crc_unmask(ld32(f + AOF_F_CRC)) == aof_crc32c(0, f, AOF_F_CRC) &&
        (ld32(f + AOF_F_FLAGS) & AOF_FOOTER_SEALED))
        *size = (uint64_t)st.st_size;
    return AOF_OK;
}

static int map_file(aof_seg *s, uint64_t size) {
    void *p = AOF_IOFAIL(AOF_IO_MMAP) ? MAP_FAILED : mmap(NULL, size, PROT_READ, MAP_SHARED, s->fd, 0);
    if (p == MAP_FAILED) return sys_fail(s, "mapping", 0);
    s->base = p;
    s->map_len = size;
    s->mem = 1;
    return AOF_OK;
}

static void unmap(aof_seg *s) {
    if (s->mem && s->base) munmap(s->base, s->map_len);
    s->base = NULL;
    s->mem = 0;
}

/* Writer: recover the unsealed tail and make the segment appendable. */
static int open_for_write(aof_seg *s, uint64_t size, uint64_t capacity, aof_scan_report *report) {
    int rc;
    if ((rc = scan_records(s, size, report))) return rc;
    unmap(s);
    /* Truncating drops whatever followed the last complete batch, torn
     * bytes and stale pages alike; preallocating again gives zeros. The
     * file may have any size here (a crash mid-growth, or a power loss
     * that kept an older size): it ends at the growth step that holds the
     * records, as if they had been appended to a new segment. */
    if (capacity < s->committed_end) capacity = s->committed_end;
    s->capacity = capacity;
    uint64_t alloc = grow_step(s, s->committed_end);
    /* what followers copied past the last batch is about to become zeros
     * and then new batches at the same positions */
    aof_feed_change(s->feed, 1);
    if (AOF_IOFAIL(AOF_IO_FTRUNCATE) || ftruncate(s->fd, (off_t)s->committed_end))
        return sys_fail(s, "truncating", s->committed_end);
    AOF_FAILPOINT("recover.truncated");
    rc = preallocate(s, 0, alloc);
    aof_feed_change(s->feed, 0);
    if (rc || (rc = map_writable(s))) return rc;
    s->file_bytes = alloc;
    /* prefault only from here on: populating the recovered records
     * would dirty them and write them all again */
    s->populated = s->committed_end & ~((uint64_t)sysconf(_SC_PAGESIZE) - 1);
    return file_sync(s, 0);
}

/* Follower: a private copy fed by pread, never a map of the file, so the
 * writer sealing (and shrinking) the file can never fault our reads. */
static int open_to_follow(aof_seg *s, aof_scan_report *report) {
    int rc;
    void *p = mmap(NULL, AOF_RESERVE_BYTES, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return sys_fail(s, "reserving memory for", 0);
    s->base = p;
    s->map_len = AOF_RESERVE_BYTES;
    s->mem = 2;
    s->follow = 1;
    s->filled = 0;
    if ((rc = follow_read(s, AOF_HEADER_BYTES)) || (rc = parse_header(s, s->filled))) return rc;
    return follow_scan(s, report);
}

int aof_seg_open(const char *path, int mode, uint64_t capacity, aof_feed *feed, aof_seg **out,
                 aof_scan_report *report) {
    aof_scan_report scratch;
    if (!report) report = &scratch;
    memset(report, 0, sizeof *report);
    if (!path || !out || (mode != AOF_OPEN_READ && mode != AOF_OPEN_WRITE))
        return aof_fail(AOF_EINVAL, 0, 0, "aof_seg_open: bad argument");
    aof_seg *s = seg_alloc(path);
    if (!s) return aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory");
    int rc;
    struct stat st;
    s->fd = open(path, (mode == AOF_OPEN_WRITE ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (s->fd < 0) {
        rc = errno == ENOENT ? aof_fail(AOF_ENOTFOUND, ENOENT, 0, "%s: no such segment", path)
                             : sys_fail(s, "opening", 0);
        goto fail;
    }
    if (fstat(s->fd, &st)) {
        rc = sys_fail(s, "stat", 0);
        goto fail;
    }
    uint64_t size = (uint64_t)st.st_size;
    AOF_PAUSE("seg_open.after_stat");
    s->mode = mode;
    s->capacity = capacity;
    s->feed = feed;
    /* Only a writer (which holds the store's lock) or a sealed file (which
     * never changes again) may be mapped: a map of a file another process
     * shrinks faults on access. */
    if (mode == AOF_OPEN_READ && (rc = sealed_on_disk(s, &size))) goto fail;
    if (mode == AOF_OPEN_READ && !size) {
        if ((rc = open_to_follow(s, report))) goto fail;
        *out = s;
        return AOF_OK;
    }
    s->file_bytes = size;
    if (size > 0 && (rc = map_file(s, size))) goto fail;
    if ((rc = parse_header(s, size))) goto fail;
    if (parse_footer(s, size)) {
        s->mode = AOF_OPEN_READ;
        report->valid_end = report->stop_pos = s->index_pos;
        report->reason = AOF_STOP_END;
        *out = s;
        return AOF_OK;
    }
    if (mode == AOF_OPEN_WRITE) {
        rc = open_for_write(s, size, capacity, report);
    } else {
        /* a sound footer over an index that fails its checks: read what
         * the records themselves prove */
        unmap(s);
        rc = open_to_follow(s, report);
    }
    if (rc) goto fail;
    *out = s;
    return AOF_OK;
fail:
    aof_seg_free(s);
    return rc;
}

int aof_seg_refresh(aof_seg *s, aof_scan_report *report) {
    aof_scan_report scratch;
    if (!report) report = &scratch;
    memset(report, 0, sizeof *report);
    if (!s->follow) {
        report->valid_end = report->stop_pos = s->committed_end;
        report->reason = s->sealed ? AOF_STOP_SEALED : AOF_STOP_END;
        return AOF_OK;
    }
    pthread_mutex_lock(&s->mu);
    /* sealed before the scan began, the scan saw the final records: only
     * then may a caller move on to the next segment without missing any */
    uint64_t sealed;
    int rc = sealed_on_disk(s, &sealed);
    if (!rc) rc = follow_scan(s, report);
    if (!rc && sealed) report->reason = AOF_STOP_SEALED;
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int aof_seg_check_buffer(const char *buf, size_t len, aof_seg_info *info,
                         aof_scan_report *report) {
    aof_scan_report scratch;
    if (!report) report = &scratch;
    memset(report, 0, sizeof *report);
    if (!buf && len) return aof_fail(AOF_EINVAL, 0, 0, "aof_seg_check_buffer: no buffer");
    aof_seg *s = seg_alloc(NULL);
    if (!s) return aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory");
    s->base = (unsigned char *)buf;
    s->map_len = s->file_bytes = len;
    int rc = parse_header(s, len);
    if (!rc) {
        if (parse_footer(s, len)) {
            rc = aof_seg_verify(s);
            report->valid_end = report->stop_pos = s->index_pos;
            report->reason = AOF_STOP_END;
        } else {
            rc = scan_records(s, len, report);
        }
    }
    if (!rc && info) rc = aof_seg_info_get(s, info);
    aof_seg_free(s);
    return rc;
}

int aof_seg_info_get(aof_seg *s, aof_seg_info *out) {
    pthread_mutex_lock(&s->mu);
    out->store_id = s->store_id;
    out->segment_id = s->segment_id;
    out->first_lsn = s->first_lsn;
    out->created_ms = s->created_ms;
    out->version = s->version;
    out->sealed = s->sealed;
    out->mode = s->mode;
    out->records_end = s->committed_end;
    out->file_bytes = s->file_bytes;
    out->record_count = s->record_count;
    out->last_lsn = s->last_lsn;
    out->key_count = s->sealed ? s->key_count : 0;
    if (!s->sealed)
        for (uint32_t i = 0; i < s->nkeys; i++) out->key_count += s->keys[i].def_pos != 0;
    out->file_crc = s->file_crc;
    out->prefaulted = s->populated;
    pthread_mutex_unlock(&s->mu);
    return AOF_OK;
}

/* ------------------------------------------------------------------ reads */

/* Bytes visible to the calling thread: an open transaction only to its owner. */
static uint64_t visible_end(const aof_seg *s) {
    if (s->tx_active && pthread_equal(s->tx_owner, pthread_self())) return s->write_pos;
    return s->committed_end;
}

static const unsigned char *sealed_entry(const aof_seg *s, uint32_t key_id) {
    uint64_t lo = 0, hi = s->key_count;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        const unsigned char *e = s->index + mid * AOF_KEY_ENTRY_BYTES;
        uint32_t id = ld32(e + AOF_K_KEY_ID);
        if (id == key_id) return e;
        if (id < key_id) lo = mid + 1;
        else hi = mid;
    }
    return NULL;
}

/* Takes mu and returns 1 while the segment is unsealed; returns 0 (mu
 * released) once sealed. A seal happens under mu and frees the in-memory
 * index, so "unsealed" must be decided under it; a sealed segment's index
 * never changes again and is read without the lock. */
static int lock_unsealed(aof_seg *s) {
    pthread_mutex_lock(&s->mu);
    if (!s->sealed) return 1;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* Visible records of key_id in an unsealed segment: positions are ascending,
 * so the ones below the visible end are a prefix. */
static uint64_t visible_count(const aof_seg *s, const aof_keyidx *k) {
    uint64_t end = visible_end(s), lo = 0, hi = k->count;
    if (!k->count || k->pos[k->count - 1] < end) return k->count;
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (k->pos[mid] < end) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

int aof_seg_key_range(aof_seg *s, uint32_t key_id, aof_key_range *out) {
    if (lock_unsealed(s)) {
        aof_keyidx *k = aof_idx_find(s, key_id);
        uint64_t n = k && k->def_pos ? visible_count(s, k) : 0;
        if (n) {
            out->key_id = key_id;
            out->first_offset = k->first_offset;
            out->count = n;
        }
        pthread_mutex_unlock(&s->mu);
        return n ? AOF_OK : AOF_ENOTFOUND;
    }
    const unsigned char *e = sealed_entry(s, key_id);
    if (!e) return AOF_ENOTFOUND;
    out->key_id = key_id;
    out->first_offset = ld64(e + AOF_K_FIRST_OFFSET);
    out->count = ld64(e + AOF_K_COUNT);
    return AOF_OK;
}

int aof_seg_keys(aof_seg *s, aof_key_range *out, size_t cap, size_t *n) {
    size_t total = 0;
    if (lock_unsealed(s)) {
        for (uint32_t i = 0; i < s->nkeys; i++) {
            aof_keyidx *k = &s->keys[i];
            uint64_t c = k->def_pos ? visible_count(s, k) : 0;
            if (!c) continue;
            if (total < cap) {
                out[total].key_id = k->key_id;
                out[total].first_offset = k->first_offset;
                out[total].count = c;
            }
            total++;
        }
        pthread_mutex_unlock(&s->mu);
    } else {
        for (uint64_t i = 0; i < s->key_count; i++, total++) {
            const unsigned char *e = s->index + i * AOF_KEY_ENTRY_BYTES;
            if (total < cap) {
                out[total].key_id = ld32(e + AOF_K_KEY_ID);
                out[total].first_offset = ld64(e + AOF_K_FIRST_OFFSET);
                out[total].count = ld64(e + AOF_K_COUNT);
            }
        }
    }
    *n = total;
    return AOF_OK;
}

int aof_seg_key_name(aof_seg *s, uint32_t key_id, char *buf, size_t cap, size_t *len) {
    uint64_t def_pos = 0, end;
    if (lock_unsealed(s)) {
        aof_keyidx *k = aof_idx_find(s, key_id);
        if (k) def_pos = k->def_pos;
        end = visible_end(s);
        pthread_mutex_unlock(&s->mu);
    } else {
        const unsigned char *e = sealed_entry(s, key_id);
        if (e) def_pos = ld64(e + AOF_K_DEF_POS);
        end = s->index_pos;
    }
    if (!def_pos) return AOF_ENOTFOUND;
    uint64_t rec_end;
    if (def_pos >= end || check_record(s, def_pos, end, &rec_end) != AOF_STOP_END ||
        rec_end <= def_pos || !(ld16(s->base + def_pos + AOF_R_FLAGS) & AOF_FLAG_KEYDEF) ||
        ld32(s->base + def_pos + AOF_R_KEY_ID) != key_id)
        return aof_fail(AOF_ECORRUPT, 0, def_pos,
                        "%s: key definition of key id %u at byte %llu is damaged",
                        s->path ? s->path : "<buffer>", key_id, (unsigned long long)def_pos);
    uint32_t n = ld32(s->base + def_pos + AOF_R_LENGTH);
    if (n == 0 || n > AOF_MAX_KEY_BYTES)
        return aof_fail(AOF_ECORRUPT, 0, def_pos,
                        "%s: key definition of key id %u at byte %llu has an impossible length %u",
                        s->path ? s->path : "<buffer>", key_id, (unsigned long long)def_pos, n);
    *len = n;
    if (n > cap) return AOF_ETOOBIG;
    memcpy(buf, s->base + def_pos + AOF_RECORD_HEADER_BYTES, n);
    return AOF_OK;
}

/* Checks and returns the data record (key_id, offset) at pos below end. */
static int load_record(const aof_seg *s, uint64_t pos, uint64_t end, uint32_t key_id,
                       uint64_t offset, uint64_t *out, size_t cap, size_t i) {
    uint64_t rec_end = 0;
    if (pos < AOF_HEADER_BYTES || pos >= end || check_record(s, pos, end, &rec_end) != AOF_STOP_END ||
        rec_end <= pos)
        return aof_fail(AOF_ECORRUPT, 0, pos,
                        "%s: record of key id %u offset %llu at byte %llu fails its checksum",
                        s->path ? s->path : "<buffer>", key_id, (unsigned long long)offset,
                        (unsigned long long)pos);
    const unsigned char *h = s->base + pos;
    if (ld32(h + AOF_R_KEY_ID) != key_id || ld64(h + AOF_R_OFFSET) != offset ||
        (ld16(s->base + pos + AOF_R_FLAGS) & AOF_FLAG_CONTROL))
        return aof_fail(AOF_ECORRUPT, 0, pos,
                        "%s: index points key id %u offset %llu at byte %llu, which holds "
                        "another record",
                        s->path ? s->path : "<buffer>", key_id, (unsigned long long)offset,
                        (unsigned long long)pos);
    fill_rec(s, pos, end, out, cap, i);
    return AOF_OK;
}

int aof_seg_read_range(aof_seg *s, uint32_t key_id, uint64_t offset, uint64_t *out, size_t cap,
                       size_t *n) {
    *n = 0;
    int rc = AOF_OK;
    if (lock_unsealed(s)) {
        aof_keyidx *k = aof_idx_find(s, key_id);
        uint64_t count = k && k->def_pos ? visible_count(s, k) : 0;
        if (!count || offset < k->first_offset || offset - k->first_offset >= count) {
            pthread_mutex_unlock(&s->mu);
            return AOF_ENOTFOUND;
        }
        uint64_t end = s->write_pos;
        for (uint64_t i = offset - k->first_offset; i < count && *n < cap; i++, (*n)++) {
            rc = load_record(s, k->pos[i], end, key_id, k->first_offset + i, out, cap, *n);
            if (rc) break;
        }
        pthread_mutex_unlock(&s->mu);
        return rc;
    }
    const unsigned char *e = sealed_entry(s, key_id);
    if (!e) return AOF_ENOTFOUND;
    uint64_t first = ld64(e + AOF_K_FIRST_OFFSET), count = ld64(e + AOF_K_COUNT);
    uint64_t start = ld64(e + AOF_K_POS_START);
    if (offset < first || offset - first >= count) return AOF_ENOTFOUND;
    const unsigned char *positions = s->index + s->key_count * AOF_KEY_ENTRY_BYTES;
    for (uint64_t i = offset - first; i < count && *n < cap; i++, (*n)++) {
        rc = load_record(s, ld64(positions + (start + i) * 8), s->index_pos, key_id, first + i, out,
                         cap, *n);
        if (rc) break;
    }
    return rc;
}

int aof_seg_scan(aof_seg *s, uint64_t *pos, uint64_t min_lsn, uint64_t *out, size_t cap,
                 size_t *n) {
    *n = 0;
    pthread_mutex_lock(&s->mu);
    uint64_t end = s->sealed ? s->index_pos : visible_end(s);
    pthread_mutex_unlock(&s->mu);
    uint64_t p = *pos < AOF_HEADER_BYTES ? AOF_HEADER_BYTES : *pos;
    int rc = AOF_OK;
    while (p < end && *n < cap) {
        uint64_t rec_end = 0;
        if (check_record(s, p, end, &rec_end) != AOF_STOP_END || rec_end <= p) {
            rc = aof_fail(AOF_ECORRUPT, 0, p, "%s: record at byte %llu fails its checksum",
                          s->path ? s->path : "<buffer>", (unsigned long long)p);
            break;
        }
        if (!(ld16(s->base + p + AOF_R_FLAGS) & AOF_FLAG_CONTROL) &&
            ld64(s->base + p + AOF_R_LSN) >= min_lsn)
            fill_rec(s, p, end, out, cap, (*n)++);
        p = rec_end;
    }
    *pos = p;
    return rc;
}

int aof_seg_memory(aof_seg *s, const char **base, uint64_t *len) {
    *base = (const char *)s->base;
    *len = s->sealed ? s->file_bytes : s->map_len;
    return AOF_OK;
}

/* --------------------------------------------------------- sync and grow */

int aof_seg_sync_range(aof_seg *s, uint64_t from, uint64_t to) {
    if (to <= from) return AOF_OK;
    long page = sysconf(_SC_PAGESIZE);
    uint64_t start = from & ~((uint64_t)page - 1);
    if (AOF_IOFAIL(AOF_IO_MSYNC) || msync(s->base + start, (size_t)(to - start), MS_SYNC))
        return sys_fail(s, "syncing", from);
    synclog('R', s->path, start, to);
    return AOF_OK;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

void aof_seg_populate(aof_seg *s, uint64_t end) {
    if (end <= s->populated || s->mem != 1 || s->mode != AOF_OPEN_WRITE) return;
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t from = s->populated & ~(page - 1);
    uint64_t to = end + AOF_POPULATE_WINDOW;
    if (to > s->file_bytes) to = s->file_bytes;
    to &= ~(page - 1);
    /* older kernels lack it (EINVAL): then the writes fault pages in */
    if (to > from && madvise(s->base + from, (size_t)(to - from), MADV_POPULATE_WRITE) == 0)
        s->populated = to;
    else
        s->populated = s->file_bytes;
}

int aof_seg_grow(aof_seg *s, uint64_t new_bytes) {
    if (new_bytes <= s->file_bytes) return AOF_OK;
    if (new_bytes > s->map_len)
        return aof_fail(AOF_ETOOBIG, 0, new_bytes,
                        "%s: a batch would grow the segment past %llu bytes", s->path,
                        (unsigned long long)s->map_len);
    uint64_t target;
    if (new_bytes <= s->capacity) {
        target = grow_step(s, new_bytes);
        if (target > s->map_len) target = s->map_len;
    } else {
        /* past the capacity (a transaction, a seal's index): by at least
         * half again, so a long transaction does not call this per record */
        uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
        target = s->file_bytes + s->file_bytes / 2;
        if (target < new_bytes) target = new_bytes;
        target = (target + page - 1) & ~(page - 1);
        if (target > s->map_len) target = s->map_len;
    }
    int rc = preallocate(s, s->file_bytes, target);
    if (rc) {
        /* the file may now be anything from its old size to target long:
         * file_bytes stays, so nothing is written past it, and the next
         * growth or recovery starts over from there */
        aof_error e;
        aof_last_error(&e);
        return aof_fail(AOF_EIO, e.sys_errno, s->file_bytes,
                        "growing %s from %llu to %llu bytes: %s", s->path,
                        (unsigned long long)s->file_bytes, (unsigned long long)target,
                        strerror(e.sys_errno));
    }
    /* a crash here leaves a longer file than any sync knew of, and a
     * power loss may bring back the shorter one: recovery takes either */
    AOF_FAILPOINT("seg.grown");
    s->file_bytes = target;
    return AOF_OK;
}

/* ------------------------------------------------------------------- seal */

static int cmp_key(const void *a, const void *b) {
    uint32_t x = (*(aof_keyidx *const *)a)->key_id, y = (*(aof_keyidx *const *)b)->key_id;
    return (x > y) - (x < y);
}

int aof_seg_seal(aof_seg *s) {
    pthread_mutex_lock(&s->mu);
    int rc = AOF_OK;
    aof_keyidx **order = NULL;
    if (s->sealed) goto out;
    if (s->mode != AOF_OPEN_WRITE || s->tx_active || s->write_pos != s->committed_end) {
        rc = aof_fail(AOF_EINVAL, 0, 0, "%s: only an idle writable segment can be sealed",
                      s->path);
        goto out;
    }
    /* the index lists keys by id; the live table stays untouched so a
     * failed seal leaves the segment appendable */
    uint64_t nkeys = 0, nrec = 0;
    if (s->nkeys && !(order = malloc(s->nkeys * sizeof *order))) {
        rc = aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory sealing %s", s->path);
        goto out;
    }
    for (uint32_t i = 0; i < s->nkeys; i++)
        if (s->keys[i].def_pos && s->keys[i].count) {
            order[nkeys++] = &s->keys[i];
            nrec += s->keys[i].count;
        }
    if (nkeys) qsort(order, nkeys, sizeof *order, cmp_key);
    uint64_t ipos = s->committed_end;
    uint64_t ibytes = nkeys * AOF_KEY_ENTRY_BYTES + nrec * 8;
    uint64_t total = ipos + ibytes + AOF_FOOTER_BYTES;
    if ((rc = aof_seg_grow(s, total))) goto out;
    unsigned char *e = s->base + ipos, *positions = e + nkeys * AOF_KEY_ENTRY_BYTES;
    uint64_t start = 0;
    for (uint64_t i = 0; i < nkeys; i++, e += AOF_KEY_ENTRY_BYTES) {
        aof_keyidx *k = order[i];
        memset(e, 0, AOF_KEY_ENTRY_BYTES);
        st32(e + AOF_K_KEY_ID, k->key_id);
        st64(e + AOF_K_FIRST_OFFSET, k->first_offset);
        st64(e + AOF_K_COUNT, k->count);
        st64(e + AOF_K_DEF_POS, k->def_pos);
        st64(e + AOF_K_POS_START, start);
        for (uint64_t j = 0; j < k->count; j++) st64(positions + (start + j) * 8, k->pos[j]);
        start += k->count;
    }
    unsigned char *f = s->base + ipos + ibytes;
    memset(f, 0, AOF_FOOTER_BYTES);
    st64(f + AOF_F_INDEX_POS, ipos);
    st64(f + AOF_F_INDEX_BYTES, ibytes);
    st64(f + AOF_F_RECORD_COUNT, nrec);
    st64(f + AOF_F_LAST_LSN, s->last_lsn);
    st32(f + AOF_F_KEY_COUNT, (uint32_t)nkeys);
    st32(f + AOF_F_FLAGS, AOF_FOOTER_SEALED);
    st32(f + AOF_F_INDEX_CRC, aof_crc_mask(aof_crc32c(0, s->base + ipos, ibytes)));
    uint32_t file_crc = aof_crc_mask(aof_crc32c(0, s->base, ipos + ibytes));
    st32(f + AOF_F_FILE_CRC, file_crc);
    st32(f + AOF_F_VERSION, AOF_FORMAT_VERSION);
    memcpy(f + AOF_F_MAGIC, AOF_FOOTER_MAGIC, 8);
    st32(f + AOF_F_CRC, aof_crc_mask(aof_crc32c(0, f, AOF_F_CRC)));
    AOF_FAILPOINT("seal.index_written");
    /* from here a failure leaves the file sealed or not, durably or not:
     * nobody may append to it again, and reopening the store decides */
    s->seal_broken = 1;
    /* index and footer reach the disk before the file shrinks to its sealed
     * size, so a crash leaves either the unsealed file or the sealed one */
    if ((rc = aof_seg_sync_range(s, ipos, total))) goto out;
    AOF_FAILPOINT("seal.synced");
    if (AOF_IOFAIL(AOF_IO_FTRUNCATE) || ftruncate(s->fd, (off_t)total)) {
        rc = sys_fail(s, "truncating", total);
        goto out;
    }
    AOF_FAILPOINT("seal.truncated");
    if ((rc = file_sync(s, total))) goto out;
    free_index(s);
    s->file_bytes = total;
    set_sealed(s, ipos, ibytes, nkeys, nrec, file_crc);
out:
    free(order);
    pthread_mutex_unlock(&s->mu);
    return rc;
}

int aof_seg_verify(aof_seg *s) {
    if (!s->sealed) return aof_fail(AOF_EINVAL, 0, 0, "verify: segment is not sealed");
    if (aof_crc_mask(aof_crc32c(0, s->base, s->index_pos + s->index_bytes)) != s->file_crc)
        return aof_fail(AOF_ECORRUPT, 0, 0, "%s: file checksum mismatch",
                        s->path ? s->path : "<buffer>");
    /* every record sound and in sequence, and the index agrees with it */
    const unsigned char *positions = s->index + s->key_count * AOF_KEY_ENTRY_BYTES;
    uint64_t p = AOF_HEADER_BYTES, lsn = s->first_lsn, seen = 0;
    while (p < s->index_pos) {
        uint64_t rec_end = 0;
        if (check_record(s, p, s->index_pos, &rec_end) != AOF_STOP_END || rec_end <= p)
            return aof_fail(AOF_ECORRUPT, 0, p, "%s: record at byte %llu is damaged",
                            s->path ? s->path : "<buffer>", (unsigned long long)p);
        const unsigned char *h = s->base + p;
        if (!(ld16(h + AOF_R_FLAGS) & AOF_FLAG_CONTROL)) {
            const unsigned char *e = sealed_entry(s, ld32(h + AOF_R_KEY_ID));
            uint64_t off = ld64(h + AOF_R_OFFSET);
            if (!e || ld64(h + AOF_R_LSN) != lsn || off < ld64(e + AOF_K_FIRST_OFFSET) ||
                off - ld64(e + AOF_K_FIRST_OFFSET) >= ld64(e + AOF_K_COUNT) ||
                ld64(positions + (ld64(e + AOF_K_POS_START) + off -
                                  ld64(e + AOF_K_FIRST_OFFSET)) * 8) != p)
                return aof_fail(AOF_ECORRUPT, 0, p,
                                "%s: record at byte %llu disagrees with the index",
                                s->path ? s->path : "<buffer>", (unsigned long long)p);
            lsn++;
            seen++;
        }
        p = rec_end;
    }
    if (p != s->index_pos || seen != s->record_count ||
        (seen && s->last_lsn != lsn - 1))
        return aof_fail(AOF_ECORRUPT, 0, p, "%s: record count or last LSN disagrees with the footer",
                        s->path ? s->path : "<buffer>");
    return AOF_OK;
}
