/* aoflite.h: the segment engine's whole C API.
 *
 * Two objects: an aof_seg is one segment file (writable while active, a
 * memory map once sealed, a pread-fed copy when followed by a read-only
 * handle); an aof_writer appends to the active segment and owns the
 * store-wide sequence state (per-key next offsets, next LSN, transactions,
 * group commit). Every function returns an int status (AOF_OK or a negative
 * AOF_E* code) unless it says otherwise; details of the last failure on the
 * calling thread (errno, file position, text) come from aof_last_error().
 * Nothing returned ever has to be freed by the caller except through
 * aof_seg_free / aof_writer_free.
 */
#ifndef AOFLITE_H
#define AOFLITE_H

#include <stddef.h>
#include <stdint.h>

#define AOF_OK 0
#define AOF_EIO (-1)        /* a system call failed: see aof_last_error().sys_errno */
#define AOF_ECORRUPT (-2)   /* bytes on disk are not what was written */
#define AOF_EFORMAT (-3)    /* not an aoflite segment */
#define AOF_EVERSION (-4)   /* segment written by a newer format version */
#define AOF_EFULL (-5)      /* the active segment has no room: roll and retry */
#define AOF_ENOTFOUND (-6)  /* no such key or offset in this segment */
#define AOF_EINVAL (-7)     /* bad argument */
#define AOF_ENOMEM (-8)
#define AOF_ESEALED (-9)    /* segment is sealed: no more appends */
#define AOF_ETOOBIG (-10)   /* record or batch larger than allowed */
#define AOF_ENOSEG (-11)    /* writer has no active segment: roll in progress */
#define AOF_ENOKEY (-12)    /* key id not registered with the writer */
#define AOF_ECLOSED (-13)   /* writer closed */
#define AOF_ETXN (-14)      /* transaction misuse (nested, not owner, none open) */
#define AOF_ETIMEDOUT (-15)
#define AOF_EREADONLY (-16) /* no writer (read-only handle) */
#define AOF_EBROKEN (-17)   /* a sync failed earlier: the writer refuses every call (reopen the store) */

/* Why a scan of records stopped (aof_scan_report.reason). */
#define AOF_STOP_END 0        /* zero-filled space or end of data: a clean end */
#define AOF_STOP_TORN 1       /* header or payload cut off by the end of the file */
#define AOF_STOP_CHECKSUM 2   /* CRC mismatch */
#define AOF_STOP_BADHEADER 3  /* impossible length, flags or reserved bits */
#define AOF_STOP_SEQUENCE 4   /* LSN, offset or key definition out of order */
#define AOF_STOP_SEALED 5     /* the segment was sealed under a follower */

/* Segment open modes. */
#define AOF_OPEN_READ 0  /* sealed: map it; unsealed: follow it */
#define AOF_OPEN_WRITE 1 /* unsealed: recover the tail and make it appendable */

/* Thread-local detail of the last failure. */
typedef struct aof_error {
    int code;
    int sys_errno;
    uint64_t pos;     /* byte position in the file, when it applies */
    char msg[240];
} aof_error;

/* What a record scan (recovery, follow) found. */
typedef struct aof_scan_report {
    uint64_t valid_end;       /* end of the last complete batch */
    uint64_t stop_pos;        /* where the scan stopped */
    uint64_t dropped_bytes;   /* bytes after valid_end that the scan looked at and rejected */
    uint64_t dropped_records; /* whole records dropped because their batch never ended */
    int reason;               /* AOF_STOP_* */
} aof_scan_report;

typedef struct aof_seg_info {
    uint64_t store_id;
    uint64_t segment_id;
    uint64_t first_lsn;
    int64_t created_ms;
    uint32_t version;
    int sealed;
    int mode;                 /* AOF_OPEN_READ / AOF_OPEN_WRITE */
    uint64_t records_end;     /* end of the committed records (sealed: index position) */
    uint64_t file_bytes;      /* sealed: exact file size; else bytes backed on disk */
    uint64_t record_count;    /* committed data records */
    uint64_t last_lsn;        /* 0 when the segment holds no data record */
    uint64_t key_count;
    uint32_t file_crc;        /* sealed only: masked CRC32C of everything before the footer */
    uint64_t prefaulted;      /* writer: the map is prefaulted up to here */
} aof_seg_info;

