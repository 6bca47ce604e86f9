/* failpoint.c: test hooks at the steps that move data or metadata.
 *
 * Three kinds, all off unless a test arms them (then aof_fp_armed is set
 * and each site costs one predictable branch otherwise):
 * - crash points end the process at a named step (the crash suite);
 * - I/O sites make the Nth system call of a kind fail with an errno
 *   instead of running it, as SQLite's I/O-error tests do, and count how
 *   often each kind was reached;
 * - pause points block the thread that reaches them until the test
 *   releases it, so a race is replayed step by step instead of by sleeps. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "aof_internal.h"

/* Every AOF_FAILPOINT site in the C sources, for the test that proves each
 * one is exercised. Keep in step with the sites. */
static const char names[] =
    "create.opened create.header_written seal.index_written seal.synced seal.truncated "
    "recover.truncated append_many.half tx.before_commit_record sync.before_msync seg.grown";

/* Every AOF_PAUSE site: points only race tests stop at. */
static const char pause_names[] =
    "sync.after_target follow.after_read seg_open.after_stat feed.before_sleep";

/* Every AOF_IOFAIL site kind, in the order of aof_io_site. */
static const char *const io_names[AOF_IO_NSITES] = {
    "seg.pwrite", "seg.fallocate", "seg.ftruncate", "seg.msync",
    "seg.fdatasync", "seg.dirsync", "seg.mmap", "seg.pread",
};
static const char io_names_joined[] =
    "seg.pwrite seg.fallocate seg.ftruncate seg.msync seg.fdatasync seg.dirsync seg.mmap seg.pread";

int aof_fp_armed;
static pthread_mutex_t fp_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t fp_cv = PTHREAD_COND_INITIALIZER;

static char crash_name[64];
static int crash_skip, crash_action;

static int io_counting, io_site = -1, io_errno;
static long io_nth, io_times; /* io_times < 0: every call from the nth on */
static unsigned long io_count[AOF_IO_NSITES];

#define MAX_PAUSES 4
static struct pause {
    char name[64];
    int reached;
    unsigned gen; /* bumped by each release: a waiter leaves when it moves */
} pauses[MAX_PAUSES];

static void rearm(void) {
    int any = crash_name[0] || io_counting || io_site >= 0;
    for (int i = 0; i < MAX_PAUSES && !any; i++) any = pauses[i].name[0] != 0;
    __atomic_store_n(&aof_fp_armed, any, __ATOMIC_SEQ_CST);
}

void aof_failpoint_arm(const char *name, int skip, int action) {
    pthread_mutex_lock(&fp_mu);
    snprintf(crash_name, sizeof crash_name, "%s", name ? name : "");
    crash_skip = skip;
    crash_action = action;
    rearm();
    pthread_mutex_unlock(&fp_mu);
}

const char *aof_failpoint_names(void) { return names; }
const char *aof_iofail_names(void) { return io_names_joined; }
const char *aof_pause_names(void) { return pause_names; }

void aof_fp_hit(const char *name) {
    if (crash_name[0] && strcmp(name, crash_name) == 0 && crash_skip-- <= 0) {
        if (crash_action == 1) raise(SIGKILL);
        _exit(AOF_FAILPOINT_EXIT);
    }
    pthread_mutex_lock(&fp_mu);
    for (int i = 0; i < MAX_PAUSES; i++) {
        struct pause *p = &pauses[i];
        if (!p->name[0] || strcmp(p->name, name) != 0) continue;
        unsigned gen = p->gen;
        p->reached++;
        pthread_cond_broadcast(&fp_cv);
        while (p->gen == gen) pthread_cond_wait(&fp_cv, &fp_mu);
        break;
    }
    pthread_mutex_unlock(&fp_mu);
}

int aof_io_hit(int site) {
    pthread_mutex_lock(&fp_mu);
    int err = 0;
    if (site >= 0 && site < AOF_IO_NSITES) {
        unsigned long n = ++io_count[site];
        if (site == io_site && (long)n >= io_nth && (io_times < 0 || (long)n < io_nth + io_times))
            err = io_errno;
    }
    pthread_mutex_unlock(&fp_mu);
    if (err) errno = err;
    return err;
}

int aof_iofail_arm(const char *name, long nth, long times, int err) {
    pthread_mutex_lock(&fp_mu);
    int site = -1;
    for (int i = 0; name && i < AOF_IO_NSITES; i++)
        if (strcmp(name, io_names[i]) == 0) site = i;
    int rc = AOF_OK;
    if (name && *name && (site < 0 || nth < 1 || err <= 0 || times == 0)) {
        rc = aof_fail(AOF_EINVAL, 0, 0, "aof_iofail_arm: unknown site %s or bad count", name);
    } else {
        io_site = site;
        io_nth = nth;
        io_times = times;
        io_errno = err;
        io_counting = 1;
        memset(io_count, 0, sizeof io_count);
    }
    rearm();
    pthread_mutex_unlock(&fp_mu);
    return rc;
}

void aof_iofail_reset(void) {
    pthread_mutex_lock(&fp_mu);
    io_site = -1;
    io_counting = 0;
    memset(io_count, 0, sizeof io_count);
    rearm();
    pthread_mutex_unlock(&fp_mu);
}

unsigned long aof_iofail_count(const char *name) {
    unsigned long n = 0;
    pthread_mutex_lock(&fp_mu);
    for (int i = 0; i < AOF_IO_NSITES; i++)
        if (strcmp(name, io_names[i]) == 0) n = io_count[i];
    pthread_mutex_unlock(&fp_mu);
    return n;
}

int aof_pause_arm(const char *name) {
    pthread_mutex_lock(&fp_mu);
    int rc = aof_fail(AOF_EINVAL, 0, 0, "aof_pause_arm: too many pause points armed");
    for (int i = 0; i < MAX_PAUSES; i++)
        if (!pauses[i].name[0] || strcmp(pauses[i].name, name) == 0) {
            snprintf(pauses[i].name, sizeof pauses[i].name, "%s", name);
            pauses[i].reached = 0;
            rc = AOF_OK;
            break;
        }
    rearm();
    pthread_mutex_unlock(&fp_mu);
    return rc;
}

int aof_pause_wait(const char *name, int timeout_ms) {
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&fp_mu);
    int reached = 0, timed_out = 0;
    for (;;) {
        for (int i = 0; i < MAX_PAUSES; i++)
            if (strcmp(pauses[i].name, name) == 0 && pauses[i].reached) reached = 1;
        if (reached || timed_out) break;
        timed_out = pthread_cond_timedwait(&fp_cv, &fp_mu, &dl) == ETIMEDOUT;
    }
    pthread_mutex_unlock(&fp_mu);
    return reached ? AOF_OK : AOF_ETIMEDOUT;
}

void aof_pause_release(const char *name) {
    pthread_mutex_lock(&fp_mu);
    for (int i = 0; i < MAX_PAUSES; i++)
        if (pauses[i].name[0] && (!name || strcmp(pauses[i].name, name) == 0)) {
            pauses[i].gen++;
            pauses[i].name[0] = 0;
        }
    pthread_cond_broadcast(&fp_cv);
    rearm();
    pthread_mutex_unlock(&fp_mu);
}
