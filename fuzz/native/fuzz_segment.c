/* fuzz_segment.c: the fuzz target for the segment engine's readers.
 *
 * LLVMFuzzerTestOneInput takes a segment image and sends it through every path that parses bytes from disk: the
 * in-memory check (aof_seg_check_buffer), a file opened for reading (sealed:
 * mapped; unsealed: followed) and for writing (recovery), with reads through
 * the index and the file-order scan on each, and on a recovered segment the
 * writer appends, seals and verifies. Besides what the sanitizers catch, it
 * checks what must hold for any input: statuses are known codes, every
 * returned value lies inside the segment's memory, the three parsers agree
 * on the committed extent, and what recovery keeps reads back and seals into
 * a segment that verifies.
 *
 * Each input runs twice: as it is, and with every CRC recomputed, so
 * mutations also reach the sequence and index checks behind the checksums.
 *
 * driver.c runs this with gcc's coverage instrumentation; with clang it
 * links against libFuzzer as is (tools/fuzz.sh --long). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "aof_internal.h"

#define CAP 16

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "fuzz_segment: check failed: %s (%s:%d)\n", #cond, __FILE__, \
                    __LINE__);                                                            \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

static int known_status(int rc) { return rc <= AOF_OK && rc >= AOF_EREADONLY; }

/* Recomputes the header, record and sealed CRCs in place. */
static void fix_crcs(unsigned char *b, size_t len) {
    if (len < AOF_HEADER_BYTES) return;
    st32(b + AOF_H_CRC, aof_crc_mask(aof_crc32c(0, b, AOF_H_CRC)));
    uint64_t end = len, ipos = 0;
    unsigned char *f = NULL;
    if (len >= AOF_HEADER_BYTES + AOF_FOOTER_BYTES) {
        f = b + len - AOF_FOOTER_BYTES;
        ipos = ld64(f + AOF_F_INDEX_POS);
        if (memcmp(f + AOF_F_MAGIC, AOF_FOOTER_MAGIC, 8) || ipos < AOF_HEADER_BYTES ||
            ipos > len - AOF_FOOTER_BYTES)
            f = NULL;
        else
            end = ipos;
    }
    for (uint64_t pos = AOF_HEADER_BYTES; pos + AOF_RECORD_HEADER_BYTES <= end;) {
        uint64_t n = ld32(b + pos + AOF_R_LENGTH);
        if (n > end - pos - AOF_RECORD_HEADER_BYTES) break;
        st32(b + pos, aof_crc_mask(aof_crc32c(0, b + pos + 4, AOF_RECORD_HEADER_BYTES - 4 + n)));
        pos += AOF_RECORD_HEADER_BYTES + n;
    }
    if (f) {
        uint64_t ibytes = (uint64_t)(f - b) - ipos;
        st32(f + AOF_F_INDEX_CRC, aof_crc_mask(aof_crc32c(0, b + ipos, ibytes)));
        st32(f + AOF_F_FILE_CRC, aof_crc_mask(aof_crc32c(0, b, ipos + ibytes)));
        st32(f + AOF_F_CRC, aof_crc_mask(aof_crc32c(0, f, AOF_F_CRC)));
    }
}

static void check_report(const aof_scan_report *r, uint64_t len) {
    CHECK(r->valid_end <= r->stop_pos && r->stop_pos <= len);
    CHECK(r->dropped_bytes <= len - r->valid_end);
    CHECK(r->reason >= AOF_STOP_END && r->reason <= AOF_STOP_SEALED);
}

/* Records returned by a read or scan lie inside the segment's memory. */
static void check_cols(const uint64_t *cols, size_t n, uint64_t memlen) {
    for (size_t i = 0; i < n; i++) {
        uint64_t vs = cols[AOF_COL_VSTART * CAP + i], ve = cols[AOF_COL_VEND * CAP + i];
        CHECK(vs >= AOF_HEADER_BYTES + AOF_RECORD_HEADER_BYTES && vs <= ve && ve <= memlen);
    }
}

/* Reads every key through the index and every record by scan; returns 1
 * when everything read back (0 when something reported corruption). A
 * sound segment (unsealed ones are checked as they are indexed, sealed ones
 * by verify) must read back whole and in LSN order. */