/* Reads return records as columns, so Python can turn a whole batch into
 * lists with one call per column: out is a uint64 array of AOF_COLS * cap
 * values, column c of record i at out[c * cap + i]. The value is the bytes
 * [AOF_COL_VSTART, AOF_COL_VEND) of the segment's memory (aof_seg_memory). */
#define AOF_COLS 7
#define AOF_COL_OFFSET 0
#define AOF_COL_LSN 1
#define AOF_COL_TIMESTAMP 2
#define AOF_COL_KEY_ID 3
#define AOF_COL_VSTART 4
#define AOF_COL_VEND 5
#define AOF_COL_BATCH_END 6 /* 1 on the last record of its batch (append, append_many, transaction) */

/* One key's range inside a segment. */
typedef struct aof_key_range {
    uint32_t key_id;
    uint64_t first_offset;
    uint64_t count;
} aof_key_range;

typedef struct aof_seg aof_seg;
typedef struct aof_writer aof_writer;
typedef struct aof_feed aof_feed;

/* --- errors and checksums --- */
const char *aof_strerror(int code);
void aof_last_error(aof_error *out);
uint32_t aof_crc32c(uint32_t crc, const void *data, size_t len);
/* 1 when the CPU instruction is in use. force_software != 0 switches to the
 * table implementation (also set by AOFLITE_CRC32C=software at load). */
int aof_crc32c_hardware(void);
void aof_crc32c_force_software(int force_software);

/* --- failpoints (crash tests) ---
 * Named crash points at each step that moves data or metadata. None is
 * armed unless aof_failpoint_arm is called (the Python layer does so from
 * AOFLITE_FAILPOINT in a test's child process); unarmed, each costs one
 * predictable branch. Armed, the skip+1-th hit of the named point ends the
 * process: action 0 with _exit(AOF_FAILPOINT_EXIT), 1 with SIGKILL. */
#define AOF_FAILPOINT_EXIT 77
void aof_failpoint_arm(const char *name, int skip, int action);
/* The C failpoints' names, separated by spaces. */
const char *aof_failpoint_names(void);
/* Power-loss tests: log every completed sync to path (NULL stops). */
int aof_synclog_open(const char *path);
/* I/O-error tests: from now on count every system call of each kind
 * (names: aof_iofail_names, separated by spaces), and make the nth call
 * of kind name (1-based, counted from this call) and the times-1 after it
 * (times < 0: every one after it) fail with errno err instead of running.
 * name NULL or "" only counts. */
int aof_iofail_arm(const char *name, long nth, long times, int err);
void aof_iofail_reset(void);
unsigned long aof_iofail_count(const char *name);
const char *aof_iofail_names(void);
/* Race tests: a thread reaching the named point (any failpoint name, or a
 * pause-only point listed by aof_pause_names) blocks until released.
 * aof_pause_wait returns AOF_OK once some thread is blocked there, else
 * AOF_ETIMEDOUT; release NULL releases every point. */
int aof_pause_arm(const char *name);
int aof_pause_wait(const char *name, int timeout_ms);
void aof_pause_release(const char *name);
const char *aof_pause_names(void);

/* --- the feed: a small file shared by the writer and followers --- */
/* Map the store's feed file, creating it when missing; writable is the
 * writer (it owns the change generation). AOF_ENOTFOUND when it is missing
 * and cannot be created (a follower without write access). */
