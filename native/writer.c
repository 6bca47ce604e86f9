/* writer.c: appends to the active segment; owns per-key next offsets, the
 * next LSN, transactions and group commit.
 *
 * One mutex guards the writer; the active segment's own mutex is taken
 * inside it (writer, then segment) whenever its index changes, so readers
 * that take only the segment's mutex see a consistent index. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "aof_internal.h"

typedef struct wkey {
    uint64_t next_offset;
    char *name;
    uint32_t name_len;
} wkey;

struct aof_writer {
    pthread_mutex_t mu;
    pthread_cond_t tx_cv;     /* a transaction ended */
    pthread_cond_t sync_cv;   /* a sync finished */
    pthread_cond_t dirty_cv;  /* flush_bytes reached (background flusher) */
    pthread_cond_t commit_cv; /* a batch committed (tailers) */
    aof_seg *seg;
    uint64_t epoch; /* bumped when the active segment changes */
    uint64_t next_lsn;
    uint64_t committed_lsn; /* last LSN of a complete batch */
    uint64_t durable_lsn;   /* ... that is on stable storage */
    uint64_t max_record, flush_bytes;
    wkey *keys;
    uint32_t nkeys;
    /* transaction */
    int tx_active;
    pthread_t tx_owner;
    uint64_t tx_start_pos, tx_start_lsn;
    /* sync */
    int syncing, dirty_signaled;
    uint64_t dur_pos;  /* bytes of the active segment known durable */
    uint64_t dur_size; /* its file size as of the last sync that covered the size */
    /* tail */
    uint64_t gen;
    int waiters;
    int closed;
    unsigned char *stage; /* records of a large batch, built here and written with pwrite */
    aof_feed *feed;       /* change generation, bumped around rewrites of uncommitted bytes */
    /* failures: a failed sync breaks the writer for good (the kernel may
     * have dropped the pages it could not write, so no later sync can be
     * trusted to cover them); a failed append fails only its transaction */
    int broken;
    aof_error broken_err;
    int tx_failed;
    aof_error tx_err;
};

/* Remembers the failure in last_err (a failed sync) as the reason the
 * writer refuses everything from now on. Caller holds mu. */
static int set_broken(aof_writer *w, int rc) {
    if (!w->broken) {
        aof_last_error(&w->broken_err);
        w->broken = 1;
        pthread_cond_broadcast(&w->tx_cv);
        pthread_cond_broadcast(&w->sync_cv);
        pthread_cond_broadcast(&w->dirty_cv);
        pthread_cond_broadcast(&w->commit_cv);
    }
    return rc;
}

static int broken_fail(aof_writer *w) {
    return aof_fail(AOF_EBROKEN, w->broken_err.sys_errno, w->broken_err.pos,
                    "the writer stopped after a failed sync (%s): close the store and open it "
                    "again (recovery keeps every batch that reached the disk)",
                    w->broken_err.msg);
}

/* Makes [from, to) of s durable, and with it the file's size when the file
 * grew past dur_size, the size the last such sync made durable: an msync
 * writes the pages back but need not write the inode, and a record in
 * grown space would be lost with the size. size is s->file_bytes, taken
 * under the writer's mutex with to; the fdatasync runs once per growth
 * step, not per record. */
static int sync_seg(aof_seg *s, uint64_t from, uint64_t to, uint64_t size, uint64_t dur_size) {
    int rc = aof_seg_sync_range(s, from, to);
    if (!rc && size > dur_size) rc = aof_seg_sync_file(s);
    return rc;
}

/* Zeroes [from, to) of the active segment, bytes past its committed end,
 * and syncs the zeros: kernel writeback may already have put the old
 * bytes on disk, and the next batch reuses their positions, LSNs and
 * offsets, so after a power loss a page of them could otherwise pass for
 * part of that batch. Followers see the change generation move. */
static int zero_uncommitted(aof_writer *w, aof_seg *s, uint64_t from, uint64_t to) {
    if (to <= from) return AOF_OK;
    aof_feed_change(w->feed, 1);
    memset(s->base + from, 0, to - from);
    aof_feed_change(w->feed, 0);
    if (w->broken) return AOF_OK; /* nothing is written again through this writer */
    int rc = aof_seg_sync_range(s, from, to);
    if (w->dur_pos > from) w->dur_pos = from;
    return rc ? set_broken(w, rc) : AOF_OK;
}