static int read_all(aof_seg *s, int sound) {
    aof_seg_info info;
    const char *base;
    uint64_t memlen;
    aof_seg_info_get(s, &info);
    aof_seg_memory(s, &base, &memlen);
    CHECK(info.records_end >= AOF_HEADER_BYTES && info.records_end <= memlen);
    uint64_t cols[AOF_COLS * CAP];
    size_t nkeys = 0, n;
    aof_seg_keys(s, NULL, 0, &nkeys);
    aof_key_range *keys = calloc(nkeys + 1, sizeof *keys);
    CHECK(keys);
    aof_seg_keys(s, keys, nkeys, &n);
    CHECK(n == nkeys);
    int clean = 1;
    uint64_t indexed = 0;
    for (size_t k = 0; k < nkeys; k++) {
        aof_key_range r;
        uint32_t id = keys[k].key_id;
        CHECK(aof_seg_key_range(s, id, &r) == AOF_OK);
        CHECK(r.first_offset == keys[k].first_offset && r.count == keys[k].count && r.count);
        char name[AOF_MAX_KEY_BYTES];
        size_t name_len = 0;
        int rc = aof_seg_key_name(s, id, name, sizeof name, &name_len);
        CHECK(rc == AOF_OK || rc == AOF_ECORRUPT);
        if (!rc) CHECK(name_len >= 1 && name_len <= AOF_MAX_KEY_BYTES);
        indexed += r.count;
        for (uint64_t i = 0; i < r.count;) {
            rc = aof_seg_read_range(s, id, r.first_offset + i, cols, CAP, &n);
            check_cols(cols, n, memlen);
            for (size_t j = 0; j < n; j++) {
                CHECK(cols[AOF_COL_OFFSET * CAP + j] == r.first_offset + i + j);
                CHECK(cols[AOF_COL_KEY_ID * CAP + j] == id);
            }
            if (rc) {
                CHECK(rc == AOF_ECORRUPT);
                clean = 0;
                break;
            }
            CHECK(n > 0);
            i += n;
        }
        CHECK(aof_seg_read_range(s, id, r.first_offset + r.count, cols, CAP, &n) == AOF_ENOTFOUND);
        if (r.first_offset)
            CHECK(aof_seg_read_range(s, id, r.first_offset - 1, cols, CAP, &n) == AOF_ENOTFOUND);
    }
    free(keys);
    uint64_t pos = 0, scanned = 0, last = 0;
    int ordered = 1;
    for (;;) {
        uint64_t before = pos;
        int rc = aof_seg_scan(s, &pos, 0, cols, CAP, &n);
        check_cols(cols, n, memlen);
        for (size_t j = 0; j < n; j++) {
            uint64_t lsn = cols[AOF_COL_LSN * CAP + j];
            if (scanned + j && lsn <= last) ordered = 0;
            last = lsn;
        }
        scanned += n;
        if (rc) {
            CHECK(rc == AOF_ECORRUPT);
            clean = 0;
            break;
        }
        if (!n && pos == before) break;
        CHECK(pos > before);
    }
    if (sound) CHECK(clean && ordered && scanned == info.record_count && indexed == info.record_count);
    return clean;
}

static char path[4096];

static void write_file(const unsigned char *b, size_t len) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    CHECK(fd >= 0);
    CHECK(len == 0 || write(fd, b, len) == (ssize_t)len);
    close(fd);
}

static unsigned char *read_file(size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0);
    off_t size = lseek(fd, 0, SEEK_END);
    unsigned char *b = malloc((size_t)size + 1);
    CHECK(b && pread(fd, b, (size_t)size, 0) == size);
    close(fd);
    *len = (size_t)size;
    return b;
}

/* On a recovered segment: append a batch and a rolled-back transaction,
 * seal, and check that the result verifies and holds what it should. */