int aof_feed_open(const char *path, int writable, aof_feed **out);
void aof_feed_free(aof_feed *f);
/* The change generation (see aof_internal.h), for tests. */
uint64_t aof_feed_generation(aof_feed *f);
/* Followers: sleep until the feed's wake word, which the writer bumps
 * whenever a batch becomes visible (an append, an append_many, a
 * transaction's commit; never a rollback), differs from seen, or for
 * timeout_ms at most. Take seen from *now before looking for records, so
 * a batch that lands in between ends the sleep at once. Returns AOF_OK
 * when the word moved, AOF_ETIMEDOUT when it did not (timeout_ms <= 0
 * only reads it), AOF_EREADONLY without sleeping when this process may
 * not write the feed file (then poll). *now gets the word. Linux futexes:
 * the writer makes a system call only when someone sleeps. */
int aof_feed_wait(aof_feed *f, uint32_t seen, int timeout_ms, uint32_t *now);
/* Move the wake word and wake every sleeper (a closing handle ends its
 * own sleeping tail loops this way; others just look again). */
int aof_feed_interrupt(aof_feed *f);
/* 1 while some follower has said it sleeps and no batch has woken it
 * since (a hint: a follower that died asleep leaves it set), for tests. */
int aof_feed_sleeping(aof_feed *f);

/* --- segments --- */
/* Create a new segment file (fails if it exists), header written and
 * synced. The file is preallocated to its first growth step (256 KiB, or
 * capacity if smaller) and doubles as appends need room, up to capacity. */
int aof_seg_create(const char *path, uint64_t store_id, uint64_t segment_id,
                   uint64_t first_lsn, uint64_t capacity, aof_seg **out);
/* Open an existing segment. AOF_OPEN_WRITE recovers an unsealed tail (the
 * report says what was dropped) and truncates it to the last complete batch;
 * a sealed segment always opens read-only. feed (may be NULL) is the
 * store's: a writer bumps its generation around the truncation, a follower
 * checks it on every refresh; it must outlive the segment. */
int aof_seg_open(const char *path, int mode, uint64_t capacity, aof_feed *feed, aof_seg **out,
                 aof_scan_report *report);
/* Validate a whole segment held in memory (no file): parse, scan, check the
 * index when sealed. For fuzzing and for verifying downloaded copies. */
int aof_seg_check_buffer(const char *buf, size_t len, aof_seg_info *info,
                         aof_scan_report *report);
void aof_seg_free(aof_seg *seg);
int aof_seg_info_get(aof_seg *seg, aof_seg_info *out);
/* Follower: read what the writer appended since the last refresh. Returns
 * AOF_OK with report->reason == AOF_STOP_SEALED when the file was sealed
 * before this refresh began: the segment then holds every record it ever
 * will, all of them taken in. */
int aof_seg_refresh(aof_seg *seg, aof_scan_report *report);
/* Write the index and footer, sync, and trim the file to its exact size. */
int aof_seg_seal(aof_seg *seg);
/* Recompute the file CRC of a sealed segment and check every record. */
int aof_seg_verify(aof_seg *seg);
/* Keys present in the segment: fills up to cap ranges, sets *n to the total. */
int aof_seg_keys(aof_seg *seg, aof_key_range *out, size_t cap, size_t *n);
int aof_seg_key_range(aof_seg *seg, uint32_t key_id, aof_key_range *out);
/* Copies the key's name as defined in this segment into buf (cap bytes). */
int aof_seg_key_name(aof_seg *seg, uint32_t key_id, char *buf, size_t cap, size_t *len);
/* Read up to cap consecutive records of key_id from offset on (each CRC
 * checked); *n gets how many. AOF_ENOTFOUND when offset is not here. */
int aof_seg_read_range(aof_seg *seg, uint32_t key_id, uint64_t offset, uint64_t *out,
                       size_t cap, size_t *n);
/* Data records in file order from *pos (0 = start) with lsn >= min_lsn; *pos
 * is advanced past what was returned. */
int aof_seg_scan(aof_seg *seg, uint64_t *pos, uint64_t min_lsn, uint64_t *out, size_t cap,
                 size_t *n);
/* The memory values point into: valid while the segment is alive. len is
 * the mapped length (for a sealed segment, the file's exact size). */