/* A batch this large is built in a staging buffer and written with pwrite
 * rather than copied into the map: the kernel then fills page-cache pages
 * it does not have to zero first, and the flusher's writeback of them
 * needs no TLB shootdown of the appending thread's mappings. Smaller
 * batches (a single append) stay a memcpy, with no system call. */
#define AOF_PWRITE_MIN (64u << 10)
#define AOF_STAGE_BYTES (1u << 20)

int aof_writer_new(uint64_t next_lsn, uint64_t max_record_bytes, uint64_t flush_bytes,
                   aof_feed *feed, aof_writer **out) {
    if (!out || next_lsn == 0 || max_record_bytes == 0 || max_record_bytes > AOF_MAX_RECORD_BYTES)
        return aof_fail(AOF_EINVAL, 0, 0, "aof_writer_new: bad argument");
    aof_writer *w = calloc(1, sizeof *w);
    if (!w) return aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory");
    pthread_mutex_init(&w->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->tx_cv, &ca);
    pthread_cond_init(&w->sync_cv, &ca);
    pthread_cond_init(&w->dirty_cv, &ca);
    pthread_cond_init(&w->commit_cv, &ca);
    pthread_condattr_destroy(&ca);
    w->next_lsn = next_lsn;
    w->committed_lsn = w->durable_lsn = next_lsn - 1;
    w->max_record = max_record_bytes;
    w->flush_bytes = flush_bytes ? flush_bytes : 1;
    w->feed = feed;
    *out = w;
    return AOF_OK;
}