static void append_and_seal(aof_seg *s) {
    aof_seg_info info;
    aof_seg_info_get(s, &info);
    uint64_t next_lsn = info.record_count ? info.last_lsn + 1 : info.first_lsn;
    size_t nkeys = 0, n;
    aof_key_range key;
    aof_seg_keys(s, &key, 1, &nkeys);
    char name[AOF_MAX_KEY_BYTES];
    if (!nkeys || !next_lsn || aof_seg_key_name(s, key.key_id, name, sizeof name, &n)) return;
    aof_writer *w;
    CHECK(aof_writer_new(next_lsn, 1 << 16, 1 << 20, NULL, &w) == AOF_OK);
    CHECK(aof_writer_set_key(w, key.key_id, name, n, key.first_offset + key.count) == AOF_OK);
    CHECK(aof_writer_attach(w, s) == AOF_OK);
    uint64_t lens[2] = {3, 0};
    CHECK(aof_writer_append_many(w, key.key_id, "new", lens, 2, 1) ==
          (int64_t)(key.first_offset + key.count));
    CHECK(aof_writer_begin(w) == AOF_OK);
    CHECK(aof_writer_append(w, key.key_id, "gone", 4, 1) >= 0);
    CHECK(aof_writer_end(w, 0) == AOF_OK);
    CHECK(aof_writer_sync(w, NULL) == AOF_OK);
    CHECK(aof_writer_detach(w) == AOF_OK);
    CHECK(aof_seg_seal(s) == AOF_OK);
    CHECK(aof_seg_verify(s) == AOF_OK);
    read_all(s, 1);
    aof_seg_info sealed;
    aof_seg_info_get(s, &sealed);
    CHECK(sealed.sealed && sealed.record_count == info.record_count + 2);
    aof_writer_free(w);
    size_t len;
    unsigned char *b = read_file(&len);
    CHECK(aof_seg_check_buffer((const char *)b, len, &sealed, NULL) == AOF_OK);
    CHECK(sealed.sealed && sealed.record_count == info.record_count + 2);
    free(b);
}

/* An unsealed segment opened from the file: its scan agrees with the
 * in-memory check (buffer: NULL when that failed) and it reads back. */
static void check_unsealed(aof_seg *s, const aof_scan_report *rep, size_t len,
                           const aof_seg_info *buffer) {
    aof_seg_info got;
    aof_seg_info_get(s, &got);
    check_report(rep, len);
    CHECK(buffer && !buffer->sealed && got.records_end == buffer->records_end &&
          got.record_count == buffer->record_count && got.last_lsn == buffer->last_lsn);
    read_all(s, 1);
}

static void check_image(const unsigned char *b, size_t len) {
    aof_seg_info info;
    aof_scan_report rep;
    int rc = aof_seg_check_buffer((const char *)b, len, &info, &rep);
    CHECK(known_status(rc));
    int buffer_ok = rc == AOF_OK;
    if (buffer_ok) {
        CHECK(info.records_end <= len);
        if (!info.sealed) check_report(&rep, len);
    }

    write_file(b, len);
    /* reading first: opening for writing recovers (rewrites) the file */
    for (int mode = AOF_OPEN_READ; mode <= AOF_OPEN_WRITE; mode++) {
        aof_seg *s;
        rc = aof_seg_open(path, mode, len + 4096, NULL, &s, &rep);
        CHECK(known_status(rc));
        if (rc) continue;
        aof_seg_info got;
        aof_seg_info_get(s, &got);
        if (!got.sealed) {
            check_unsealed(s, &rep, len, buffer_ok ? &info : NULL);
            if (mode == AOF_OPEN_WRITE) {
                append_and_seal(s);
            } else {
                aof_scan_report again;
                CHECK(aof_seg_refresh(s, &again) == AOF_OK);
                check_report(&again, len);
            }
        } else if (mode == AOF_OPEN_READ) {
            int verified = aof_seg_verify(s);
            CHECK(verified == AOF_OK || verified == AOF_ECORRUPT);
            CHECK(buffer_ok == (verified == AOF_OK));
            read_all(s, verified == AOF_OK);
        }
        aof_seg_free(s);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!path[0]) {
        const char *dir = getenv("AOF_FUZZ_DIR");
        if (!dir) dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(path, sizeof path, "%s/aof-fuzz-%d.seg", dir, (int)getpid());
    }
    /* an exact-size copy, so the sanitizer sees any read past the image */
    unsigned char *b = malloc(size ? size : 1);
    CHECK(b);
    if (size) memcpy(b, data, size);
    check_image(b, size);
    fix_crcs(b, size);
    if (size && memcmp(b, data, size)) check_image(b, size);
    free(b);
    return 0;
}
