/* feed.c: the small file the writer and its followers share (format in
 * aof_format.h). Today it carries the change generation, a seqlock over
 * the uncommitted region of unsealed segments: followers copy that region
 * with pread while the writer may rewrite it, and the generation is how
 * they learn that what they copied may mix two versions. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "aof_internal.h"

struct aof_feed {
    int fd;
    int writable;
    unsigned char *map;
    char *path;
};

static uint64_t *gen_word(const aof_feed *f) { return (uint64_t *)(f->map + AOF_FD_CHANGE_GEN); }

static void put_feed_header(unsigned char *h) {
    memset(h, 0, AOF_FEED_BYTES);
    memcpy(h + AOF_FD_MAGIC, AOF_FEED_MAGIC, 8);
    st32(h + AOF_FD_VERSION, AOF_FEED_VERSION);
}

/* Makes the file whole under a temporary name and links it into place, so
 * nobody ever maps a half-written feed; losing the race to another process
 * is fine, its file is as good. */
static int create_feed(const char *path) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.%ld.tmp", path, (long)getpid());
    int fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return errno;
    unsigned char h[AOF_FEED_BYTES];
    put_feed_header(h);
    int err = 0;
    if (ftruncate(fd, AOF_FEED_FILE_BYTES) || pwrite(fd, h, sizeof h, 0) != (ssize_t)sizeof h)
        err = errno;
    close(fd);
    if (!err && link(tmp, path) && errno != EEXIST) err = errno;
    unlink(tmp);
    return err;
}

int aof_feed_open(const char *path, int writable, aof_feed **out) {
    if (!path || !out) return aof_fail(AOF_EINVAL, 0, 0, "aof_feed_open: bad argument");
    int flags = (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC;
    int fd = open(path, flags);
    if (fd < 0 && errno == ENOENT) {
        int err = create_feed(path);
        if (err) {
            return aof_fail(writable || err != EACCES ? AOF_EIO : AOF_ENOTFOUND, err, 0,
                            "creating the feed %s: %s", path, strerror(err));
        }
        fd = open(path, flags);
    }
    if (fd < 0) {
        int e = errno;
        return aof_fail(e == ENOENT || (e == EACCES && !writable) ? AOF_ENOTFOUND : AOF_EIO, e, 0,
                        "opening the feed %s: %s", path, strerror(e));
    }
    struct stat st;
    int rc = AOF_OK;
    if (fstat(fd, &st)) {
        rc = aof_fail(AOF_EIO, errno, 0, "stat %s: %s", path, strerror(errno));
    } else if ((uint64_t)st.st_size < AOF_FEED_FILE_BYTES) {
        /* a crash between creating and linking cannot leave this (the link
         * comes last); only damage can, and the writer may repair it */
        if (!writable || ftruncate(fd, AOF_FEED_FILE_BYTES))
            rc = aof_fail(AOF_EFORMAT, 0, 0, "%s: feed file is too short", path);
    }
    void *map = MAP_FAILED;
    if (!rc) {
        map = mmap(NULL, AOF_FEED_FILE_BYTES, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED,
                   fd, 0);
        if (map == MAP_FAILED) rc = aof_fail(AOF_EIO, errno, 0, "mapping %s: %s", path, strerror(errno));
    }
    aof_feed *f = NULL;
    if (!rc && !(f = calloc(1, sizeof *f))) rc = aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory");
    if (!rc && !(f->path = strdup(path))) rc = aof_fail(AOF_ENOMEM, ENOMEM, 0, "out of memory");
    if (rc) {
        if (f) free(f);
        if (map != MAP_FAILED) munmap(map, AOF_FEED_FILE_BYTES);
        close(fd);
        return rc;
    }
    f->fd = fd;
    f->writable = writable;
    f->map = map;
    unsigned char *h = f->map;
    int sound = memcmp(h + AOF_FD_MAGIC, AOF_FEED_MAGIC, 8) == 0 &&
                ld32(h + AOF_FD_VERSION) == AOF_FEED_VERSION;
    if (!sound && !writable) {
        aof_feed_free(f);
        return aof_fail(AOF_EFORMAT, 0, 0, "%s: not an aoflite feed file", path);
    }
    if (writable) {
        if (!sound) put_feed_header(h);
        /* a writer that died inside a change left the generation odd;
         * either way move it, so followers distrust what they copied */
        uint64_t g = __atomic_load_n(gen_word(f), __ATOMIC_SEQ_CST);
        __atomic_store_n(gen_word(f), (g | 1) + 1, __ATOMIC_SEQ_CST);
    }
    *out = f;
    return AOF_OK;
}

void aof_feed_free(aof_feed *f) {
    if (!f) return;
    munmap(f->map, AOF_FEED_FILE_BYTES);
    close(f->fd);
    free(f->path);
    free(f);
}

uint64_t aof_feed_generation(aof_feed *f) { return aof_feed_gen(f); }

void aof_feed_change(aof_feed *f, int begin) {
    if (!f || !f->writable) return;
    /* seq_cst on both sides: the odd value is visible before any rewritten
     * byte, the even one only after the last */
    uint64_t g = __atomic_load_n(gen_word(f), __ATOMIC_SEQ_CST);
    if ((g & 1) == (uint64_t)(begin != 0)) return; /* already in that state */
    __atomic_store_n(gen_word(f), g + 1, __ATOMIC_SEQ_CST);
}

uint64_t aof_feed_gen(const aof_feed *f) {
    return f ? __atomic_load_n(gen_word(f), __ATOMIC_SEQ_CST) : 0;
}