void aof_writer_free(aof_writer *w) {
    if (!w) return;
    free(w->stage);
    for (uint32_t i = 0; i < w->nkeys; i++) free(w->keys[i].name);
    free(w->keys);
    pthread_cond_destroy(&w->tx_cv);
    pthread_cond_destroy(&w->sync_cv);
    pthread_cond_destroy(&w->dirty_cv);
    pthread_cond_destroy(&w->commit_cv);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

int aof_writer_set_key(aof_writer *w, uint32_t key_id, const char *name, size_t name_len,
                       uint64_t next_offset) {
    if (key_id == 0 || (key_id & AOF_UNDO_KEYDEF) || name_len == 0 || name_len > AOF_MAX_KEY_BYTES)
        return aof_fail(AOF_EINVAL, 0, 0, "aof_writer_set_key: bad key id %u or name length %zu",
                        key_id, name_len);
    char *copy = malloc(name_len);
    if (!copy) return aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory");
    memcpy(copy, name, name_len);
    pthread_mutex_lock(&w->mu);
    if (key_id >= w->nkeys) {
        uint32_t n = w->nkeys ? w->nkeys : 64;
        while (n <= key_id) n *= 2;
        wkey *keys = realloc(w->keys, n * sizeof *keys);
        if (!keys) {
            pthread_mutex_unlock(&w->mu);
            free(copy);
            return aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory");
        }
        memset(keys + w->nkeys, 0, (n - w->nkeys) * sizeof *keys);
        w->keys = keys;
        w->nkeys = n;
    }
    free(w->keys[key_id].name);
    w->keys[key_id].name = copy;
    w->keys[key_id].name_len = (uint32_t)name_len;
    w->keys[key_id].next_offset = next_offset;
    pthread_mutex_unlock(&w->mu);
    return AOF_OK;
}

int aof_writer_attach(aof_writer *w, aof_seg *seg) {
    if (!seg || seg->mode != AOF_OPEN_WRITE || seg->sealed)
        return aof_fail(AOF_EINVAL, 0, 0, "attach: segment is not open for writing");
    if (seg->seal_broken)
        return aof_fail(AOF_EINVAL, 0, 0,
                        "attach: %s: a seal of it failed midway, so nothing may be appended to it "
                        "(reopen the store)", seg->path);
    pthread_mutex_lock(&w->mu);
    int rc = AOF_OK;
    if (w->broken) rc = broken_fail(w);
    else if (w->closed) rc = aof_fail(AOF_ECLOSED, 0, 0, "attach: writer is closed");
    else if (w->seg) rc = aof_fail(AOF_EINVAL, 0, 0, "attach: a segment is already active");
    else if (seg->write_pos == AOF_HEADER_BYTES && seg->first_lsn != w->next_lsn)
        rc = aof_fail(AOF_EINVAL, 0, 0, "attach: empty segment starts at LSN %llu, writer at %llu",
                      (unsigned long long)seg->first_lsn, (unsigned long long)w->next_lsn);
    else if (seg->write_pos != AOF_HEADER_BYTES && seg->last_lsn + 1 != w->next_lsn)
        rc = aof_fail(AOF_EINVAL, 0, 0, "attach: segment ends at LSN %llu, writer at %llu",
                      (unsigned long long)seg->last_lsn, (unsigned long long)w->next_lsn);
    if (!rc) {
        w->seg = seg;
        w->epoch++;
        w->dur_pos = seg->write_pos; /* opened or created segments are synced, */
        w->dur_size = seg->file_bytes; /* their size included */
        w->gen++;
        if (w->waiters) pthread_cond_broadcast(&w->commit_cv);
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}

/* Waits out another thread's transaction; returns with mu held and an
 * active segment, or an error with mu released. */
static int enter(aof_writer *w) {
    pthread_mutex_lock(&w->mu);
    while (w->tx_active && !pthread_equal(w->tx_owner, pthread_self()) && !w->closed && !w->broken)
        pthread_cond_wait(&w->tx_cv, &w->mu);
    if (w->broken) {
        int rc = broken_fail(w);
        pthread_mutex_unlock(&w->mu);
        return rc;
    }
    if (w->closed) {
        pthread_mutex_unlock(&w->mu);
        return aof_fail(AOF_ECLOSED, 0, 0, "writer is closed");
    }
    if (w->tx_active && w->tx_failed) {
        pthread_mutex_unlock(&w->mu);
        return aof_fail(AOF_ETXN, w->tx_err.sys_errno, w->tx_err.pos,
                        "the transaction already failed (%s); it rolls back when it ends",
                        w->tx_err.msg);
    }
    if (!w->seg) {
        pthread_mutex_unlock(&w->mu);
        return AOF_ENOSEG;
    }
    return AOF_OK;
}

/* Makes room for need bytes at the write position. A segment rolls only
 * between batches; inside a transaction, or for a batch that would not fit
 * even an empty segment, the segment grows instead. */
static int room(aof_writer *w, aof_seg *s, uint64_t need, int via_map) {
    uint64_t end = s->write_pos + need;
    if (end > s->capacity || end > s->file_bytes) {
        if (end > s->capacity && !w->tx_active && s->write_pos > AOF_HEADER_BYTES) return AOF_EFULL;
        int rc = aof_seg_grow(s, end);
        if (rc) return rc;
    }
    if (via_map && end > s->populated) aof_seg_populate(s, end);
    return AOF_OK;
}

/* Where a batch's records go: straight into the map, or through the
 * staging buffer to pwrite. */
typedef struct sink {
    aof_seg *s;
    unsigned char *stage; /* NULL: write into the map */
    size_t len;           /* bytes staged */
    uint64_t start;       /* file position of stage[0] */
} sink;

static int sink_flush(sink *k) {
    if (!k->len) return AOF_OK;
    struct iovec v = {k->stage, k->len};
    k->len = 0;
    return aof_seg_pwrite(k->s, &v, 1, k->start);
}

/* Puts one record at pos. */
static int sink_put(sink *k, uint64_t pos, uint32_t key_id, uint16_t flags, uint64_t offset,
                    uint64_t lsn, int64_t ts, const char *payload, uint32_t len) {
    uint64_t size = AOF_RECORD_HEADER_BYTES + (uint64_t)len;
    int rc;
    if (!k->stage) {
        aof_put_record(k->s, pos, key_id, flags, offset, lsn, ts, payload, len);
        return AOF_OK;
    }
    if (k->len && k->len + size > AOF_STAGE_BYTES && (rc = sink_flush(k))) return rc;
    if (size > AOF_STAGE_BYTES) {
        /* larger than the stage: header from here, payload from the caller */
        unsigned char h[AOF_RECORD_HEADER_BYTES];
        aof_encode_header(h, key_id, flags, offset, lsn, ts, payload, len);
        struct iovec v[2] = {{h, sizeof h}, {(void *)payload, len}};
        return aof_seg_pwrite(k->s, v, 2, pos);
    }
    if (!k->len) k->start = pos;
    k->len += aof_encode_record(k->stage + k->len, key_id, flags, offset, lsn, ts, payload, len);
    return AOF_OK;
}

/* Returns 1 when a follower sleeps on the feed: the caller wakes it with
 * aof_feed_wake after unlocking. */
static int batch_done(aof_writer *w, aof_seg *s, uint64_t data_records) {
    s->committed_end = s->write_pos;
    s->record_count += data_records;
    s->last_lsn = w->next_lsn - 1;
    s->next_lsn = w->next_lsn;
    s->nundo = 0;
    s->pending = 0;
    w->committed_lsn = w->next_lsn - 1;
    w->gen++;
    if (w->waiters) pthread_cond_broadcast(&w->commit_cv);
    return aof_feed_publish(w->feed);
}

static void maybe_signal_flush(aof_writer *w, aof_seg *s) {
    if (!w->dirty_signaled && s->write_pos - w->dur_pos >= w->flush_bytes) {
        w->dirty_signaled = 1;
        pthread_cond_signal(&w->dirty_cv);
    }
}

/* Writes the key's definition into the segment if this is its first record
 * there. Caller holds both mutexes and has made room. */
static int define_in_segment(aof_writer *w, aof_seg *s, uint32_t key_id, aof_keyidx **out) {
    aof_keyidx *k = aof_idx_find(s, key_id);
    if (k && k->def_pos) {
        *out = k;
        return AOF_OK;
    }
    wkey *wk = &w->keys[key_id];
    uint64_t pos = s->write_pos;
    if (!(k = aof_idx_define(s, key_id, wk->next_offset, pos))) return AOF_ENOMEM;
    if (w->tx_active && aof_undo_push(s, key_id | AOF_UNDO_KEYDEF)) {
        k->def_pos = 0;
        return AOF_ENOMEM;
    }
    s->write_pos = aof_put_record(s, pos, key_id, AOF_FLAG_CONTROL | AOF_FLAG_KEYDEF,
                                  wk->next_offset, w->next_lsn, aof_now_ms(), wk->name,
                                  wk->name_len);
    *out = k;
    return AOF_OK;
}

static uint64_t def_bytes(aof_writer *w, aof_seg *s, uint32_t key_id) {
    aof_keyidx *k = aof_idx_find(s, key_id);
    return k && k->def_pos ? 0 : AOF_RECORD_HEADER_BYTES + w->keys[key_id].name_len;
}

int64_t aof_writer_append_many(aof_writer *w, uint32_t key_id, const char *buf,
                               const uint64_t *lens, size_t n, int64_t timestamp_ms) {
    if (!w) return aof_fail(AOF_EREADONLY, 0, 0, "no writer");
    if (n == 0) return aof_fail(AOF_EINVAL, 0, 0, "append_many: no records");
    uint64_t payload = 0;
    for (size_t i = 0; i < n; i++) {
        if (lens[i] > w->max_record)
            return aof_fail(AOF_ETOOBIG, 0, i, "record %zu is %llu bytes, above %llu", i,
                            (unsigned long long)lens[i], (unsigned long long)w->max_record);
        payload += lens[i];
    }
    int rc = enter(w), wake = 0;
    if (rc) return rc;
    if (key_id == 0 || key_id >= w->nkeys || !w->keys[key_id].name) {
        pthread_mutex_unlock(&w->mu);
        return aof_fail(AOF_ENOKEY, 0, 0, "key id %u is not registered", key_id);
    }
    aof_seg *s = w->seg;
    pthread_mutex_lock(&s->mu);
    if (s->sealed) {
        pthread_mutex_unlock(&s->mu);
        pthread_mutex_unlock(&w->mu);
        return aof_fail(AOF_ESEALED, 0, 0, "%s: segment is sealed (detach it before sealing)", s->path);
    }
    uint64_t need = def_bytes(w, s, key_id) + n * AOF_RECORD_HEADER_BYTES + payload;
    sink out = {s, NULL, 0, 0};
    if (need >= AOF_PWRITE_MIN && !w->stage) w->stage = malloc(AOF_STAGE_BYTES);
    if (need >= AOF_PWRITE_MIN && w->stage) out.stage = w->stage;
    /* what this call changes, so a failure midway can put all of it back */
    uint64_t start_pos = s->write_pos, start_lsn = w->next_lsn, start_undo = s->nundo;
    wkey *wk = &w->keys[key_id];
    uint64_t first = wk->next_offset, pos = start_pos;
    aof_keyidx *k = NULL;
    if ((rc = room(w, s, need, !out.stage)) == AOF_EFULL) goto out; /* roll and retry: not a failure */
    if (rc || (rc = define_in_segment(w, s, key_id, &k))) goto undo;
    pos = s->write_pos;
    int64_t ts = timestamp_ms < 0 ? aof_now_ms() : timestamp_ms;
    const char *p = buf;
    for (size_t i = 0; i < n; i++) {
        uint16_t flags = (i + 1 == n && !w->tx_active) ? AOF_FLAG_BATCH_END : 0;
        if ((rc = aof_idx_push(s, k, pos))) break;
        if (w->tx_active && (rc = aof_undo_push(s, key_id))) {
            k->count--;
            break;
        }
        rc = sink_put(&out, pos, key_id, flags, wk->next_offset++, w->next_lsn++, ts, p,
                      (uint32_t)lens[i]);
        /* past the record even if it failed, so the cleanup zeroes any of
         * it a short write left behind */
        pos += AOF_RECORD_HEADER_BYTES + lens[i];
        p += lens[i];
        if (rc) break;
        if (n > 1 && i == n / 2 && aof_fp_armed) {
            /* what a crash here leaves: half a batch on its way to the disk */
            if ((rc = sink_flush(&out))) break;
            s->write_pos = pos;
            AOF_FAILPOINT("append_many.half");
        }
    }
    if (!rc) rc = sink_flush(&out);
    s->write_pos = pos;
    uint64_t filled = pos & ~((uint64_t)sysconf(_SC_PAGESIZE) - 1);
    if (out.stage && filled > s->populated) {
        /* pwrite filled these pages: prefaulting them again later would
         * cost a fault per page for nothing */
        s->populated = filled;
    }
    if (rc) goto undo;
    if (w->tx_active) s->pending += n;
    else wake = batch_done(w, s, n);
    maybe_signal_flush(w, s);
    goto out;
undo:
    /* a failed write or allocation midway: take back everything this call
     * did, so the store is as before it; inside a transaction the failure
     * also dooms the transaction, which rolls back when it ends */
    if (k) {
        uint64_t done = wk->next_offset - first;
        k->count -= k->count < done ? k->count : done;
        if (k->def_pos >= start_pos) k->def_pos = 0;
    }
    s->nundo = start_undo;
    wk->next_offset = first;
    w->next_lsn = start_lsn;
    if (w->tx_active && !w->tx_failed) {
        aof_last_error(&w->tx_err);
        w->tx_failed = 1;
    }
    {
        aof_error why;
        aof_last_error(&why);
        zero_uncommitted(w, s, start_pos, pos);
        s->write_pos = start_pos;
        aof_fail(why.code, why.sys_errno, why.pos, "%s", why.msg);
    }
out:
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&w->mu);
    if (wake) aof_feed_wake(w->feed);
    return rc ? rc : (int64_t)first;
}

int64_t aof_writer_append(aof_writer *w, uint32_t key_id, const char *value, size_t len,
                          int64_t timestamp_ms) {
    uint64_t l = len;
    return aof_writer_append_many(w, key_id, value, &l, 1, timestamp_ms);
}

int aof_writer_begin(aof_writer *w) {
    if (!w) return aof_fail(AOF_EREADONLY, 0, 0, "no writer");
    int rc = enter(w);
    if (rc) return rc;
    if (w->tx_active) {
        pthread_mutex_unlock(&w->mu);
        return aof_fail(AOF_ETXN, 0, 0, "a transaction is already open on this thread");
    }
    aof_seg *s = w->seg;
    /* a transaction may grow the segment past capacity, never roll it; so
     * the next one starts in a fresh segment, bounding the overshoot */
    if (s->write_pos >= s->capacity && s->write_pos > AOF_HEADER_BYTES) {
        pthread_mutex_unlock(&w->mu);
        return AOF_EFULL;
    }
    pthread_mutex_lock(&s->mu);
    w->tx_active = s->tx_active = 1;
    w->tx_failed = 0;
    w->tx_owner = s->tx_owner = pthread_self();
    w->tx_start_pos = s->write_pos;
    w->tx_start_lsn = w->next_lsn;
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&w->mu);
    return AOF_OK;
}

