/* aof_format.h: the on-disk layout of an aoflite segment file.
 *
 * Everything is little-endian. docs/format.md has the same tables with prose;
 * change both together and bump AOF_FORMAT_VERSION on any incompatible change.
 *
 *   segment := header record* [index footer]        (index+footer only once sealed)
 *
 *   header (64) := magic[8] version:u32 header_bytes:u32 store_id:u64
 *                  segment_id:u64 first_lsn:u64 created_ms:i64 reserved[12]
 *                  crc:u32                          (crc covers bytes 0..60)
 *
 *   record (40 + length) := crc:u32 length:u32 key_id:u32 flags:u16
 *                  reserved:u16 offset:u64 lsn:u64 timestamp_ms:i64 payload[length]
 *                  (crc covers bytes 4..40+length: the header after the crc, and the payload)
 *
 *   index := key_entry[key_count] position:u64[record_count]
 *   key_entry (40) := key_id:u32 reserved:u32 first_offset:u64 count:u64
 *                  def_pos:u64 pos_start:u64
 *
 *   footer (64) := index_pos:u64 index_bytes:u64 record_count:u64 last_lsn:u64
 *                  key_count:u32 flags:u32 index_crc:u32 file_crc:u32
 *                  version:u32 crc:u32 magic[8]     (crc covers bytes 0..52)
 *
 * Every CRC is CRC32C stored masked (aof_crc_mask): a CRC computed over bytes
 * that themselves contain CRCs is weak, and masking breaks that correlation.
 */
#ifndef AOF_FORMAT_H
#define AOF_FORMAT_H

#include <stdint.h>

#define AOF_FORMAT_VERSION 1u

#define AOF_SEG_MAGIC "AOFLSEG\0"
#define AOF_FOOTER_MAGIC "AOFLEND\0"

#define AOF_HEADER_BYTES 64u /* 8 + 4 + 4 + 8 + 8 + 8 + 8 + 12 + 4 */
#define AOF_RECORD_HEADER_BYTES 40u /* 4 + 4 + 4 + 2 + 2 + 8 + 8 + 8 */
#define AOF_KEY_ENTRY_BYTES 40u /* 4 + 4 + 8 + 8 + 8 + 8 */
#define AOF_FOOTER_BYTES 64u /* 8 + 8 + 8 + 8 + 4 + 4 + 4 + 4 + 4 + 4 + 8 */

/* Header field positions. */
#define AOF_H_MAGIC 0
#define AOF_H_VERSION 8
#define AOF_H_HEADER_BYTES 12
#define AOF_H_STORE_ID 16
#define AOF_H_SEGMENT_ID 24
#define AOF_H_FIRST_LSN 32
#define AOF_H_CREATED_MS 40
#define AOF_H_CRC 60

/* Record header field positions. */
#define AOF_R_CRC 0
#define AOF_R_LENGTH 4
#define AOF_R_KEY_ID 8
#define AOF_R_FLAGS 12
#define AOF_R_RESERVED 14
#define AOF_R_OFFSET 16
#define AOF_R_LSN 24
#define AOF_R_TIMESTAMP 32

/* Record flags. A batch is a run of records ending in one with BATCH_END;
 * recovery keeps whole batches only, which is what makes append_many and
 * transactions atomic. */
#define AOF_FLAG_BATCH_END 0x1u
#define AOF_FLAG_CONTROL 0x2u /* not user data: never returned by reads */
#define AOF_FLAG_KEYDEF 0x4u  /* control: payload is the key's name, offset its next offset */
#define AOF_FLAG_COMMIT 0x8u  /* control: closes a transaction */
#define AOF_FLAGS_KNOWN 0xfu

/* Key entry field positions (in the sealed index). */
#define AOF_K_KEY_ID 0
#define AOF_K_FIRST_OFFSET 8
#define AOF_K_COUNT 16
#define AOF_K_DEF_POS 24
#define AOF_K_POS_START 32

/* Footer field positions. */
#define AOF_F_INDEX_POS 0
#define AOF_F_INDEX_BYTES 8
#define AOF_F_RECORD_COUNT 16
#define AOF_F_LAST_LSN 24
#define AOF_F_KEY_COUNT 32
#define AOF_F_FLAGS 36
#define AOF_F_INDEX_CRC 40
#define AOF_F_FILE_CRC 44
#define AOF_F_VERSION 48
#define AOF_F_CRC 52
#define AOF_F_MAGIC 56

#define AOF_FOOTER_SEALED 0x1u

/* A key name is 1..1024 UTF-8 bytes; a key id is never 0. */
#define AOF_MAX_KEY_BYTES 1024u
/* A single record's payload is at most 2^31 - 1 bytes: length is u32 and must
 * fit a Python bytes object without surprises on any platform. */
#define AOF_MAX_RECORD_BYTES 0x7fffffffu

/* The feed file (PATH/feed.shm): shared memory between the writer and
 * followers, not durable (nothing in it matters after a reboot).
 *
 *   feed (64) := magic[8] version:u32 reserved:u32 change_gen:u64 wake:u32
 *                sleepers:u32 reserved[32]
 *
 * wake is a futex word (4-byte aligned, as futexes must be) the writer
 * bumps at every batch end; sleepers is 1 while some follower may sleep on
 * it. Both were reserved zeros before, so the version stays 1.
 * The file is AOF_FEED_FILE_BYTES long so later fields fit without a move. */
#define AOF_FEED_MAGIC "AOFLFEED"
#define AOF_FEED_VERSION 1u
#define AOF_FEED_BYTES 64u /* 8 + 4 + 4 + 8 + 4 + 4 + 32 */
#define AOF_FEED_FILE_BYTES 4096u
#define AOF_FD_MAGIC 0
#define AOF_FD_VERSION 8
#define AOF_FD_CHANGE_GEN 16
#define AOF_FD_WAKE 24
#define AOF_FD_SLEEPERS 28

static inline uint32_t aof_crc_mask(uint32_t crc) {
    return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

static inline uint32_t aof_crc_unmask(uint32_t masked) {
    uint32_t rot = masked - 0xa282ead8u;
    return (rot >> 17) | (rot << 15);
}

#endif
