/* feed.c: the small file the writer and its followers share (format in
 * aof_format.h). It carries two things:
 * - the change generation, a seqlock over the uncommitted region of
 *   unsealed segments: followers copy that region with pread while the
 *   writer may rewrite it, and the generation is how they learn that what
 *   they copied may mix two versions;
 * - the wake word, a futex the writer bumps whenever a batch becomes
 *   visible, so followers in any process sleep until there is something
 *   to read instead of polling. The sleepers flag beside it says whether
 *   anyone sleeps: the writer makes the wake system call only then. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "aof_internal.h"

struct aof_feed {
    int fd;
    int writable;  /* the writer's: owns the change generation */
    int can_sleep; /* mapped writable, so this process may set the sleepers flag */
    unsigned char *map;
    char *path;
};

static uint64_t *gen_word(const aof_feed *f) { return (uint64_t *)(f->map + AOF_FD_CHANGE_GEN); }
static uint32_t *wake_word(const aof_feed *f) { return (uint32_t *)(f->map + AOF_FD_WAKE); }
static uint32_t *sleepers_word(const aof_feed *f) { return (uint32_t *)(f->map + AOF_FD_SLEEPERS); }

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
    /* a follower maps it writable too when it may, only to set the
     * sleepers flag; without write access it polls instead */
    int flags = O_RDWR | O_CLOEXEC;
    int fd = open(path, flags);
    if (fd < 0 && errno == ENOENT) {
        int err = create_feed(path);
        if (err) {
            return aof_fail(writable || err != EACCES ? AOF_EIO : AOF_ENOTFOUND, err, 0,
                            "creating the feed %s: %s", path, strerror(err));
        }
        fd = open(path, flags);
    }
    if (fd < 0 && !writable && (errno == EACCES || errno == EROFS || errno == EPERM)) {
        flags = O_RDONLY | O_CLOEXEC;
        fd = open(path, flags);
    }
    int rw = (flags & O_ACCMODE) == O_RDWR;
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
        map = mmap(NULL, AOF_FEED_FILE_BYTES, PROT_READ | (rw ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
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
    f->can_sleep = rw;
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

/* --- the wake word ---
 * Lost wakes are impossible by the usual futex argument: a sleeper sets
 * the flag, then sleeps only while the word still holds the value it saw
 * before it last looked for records (the kernel checks that atomically
 * with queueing it); the writer bumps the word after a batch is in place,
 * then reads the flag. Both sides use sequentially consistent atomics,
 * so either the sleeper sees the new word or the writer sees the flag.
 * The flag is cleared by the writer that wakes, never counted down by
 * sleepers, so a follower killed in its sleep costs one wasted wake. */

static long futex(uint32_t *word, int op, uint32_t val, const struct timespec *timeout) {
    /* shared (no FUTEX_PRIVATE_FLAG): the sleepers are other processes */
    return syscall(SYS_futex, word, op, val, timeout, NULL, 0);
}

int aof_feed_publish(aof_feed *f) {
    if (!f || !f->writable) return 0;
    __atomic_add_fetch(wake_word(f), 1, __ATOMIC_SEQ_CST);
    return __atomic_load_n(sleepers_word(f), __ATOMIC_SEQ_CST) &&
           __atomic_exchange_n(sleepers_word(f), 0, __ATOMIC_SEQ_CST);
}

void aof_feed_wake(aof_feed *f) {
    if (f) futex(wake_word(f), FUTEX_WAKE, INT_MAX, NULL);
}

int aof_feed_wait(aof_feed *f, uint32_t seen, int timeout_ms, uint32_t *now) {
    if (!f || !now) return aof_fail(AOF_EINVAL, 0, 0, "aof_feed_wait: bad argument");
    uint32_t cur = __atomic_load_n(wake_word(f), __ATOMIC_SEQ_CST);
    if (cur == seen && timeout_ms > 0) {
        if (!f->can_sleep) {
            *now = cur;
            return aof_fail(AOF_EREADONLY, 0, 0, "%s: no write access to the feed: poll instead", f->path);
        }
        __atomic_store_n(sleepers_word(f), 1, __ATOMIC_SEQ_CST);
        AOF_PAUSE("feed.before_sleep");
        if (__atomic_load_n(wake_word(f), __ATOMIC_SEQ_CST) == seen) {
            struct timespec ts = {timeout_ms / 1000, (long)(timeout_ms % 1000) * 1000000L};
            futex(wake_word(f), FUTEX_WAIT, seen, &ts); /* woken, timed out, EAGAIN or EINTR: all fine */
        }
        cur = __atomic_load_n(wake_word(f), __ATOMIC_SEQ_CST);
    }
    *now = cur;
    return cur != seen ? AOF_OK : AOF_ETIMEDOUT;
}

int aof_feed_interrupt(aof_feed *f) {
    if (!f) return aof_fail(AOF_EINVAL, 0, 0, "aof_feed_interrupt: bad argument");
    if (!f->can_sleep) return AOF_OK; /* nobody here sleeps on it: they poll */
    __atomic_add_fetch(wake_word(f), 1, __ATOMIC_SEQ_CST);
    aof_feed_wake(f);
    return AOF_OK;
}

int aof_feed_sleeping(aof_feed *f) {
    return f ? (int)__atomic_load_n(sleepers_word(f), __ATOMIC_SEQ_CST) : 0;
}