static void undo_offset(void *arg, uint32_t key_id) {
    aof_writer *w = arg;
    w->keys[key_id].next_offset--;
}

int aof_writer_end(aof_writer *w, int commit) {
    if (!w) return aof_fail(AOF_EREADONLY, 0, 0, "no writer");
    pthread_mutex_lock(&w->mu);
    if (!w->tx_active || !pthread_equal(w->tx_owner, pthread_self())) {
        pthread_mutex_unlock(&w->mu);
        return aof_fail(AOF_ETXN, 0, 0, "no transaction is open on this thread");
    }
    aof_seg *s = w->seg;
    int rc = AOF_OK, wake = 0;
    pthread_mutex_lock(&s->mu);
    if (commit && w->tx_failed) {
        rc = aof_fail(w->tx_err.code, w->tx_err.sys_errno, w->tx_err.pos,
                      "the transaction was rolled back, because an append inside it failed: %s",
                      w->tx_err.msg);
    } else if (commit && w->broken) {
        rc = broken_fail(w);
    } else if (commit && s->write_pos > w->tx_start_pos) {
        /* the commit record is what makes the whole run one batch */
        AOF_FAILPOINT("tx.before_commit_record");
        if (!(rc = room(w, s, AOF_RECORD_HEADER_BYTES, 1))) {
            s->write_pos = aof_put_record(s, s->write_pos, 0,
                                          AOF_FLAG_CONTROL | AOF_FLAG_COMMIT | AOF_FLAG_BATCH_END,
                                          0, w->next_lsn, aof_now_ms(), NULL, 0);
            wake = batch_done(w, s, s->pending);
            maybe_signal_flush(w, s);
        }
    }
    if (!commit || rc) {
        /* roll back: forget the index entries, zero the bytes and sync the
         * zeros (a flush may have put the bytes on disk) */
        while (w->syncing) {
            pthread_mutex_unlock(&s->mu);
            pthread_cond_wait(&w->sync_cv, &w->mu);
            pthread_mutex_lock(&s->mu);
        }
        aof_idx_undo(s, undo_offset, w);
        uint64_t from = w->tx_start_pos, to = s->write_pos;
        aof_error why;
        aof_last_error(&why);
        int zrc = zero_uncommitted(w, s, from, to);
        s->write_pos = s->committed_end = from;
        w->next_lsn = s->next_lsn = w->tx_start_lsn;
        if (rc) aof_fail(why.code, why.sys_errno, why.pos, "%s", why.msg);
        else rc = zrc;
    }
    w->tx_active = s->tx_active = 0;
    w->tx_failed = 0;
    pthread_mutex_unlock(&s->mu);
    pthread_cond_broadcast(&w->tx_cv);
    pthread_mutex_unlock(&w->mu);
    if (wake) aof_feed_wake(w->feed);
    return rc;
}