int aof_seg_memory(aof_seg *seg, const char **base, uint64_t *len);

/* --- the writer --- */
/* feed (may be NULL; must outlive the writer) gets a generation bump around
 * every rewrite of uncommitted bytes. */
int aof_writer_new(uint64_t next_lsn, uint64_t max_record_bytes, uint64_t flush_bytes,
                   aof_feed *feed, aof_writer **out);
void aof_writer_free(aof_writer *w);
/* Register a key: its name (written into each segment it is used in) and the
 * offset its next record gets. */
int aof_writer_set_key(aof_writer *w, uint32_t key_id, const char *name, size_t name_len,
                       uint64_t next_offset);
/* Make seg (opened or created for writing) the active segment. */
int aof_writer_attach(aof_writer *w, aof_seg *seg);
/* Stop appending to the active segment: waits for a running sync and returns
 * with every appended byte synced. New appends get AOF_ENOSEG until attach. */
int aof_writer_detach(aof_writer *w);
/* Append one record; returns its offset (>= 0) or an AOF_E* code. A negative
 * timestamp_ms means "now". Outside a transaction the record is a batch by itself. */
int64_t aof_writer_append(aof_writer *w, uint32_t key_id, const char *value, size_t len,
                          int64_t timestamp_ms);
/* Append n records whose payloads lie back to back in buf; lens[i] is each
 * length. All or none survive a crash. Returns the first offset. */
int64_t aof_writer_append_many(aof_writer *w, uint32_t key_id, const char *buf,
                               const uint64_t *lens, size_t n, int64_t timestamp_ms);
/* Transactions: records appended by the owning thread between begin and end
 * form one batch; other threads' appends wait until end. A transaction
 * grows the active segment rather than roll it; begin returns AOF_EFULL
 * when the segment is already past capacity (roll, then begin again).
 * An append that fails inside a transaction fails the transaction: later
 * appends in it return AOF_ETXN, and end rolls everything back and returns
 * the first failure's code (its text says so) even when asked to commit.
 * A rollback zeroes the transaction's bytes and syncs the zeros, so they
 * cannot come back after a power loss. */
int aof_writer_begin(aof_writer *w);
int aof_writer_end(aof_writer *w, int commit);
/* Make every record the caller can see durable (another thread's open
 * transaction is not waited for); concurrent callers share one sync (group
 * commit). *durable_lsn gets the last LSN of a complete batch now on stable
 * storage (may be NULL). A failed sync leaves the page cache's state
 * unknowable, so it breaks the writer: every later call returns AOF_EBROKEN. */
int aof_writer_sync(aof_writer *w, uint64_t *durable_lsn);
/* For the background flusher: returns AOF_OK when flush_bytes are waiting
 * or something is unsynced after timeout_ms, AOF_ETIMEDOUT when nothing is
 * unsynced, AOF_ECLOSED once closed. */
int aof_writer_wait_dirty(aof_writer *w, int timeout_ms);
/* For tailing: waits until the commit generation differs from gen (or
 * timeout) and stores the current generation in *now. */
int aof_writer_wait_commit(aof_writer *w, uint64_t gen, int timeout_ms, uint64_t *now);
/* Next offset for a key and next LSN, as the writer sees them (committed
 * only unless the calling thread owns the open transaction). */
int aof_writer_next_offset(aof_writer *w, uint32_t key_id, uint64_t *next);
uint64_t aof_writer_next_lsn(aof_writer *w);
uint64_t aof_writer_unsynced_bytes(aof_writer *w);
/* Sync and refuse further appends; the segment stays attached (and mapped)
 * until the writer is freed. The writer refuses appends afterwards even
 * when the sync fails (the error is returned), so a failed close never
 * leaves a live writer behind. */
int aof_writer_close(aof_writer *w);
/* 1 once a failed sync broke the writer (every call returns AOF_EBROKEN);
 * the first failure's text goes to aof_last_error. */
int aof_writer_broken(aof_writer *w);

#endif
