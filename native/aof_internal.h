/* aof_internal.h: what segment.c and writer.c share; not part of the API. */
#ifndef AOF_INTERNAL_H
#define AOF_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "aof_format.h"
#include "aoflite.h"

/* Virtual address space reserved for an unsealed segment, so that the file
 * can grow (a transaction larger than segment_bytes) without moving the map
 * that concurrent readers hold pointers into. Only touched pages cost memory. */
#define AOF_RESERVE_BYTES (64ull << 30)

/* An active segment's file starts this large (or at its capacity, if
 * smaller) and doubles whenever an append needs room past its end, up to
 * the capacity: a store holding a few records takes about this much disk,
 * not segment_bytes. Eight growths fill a 64 MiB segment (two the smallest,
 * 1 MiB, so every test that rolls segments grows them too), each one
 * fallocate and, at the next sync, one fdatasync for the new size. */
#define AOF_GROW_FIRST (256ull << 10)

/* Appends prefault the map this far ahead of the write position: a write
 * fault on a preallocated file page costs ~10 us, populating it ahead with
 * MADV_POPULATE_WRITE ~1 us, which is most of the append path's cost. */
#define AOF_POPULATE_WINDOW (2ull << 20)

/* Undo log entries: the key id, with this bit set for a key definition. */
#define AOF_UNDO_KEYDEF 0x80000000u

/* One key's records inside an unsealed segment. */
typedef struct aof_keyidx {
    uint32_t key_id;
    uint64_t first_offset;
    uint64_t count;
    uint64_t cap;
    uint64_t *pos;
    uint64_t def_pos; /* 0 while the key is not defined in this segment */
} aof_keyidx;

struct aof_seg {
    pthread_mutex_t mu; /* guards the in-memory index and the ends below */
    int fd;             /* -1 for a segment checked from a caller's buffer */
    int mode;           /* AOF_OPEN_READ / AOF_OPEN_WRITE */
    int sealed;
    int follow;        /* unsealed, opened read-only: base is a private copy */
    int mem;           /* 0 borrowed, 1 file map, 2 anonymous map */
    char *path;
    unsigned char *base;
    uint64_t map_len;    /* bytes mapped (or reserved) at base */
    uint64_t file_bytes; /* bytes the file has (sealed: exact size; writer: allocated so far) */
    uint64_t capacity;   /* appends roll once records would pass this */
    uint64_t populated;  /* writer: map prefaulted up to here */

    /* header */
    uint64_t store_id, segment_id, first_lsn;
    int64_t created_ms;
    uint32_t version;

    /* records */
    uint64_t write_pos;     /* end of written records, an open transaction included */
    uint64_t committed_end; /* end of the last complete batch */
    uint64_t record_count;  /* committed data records */
    uint64_t last_lsn;      /* committed */
    uint64_t next_lsn;      /* LSN the next data record must carry */
    uint64_t filled;        /* follower: bytes copied into base */
    uint64_t pending;       /* data records past committed_end */

    aof_feed *feed;  /* change generation: bumped around rewrites (writer), checked (follower) */
    int seal_broken; /* a seal failed after writing its index: never append again */

    /* transaction visibility (set by the writer) */
    int tx_active;
    pthread_t tx_owner;

    /* in-memory index (unsealed): open addressing on key id */
    aof_keyidx *keys;
    uint32_t nkeys, keys_cap;
    uint32_t *slots; /* index+1 into keys, 0 = empty */
    uint32_t nslots;
    uint32_t *undo; /* keys touched past committed_end, in order */
    uint64_t nundo, undo_cap;

    /* sealed index */
    const unsigned char *index;
    uint64_t index_pos, index_bytes, key_count;
    uint32_t file_crc;
};

/* little-endian field access */
static inline uint16_t ld16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static inline uint32_t ld32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static inline uint64_t ld64(const unsigned char *p) {
    return (uint64_t)ld32(p) | ((uint64_t)ld32(p + 4) << 32);
}
static inline void st16(unsigned char *p, uint16_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}
static inline void st32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}
static inline void st64(unsigned char *p, uint64_t v) {
    st32(p, (uint32_t)v);
    st32(p + 4, (uint32_t)(v >> 32));
}

