/* aoflite_cdef.h: the declarations cffi binds, generated from aoflite.h by
 * tools/gen_cdef.py (comments dropped, constants '...' so the real headers
 * supply their values). Do not edit by hand. */
#define AOF_OK ...
#define AOF_EIO ...
#define AOF_ECORRUPT ...
#define AOF_EFORMAT ...
#define AOF_EVERSION ...
#define AOF_EFULL ...
#define AOF_ENOTFOUND ...
#define AOF_EINVAL ...
#define AOF_ENOMEM ...
#define AOF_ESEALED ...
#define AOF_ETOOBIG ...
#define AOF_ENOSEG ...
#define AOF_ENOKEY ...
#define AOF_ECLOSED ...
#define AOF_ETXN ...
#define AOF_ETIMEDOUT ...
#define AOF_EREADONLY ...
#define AOF_EBROKEN ...
#define AOF_STOP_END ...
#define AOF_STOP_TORN ...
#define AOF_STOP_CHECKSUM ...
#define AOF_STOP_BADHEADER ...
#define AOF_STOP_SEQUENCE ...
#define AOF_STOP_SEALED ...
#define AOF_OPEN_READ ...
#define AOF_OPEN_WRITE ...
typedef struct aof_error {
    int code;
    int sys_errno;
    uint64_t pos;
    char msg[240];
} aof_error;
typedef struct aof_scan_report {
    uint64_t valid_end;
    uint64_t stop_pos;
    uint64_t dropped_bytes;
    uint64_t dropped_records;
    int reason;
} aof_scan_report;
typedef struct aof_seg_info {
    uint64_t store_id;
    uint64_t segment_id;
    uint64_t first_lsn;
    int64_t created_ms;
    uint32_t version;
    int sealed;
    int mode;
    uint64_t records_end;
    uint64_t file_bytes;
    uint64_t record_count;
    uint64_t last_lsn;
    uint64_t key_count;
    uint32_t file_crc;
    uint64_t prefaulted;
} aof_seg_info;
#define AOF_COLS ...
#define AOF_COL_OFFSET ...
#define AOF_COL_LSN ...
#define AOF_COL_TIMESTAMP ...
#define AOF_COL_KEY_ID ...
#define AOF_COL_VSTART ...
#define AOF_COL_VEND ...
#define AOF_COL_BATCH_END ...
typedef struct aof_key_range {
    uint32_t key_id;
    uint64_t first_offset;
    uint64_t count;
} aof_key_range;
typedef struct aof_seg aof_seg;
typedef struct aof_writer aof_writer;
typedef struct aof_feed aof_feed;
const char *aof_strerror(int code);
void aof_last_error(aof_error *out);
uint32_t aof_crc32c(uint32_t crc, const void *data, size_t len);
int aof_crc32c_hardware(void);
void aof_crc32c_force_software(int force_software);
#define AOF_FAILPOINT_EXIT ...
void aof_failpoint_arm(const char *name, int skip, int action);
const char *aof_failpoint_names(void);
int aof_synclog_open(const char *path);
int aof_iofail_arm(const char *name, long nth, long times, int err);
void aof_iofail_reset(void);
unsigned long aof_iofail_count(const char *name);
const char *aof_iofail_names(void);
int aof_pause_arm(const char *name);
int aof_pause_wait(const char *name, int timeout_ms);
void aof_pause_release(const char *name);
const char *aof_pause_names(void);
int aof_feed_open(const char *path, int writable, aof_feed **out);
void aof_feed_free(aof_feed *f);
uint64_t aof_feed_generation(aof_feed *f);
int aof_feed_wait(aof_feed *f, uint32_t seen, int timeout_ms, uint32_t *now);
int aof_feed_interrupt(aof_feed *f);
int aof_feed_sleeping(aof_feed *f);
int aof_seg_create(const char *path, uint64_t store_id, uint64_t segment_id,
                   uint64_t first_lsn, uint64_t capacity, aof_seg **out);
int aof_seg_open(const char *path, int mode, uint64_t capacity, aof_feed *feed, aof_seg **out,
                 aof_scan_report *report);
int aof_seg_check_buffer(const char *buf, size_t len, aof_seg_info *info,
                         aof_scan_report *report);
void aof_seg_free(aof_seg *seg);
int aof_seg_info_get(aof_seg *seg, aof_seg_info *out);
int aof_seg_refresh(aof_seg *seg, aof_scan_report *report);
int aof_seg_seal(aof_seg *seg);
int aof_seg_verify(aof_seg *seg);
int aof_seg_keys(aof_seg *seg, aof_key_range *out, size_t cap, size_t *n);
int aof_seg_key_range(aof_seg *seg, uint32_t key_id, aof_key_range *out);
int aof_seg_key_name(aof_seg *seg, uint32_t key_id, char *buf, size_t cap, size_t *len);
int aof_seg_read_range(aof_seg *seg, uint32_t key_id, uint64_t offset, uint64_t *out,
                       size_t cap, size_t *n);
int aof_seg_scan(aof_seg *seg, uint64_t *pos, uint64_t min_lsn, uint64_t *out, size_t cap,
                 size_t *n);
int aof_seg_memory(aof_seg *seg, const char **base, uint64_t *len);
int aof_writer_new(uint64_t next_lsn, uint64_t max_record_bytes, uint64_t flush_bytes,
                   aof_feed *feed, aof_writer **out);
void aof_writer_free(aof_writer *w);
int aof_writer_set_key(aof_writer *w, uint32_t key_id, const char *name, size_t name_len,
                       uint64_t next_offset);
int aof_writer_attach(aof_writer *w, aof_seg *seg);
int aof_writer_detach(aof_writer *w);
int64_t aof_writer_append(aof_writer *w, uint32_t key_id, const char *value, size_t len,
                          int64_t timestamp_ms);
int64_t aof_writer_append_many(aof_writer *w, uint32_t key_id, const char *buf,
                               const uint64_t *lens, size_t n, int64_t timestamp_ms);
int aof_writer_begin(aof_writer *w);
int aof_writer_end(aof_writer *w, int commit);
int aof_writer_sync(aof_writer *w, uint64_t *durable_lsn);
int aof_writer_wait_dirty(aof_writer *w, int timeout_ms);
int aof_writer_wait_commit(aof_writer *w, uint64_t gen, int timeout_ms, uint64_t *now);
int aof_writer_next_offset(aof_writer *w, uint32_t key_id, uint64_t *next);
uint64_t aof_writer_next_lsn(aof_writer *w);
uint64_t aof_writer_unsynced_bytes(aof_writer *w);
int aof_writer_close(aof_writer *w);
int aof_writer_broken(aof_writer *w);
#define AOF_FORMAT_VERSION ...
#define AOF_HEADER_BYTES ...
#define AOF_RECORD_HEADER_BYTES ...
#define AOF_FOOTER_BYTES ...
#define AOF_KEY_ENTRY_BYTES ...
#define AOF_MAX_KEY_BYTES ...
#define AOF_MAX_RECORD_BYTES ...