/* Bytes the calling thread's sync must cover: another thread's open
 * transaction is not its business, and a rollback may take it back (a
 * target that included it could never be reached). */
static uint64_t sync_target(aof_writer *w) {
    aof_seg *s = w->seg;
    if (!s) return 0;
    return w->tx_active && pthread_equal(w->tx_owner, pthread_self()) ? s->write_pos
                                                                         : s->committed_end;
}

int aof_writer_sync(aof_writer *w, uint64_t *durable_lsn) {
    if (!w) return aof_fail(AOF_EREADONLY, 0, 0, "no writer");
    pthread_mutex_lock(&w->mu);
    uint64_t epoch = w->epoch, target = sync_target(w);
    int rc = AOF_OK;
    if (aof_fp_armed) {
        pthread_mutex_unlock(&w->mu);
        AOF_PAUSE("sync.after_target");
        pthread_mutex_lock(&w->mu);
    }
    /* the loop ends: the write position never drops below target (only
     * this thread's own transaction can go back past a committed end) */
    while (!w->broken && w->seg && w->epoch == epoch && w->dur_pos < target) {
        if (w->syncing) {
            pthread_cond_wait(&w->sync_cv, &w->mu);
            continue;
        }
        /* lead one sync for everyone waiting: group commit */
        aof_seg *s = w->seg;
        uint64_t from = w->dur_pos, to = s->write_pos, lsn = w->committed_lsn;
        uint64_t size = s->file_bytes, dur_size = w->dur_size;
        w->syncing = 1;
        pthread_mutex_unlock(&w->mu);
        AOF_FAILPOINT("sync.before_msync");
        rc = sync_seg(s, from, to, size, dur_size);
        pthread_mutex_lock(&w->mu);
        w->syncing = 0;
        if (!rc && size > dur_size) {
            /* the fdatasync also wrote back the pages prefaulted ahead of
             * to, which leaves them write-protected: prefault them again
             * in one call rather than take a write fault on each */
            uint64_t back = to & ~((uint64_t)sysconf(_SC_PAGESIZE) - 1);
            pthread_mutex_lock(&s->mu);
            if (s->populated > back) s->populated = back;
            pthread_mutex_unlock(&s->mu);
        }
        if (!rc) {
            if (to > w->dur_pos) w->dur_pos = to;
            if (size > w->dur_size) w->dur_size = size;
            if (lsn > w->durable_lsn) w->durable_lsn = lsn;
            w->dirty_signaled = 0;
        }
        pthread_cond_broadcast(&w->sync_cv);
        if (rc) {
            set_broken(w, rc);
            break;
        }
    }
    if (!rc && w->broken) rc = broken_fail(w);
    if (!rc && (!w->seg || w->dur_pos >= w->seg->committed_end)) w->durable_lsn = w->committed_lsn;
    if (durable_lsn) *durable_lsn = w->durable_lsn;
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int aof_writer_detach(aof_writer *w) {
    pthread_mutex_lock(&w->mu);
    while (w->syncing) pthread_cond_wait(&w->sync_cv, &w->mu);
    aof_seg *s = w->seg;
    int rc = AOF_OK;
    if (!s) goto out;
    if (w->broken) {
        rc = broken_fail(w);
        goto out;
    }
    if (w->tx_active) {
        rc = aof_fail(AOF_ETXN, 0, 0, "cannot roll the segment inside a transaction");
        goto out;
    }
    if ((rc = sync_seg(s, w->dur_pos, s->write_pos, s->file_bytes, w->dur_size))) {
        set_broken(w, rc);
        goto out;
    }
    w->seg = NULL;
    w->epoch++;
    w->dur_pos = w->dur_size = 0;
    w->durable_lsn = w->committed_lsn;
    w->dirty_signaled = 0;
    w->gen++;
    pthread_cond_broadcast(&w->sync_cv);
    if (w->waiters) pthread_cond_broadcast(&w->commit_cv);
out:
    pthread_mutex_unlock(&w->mu);
    return rc;
}

static void deadline_after(struct timespec *ts, int timeout_ms) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static uint64_t unsynced(aof_writer *w) { return w->seg ? w->seg->write_pos - w->dur_pos : 0; }

int aof_writer_wait_dirty(aof_writer *w, int timeout_ms) {
    struct timespec dl;
    deadline_after(&dl, timeout_ms < 0 ? 0 : timeout_ms);
    pthread_mutex_lock(&w->mu);
    int timed_out = 0;
    while (!w->closed && !w->broken && !timed_out && unsynced(w) < w->flush_bytes)
        timed_out = pthread_cond_timedwait(&w->dirty_cv, &w->mu, &dl) == ETIMEDOUT;
    int rc = w->closed ? AOF_ECLOSED : w->broken ? AOF_EBROKEN : unsynced(w) ? AOF_OK : AOF_ETIMEDOUT;
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int aof_writer_wait_commit(aof_writer *w, uint64_t gen, int timeout_ms, uint64_t *now) {
    struct timespec dl;
    deadline_after(&dl, timeout_ms < 0 ? 0 : timeout_ms);
    pthread_mutex_lock(&w->mu);
    int timed_out = 0;
    w->waiters++;
    while (!w->closed && !timed_out && w->gen == gen)
        timed_out = pthread_cond_timedwait(&w->commit_cv, &w->mu, &dl) == ETIMEDOUT;
    w->waiters--;
    *now = w->gen;
    int rc = w->closed ? AOF_ECLOSED : w->gen != gen ? AOF_OK : AOF_ETIMEDOUT;
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int aof_writer_next_offset(aof_writer *w, uint32_t key_id, uint64_t *next) {
    pthread_mutex_lock(&w->mu);
    if (key_id == 0 || key_id >= w->nkeys || !w->keys[key_id].name) {
        pthread_mutex_unlock(&w->mu);
        return AOF_ENOKEY;
    }
    uint64_t n = w->keys[key_id].next_offset;
    if (w->tx_active && !pthread_equal(w->tx_owner, pthread_self()) && w->seg) {
        /* hide another thread's open transaction */
        aof_seg *s = w->seg;
        pthread_mutex_lock(&s->mu);
        for (uint64_t i = 0; i < s->nundo; i++) n -= s->undo[i] == key_id;
        pthread_mutex_unlock(&s->mu);
    }
    *next = n;
    pthread_mutex_unlock(&w->mu);
    return AOF_OK;
}

uint64_t aof_writer_next_lsn(aof_writer *w) {
    pthread_mutex_lock(&w->mu);
    uint64_t n = w->next_lsn;
    pthread_mutex_unlock(&w->mu);
    return n;
}

uint64_t aof_writer_unsynced_bytes(aof_writer *w) {
    pthread_mutex_lock(&w->mu);
    uint64_t n = unsynced(w);
    pthread_mutex_unlock(&w->mu);
    return n;
}

int aof_writer_close(aof_writer *w) {
    pthread_mutex_lock(&w->mu);
    while (w->syncing) pthread_cond_wait(&w->sync_cv, &w->mu);
    int rc = AOF_OK;
    if (w->tx_active) {
        pthread_mutex_unlock(&w->mu);
        return aof_fail(AOF_ETXN, 0, 0, "cannot close inside a transaction");
    }
    if (w->broken) rc = broken_fail(w);
    else if (w->seg && !w->closed)
        rc = sync_seg(w->seg, w->dur_pos, w->seg->write_pos, w->seg->file_bytes, w->dur_size);
    if (rc && !w->broken) set_broken(w, rc);
    if (!rc) {
        if (w->seg) {
            w->dur_pos = w->seg->write_pos;
            w->dur_size = w->seg->file_bytes;
        }
        w->durable_lsn = w->committed_lsn;
    }
    /* closed even when the sync failed: the caller releases the store's
     * lock next, and no writer may outlive it */
    w->closed = 1;
    pthread_cond_broadcast(&w->tx_cv);
    pthread_cond_broadcast(&w->dirty_cv);
    pthread_cond_broadcast(&w->commit_cv);
    pthread_mutex_unlock(&w->mu);
    return rc;
}

int aof_writer_broken(aof_writer *w) {
    pthread_mutex_lock(&w->mu);
    int broken = w->broken;
    if (broken) broken_fail(w);
    pthread_mutex_unlock(&w->mu);
    return broken;
}