extern int aof_fp_armed;
void aof_fp_hit(const char *name);
/* A crash point (listed in failpoint.c) that a test may also pause at. */
#define AOF_FAILPOINT(name)                 \
    do {                                    \
        if (aof_fp_armed) aof_fp_hit(name); \
    } while (0)
/* A point only tests that replay a race pause at (never a crash). */
#define AOF_PAUSE(name) AOF_FAILPOINT(name)

/* Kinds of system call a test can make fail (aof_iofail_arm); names in failpoint.c. */
enum aof_io_site {
    AOF_IO_PWRITE,
    AOF_IO_FALLOCATE,
    AOF_IO_FTRUNCATE,
    AOF_IO_MSYNC,
    AOF_IO_FDATASYNC,
    AOF_IO_DIRSYNC,
    AOF_IO_MMAP,
    AOF_IO_PREAD,
    AOF_IO_NSITES
};
/* Counts a call of kind site; returns the errno it must fail with (errno
 * is set too), or 0 to make the call. */
int aof_io_hit(int site);
#define AOF_IOFAIL(site) (aof_fp_armed && aof_io_hit(site))

/* The shared change generation (feed.c): odd while the writer rewrites
 * bytes past a segment's committed end (a rollback, the cleanup of a failed
 * batch, recovery's truncation), bumped again when done. A follower that
 * sees it move while it copies the uncommitted region starts that region
 * over, so it never stitches bytes from before and after such a rewrite. */
void aof_feed_change(aof_feed *f, int begin);
uint64_t aof_feed_gen(const aof_feed *f);
/* Batch ends (writer, under its mutex): bump the wake word; returns 1 when
 * a follower sleeps, and then the caller calls aof_feed_wake once it has
 * let go of its locks. No system call when nobody sleeps. */
int aof_feed_publish(aof_feed *f);
void aof_feed_wake(aof_feed *f);

int aof_fail(int code, int sys_errno, uint64_t pos, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int64_t aof_now_ms(void);

/* index maintenance, used by the scanner and the writer (caller holds mu) */
aof_keyidx *aof_idx_find(aof_seg *s, uint32_t key_id);
aof_keyidx *aof_idx_define(aof_seg *s, uint32_t key_id, uint64_t first_offset, uint64_t def_pos);
int aof_idx_push(aof_seg *s, aof_keyidx *k, uint64_t pos);
int aof_undo_push(aof_seg *s, uint32_t entry);
/* pops every index entry past committed_end; returns how many data records */
uint64_t aof_idx_undo(aof_seg *s, void (*each)(void *, uint32_t), void *arg);

/* record encoding: header fields and CRC (over the header after the CRC,
 * then the payload, wherever it lies); a whole record into h; a whole
 * record into the map at pos (caller checked room), returning its end */
void aof_encode_header(unsigned char *h, uint32_t key_id, uint16_t flags, uint64_t offset,
                       uint64_t lsn, int64_t ts, const void *payload, uint32_t len);
uint64_t aof_encode_record(unsigned char *h, uint32_t key_id, uint16_t flags, uint64_t offset,
                           uint64_t lsn, int64_t ts, const void *payload, uint32_t len);
uint64_t aof_put_record(aof_seg *s, uint64_t pos, uint32_t key_id, uint16_t flags,
                        uint64_t offset, uint64_t lsn, int64_t ts, const void *payload,
                        uint32_t len);
/* makes the file at least new_bytes long (preallocated), within the
 * reserve: in doubling steps up to the capacity, by half again past it */
int aof_seg_grow(aof_seg *s, uint64_t new_bytes);
int aof_seg_sync_range(aof_seg *s, uint64_t from, uint64_t to);
/* fdatasync: the file's data and its size (which an msync of a range may
 * leave behind) are durable */
int aof_seg_sync_file(aof_seg *s);
/* writes the vectors at pos with pwritev, finishing short writes */
struct iovec;
int aof_seg_pwrite(aof_seg *s, const struct iovec *iov, int iovcnt, uint64_t pos);
/* prefaults the writable map ahead of end (best effort) */
void aof_seg_populate(aof_seg *s, uint64_t end);

#endif
