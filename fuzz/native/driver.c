/* driver.c: a small coverage-guided fuzzer for fuzz targets written for
 * libFuzzer (LLVMFuzzerTestOneInput), built with gcc alone.
 *
 * The target and the code under test are compiled with
 * -fsanitize-coverage=trace-pc,trace-cmp (plus ASan and UBSan); this file is
 * not, and supplies the hooks: each basic block hashes (previous, current)
 * into an edge map, and comparisons feed a table of operands that mutations
 * substitute into inputs. An input that reaches a new edge, or an edge a new
 * number of times (AFL's buckets), joins the corpus.
 *
 *   driver [-runs=N] [-max_total_time=S] [-timeout=S] [-seed=N]
 *          [-artifact_prefix=P] [-corpus_out=DIR] CORPUS_DIR_OR_FILE...
 *
 * Every seed runs first; with -runs=0 that is all (to replay a crash).
 * A sanitizer report, a failed check in the target or an input that runs
 * longer than -timeout seconds stops the run with a non-zero status, after
 * writing the input to P + "crash-<hash>" (or "timeout-<hash>"). At the end
 * it prints "done: N inputs, C corpus, E edges". */
#define _GNU_SOURCE
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
void __sanitizer_set_death_callback(void (*callback)(void));

const char *__asan_default_options(void) { return "handle_abort=1:abort_on_error=0"; }
const char *__ubsan_default_options(void) { return "print_stacktrace=1:halt_on_error=1"; }

/* ------------------------------------------------------------ coverage */

#define MAP_BITS 16
#define MAP_SIZE (1u << MAP_BITS)
static uint8_t edges[MAP_SIZE], seen[MAP_SIZE];
static __thread uintptr_t prev_pc;

void __sanitizer_cov_trace_pc(void) {
    uintptr_t pc = (uintptr_t)__builtin_return_address(0);
    uint64_t h = (uint64_t)(pc ^ (prev_pc << 1)) * 0x9e3779b97f4a7c15ull;
    edges[h >> (64 - MAP_BITS)]++;
    prev_pc = pc;
}

/* compared operands: candidates for input-to-state substitution */
#define CMP_SLOTS 512
static uint64_t cmp_a[CMP_SLOTS], cmp_b[CMP_SLOTS];
static uint8_t cmp_w[CMP_SLOTS];

static void note_cmp(uint64_t a, uint64_t b, uint8_t width) {
    if (a == b) return;
    unsigned i = (unsigned)(((a * 31 + b) * 0x9e3779b97f4a7c15ull) >> 55) % CMP_SLOTS;
    cmp_a[i] = a;
    cmp_b[i] = b;
    cmp_w[i] = width;
}

void __sanitizer_cov_trace_cmp1(uint8_t a, uint8_t b) { note_cmp(a, b, 1); }
void __sanitizer_cov_trace_cmp2(uint16_t a, uint16_t b) { note_cmp(a, b, 2); }
void __sanitizer_cov_trace_cmp4(uint32_t a, uint32_t b) { note_cmp(a, b, 4); }
void __sanitizer_cov_trace_cmp8(uint64_t a, uint64_t b) { note_cmp(a, b, 8); }
void __sanitizer_cov_trace_const_cmp1(uint8_t a, uint8_t b) { note_cmp(a, b, 1); }
void __sanitizer_cov_trace_const_cmp2(uint16_t a, uint16_t b) { note_cmp(a, b, 2); }
void __sanitizer_cov_trace_const_cmp4(uint32_t a, uint32_t b) { note_cmp(a, b, 4); }
void __sanitizer_cov_trace_const_cmp8(uint64_t a, uint64_t b) { note_cmp(a, b, 8); }
void __sanitizer_cov_trace_cmpf(float a, float b) { (void)a, (void)b; }
void __sanitizer_cov_trace_cmpd(double a, double b) { (void)a, (void)b; }
void __sanitizer_cov_trace_switch(uint64_t v, uint64_t *cases) {
    for (uint64_t i = 0; i < cases[0]; i++) note_cmp(v, cases[2 + i], (uint8_t)(cases[1] / 8));
}

static uint8_t bucket(uint8_t n) {
    return n <= 3 ? n : n <= 7 ? 4 : n <= 15 ? 8 : n <= 31 ? 16 : n <= 127 ? 32 : 128;
}

/* Folds the last run's edges into seen; returns how many were new. */
static unsigned take_coverage(void) {
    unsigned fresh = 0;
    for (unsigned i = 0; i < MAP_SIZE; i++) {
        if (!edges[i]) continue;
        uint8_t b = bucket(edges[i]);
        if (!(seen[i] & b)) {
            seen[i] |= b;
            fresh++;
        }
        edges[i] = 0;
    }
    return fresh;
}

static unsigned count_edges(void) {
    unsigned n = 0;
    for (unsigned i = 0; i < MAP_SIZE; i++) n += seen[i] != 0;
    return n;
}

/* -------------------------------------------------------------- corpus */

typedef struct {
    uint8_t *data;
    size_t len;
} input;

static input *corpus;
static size_t ncorpus, corpus_cap;
static const char *corpus_out;
static const char *artifact_prefix = "";

static uint64_t fnv(const uint8_t *d, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ d[i]) * 0x100000001b3ull;
    return h;
}

static void save(const char *prefix, const char *kind, const uint8_t *d, size_t n) {
    char p[4096];
    snprintf(p, sizeof p, "%s%s%016llx", prefix, kind, (unsigned long long)fnv(d, n));
    FILE *f = fopen(p, "wb");
    if (!f) return;
    fwrite(d, 1, n, f);
    fclose(f);
    if (*kind) fprintf(stderr, "driver: input written to %s\n", p);
}

static void add(const uint8_t *d, size_t n) {
    if (ncorpus == corpus_cap) {
        corpus_cap = corpus_cap ? corpus_cap * 2 : 64;
        corpus = realloc(corpus, corpus_cap * sizeof *corpus);
    }
    corpus[ncorpus].data = malloc(n ? n : 1);
    memcpy(corpus[ncorpus].data, d, n);
    corpus[ncorpus++].len = n;
    if (corpus_out) {
        char prefix[4096];
        snprintf(prefix, sizeof prefix, "%s/", corpus_out);
        save(prefix, "", d, n);
    }
}

/* the input being run, for the crash and timeout handlers */
static const uint8_t *current;
static size_t current_len;

static void on_death(void) {
    if (current) save(artifact_prefix, "crash-", current, current_len);
}

static void on_alarm(int sig) {
    (void)sig;
    fprintf(stderr, "driver: an input ran past the time limit\n");
    if (current) save(artifact_prefix, "timeout-", current, current_len);
    _exit(70);
}

static unsigned timeout_s = 10;

static unsigned run(const uint8_t *d, size_t n) {
    current = d;
    current_len = n;
    alarm(timeout_s);
    LLVMFuzzerTestOneInput(d, n);
    alarm(0);
    current = NULL;
    return take_coverage();
}

/* ------------------------------------------------------------ mutation */

static uint64_t rng_state;

static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static size_t below(size_t n) { return n ? (size_t)(rnd() % n) : 0; }

static const uint64_t interesting[] = {0, 1, 2, 7, 8, 40, 63, 64, 104, 127, 128, 255, 256, 4095, 4096,
                                       65535, 65536, 0x7fffffff, 0x80000000, 0xffffffff,
                                       0x80000000ull << 32, ~0ull};

#define MAX_LEN (256u << 10)

static void put_le(uint8_t *p, uint64_t v, unsigned w) {
    for (unsigned i = 0; i < w; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_le(const uint8_t *p, unsigned w) {
    uint64_t v = 0;
    for (unsigned i = 0; i < w; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

/* A block length for the block mutations: at most max, within n - at. */
static size_t block(size_t n, size_t at, size_t max) { return 1 + below(n - at < max ? n - at : max); }

/* One mutation of buf[0..*len) (capacity MAX_LEN). */
static void mutate(uint8_t *buf, size_t *len) {
    size_t n = *len;
    static const unsigned widths[] = {1, 2, 4, 8};
    unsigned w = widths[below(4)], c = (unsigned)below(CMP_SLOTS);
    switch (below(12)) {
    case 0: /* flip a bit */
        if (n) buf[below(n)] ^= (uint8_t)(1u << below(8));
        break;
    case 1: /* random byte */
        if (n) buf[below(n)] = (uint8_t)rnd();
        break;
    case 2: /* interesting value at a field-aligned spot */
        if (n >= w) put_le(buf + (below(n - w + 1) & ~(size_t)(w - 1)),
                           interesting[below(sizeof interesting / sizeof *interesting)], w);
        break;
    case 3: /* a small delta to a field */
        if (n >= w) {
            size_t at = below(n - w + 1);
            put_le(buf + at, get_le(buf + at, w) + (uint64_t)((int64_t)below(33) - 16), w);
        }
        break;
    case 4: /* truncate */
        if (n) *len = below(n);
        break;
    case 5: /* delete a block */
        if (n) {
            size_t at = below(n), k = block(n, at, 256);
            memmove(buf + at, buf + at + k, n - at - k);
            *len = n - k;
        }
        break;
    case 6: /* copy a block in (records twice, a page again) */
        if (n) {
            size_t from = below(n), k = block(n, from, 4096), at = below(n + 1);
            if (n + k <= MAX_LEN) {
                memmove(buf + at + k, buf + at, n - at);
                memmove(buf + at, buf + (from >= at ? from + k : from), k);
                *len = n + k;
            }
        }
        break;
    case 7: { /* splice: our head, another input's tail */
        const input *o = &corpus[below(ncorpus)];
        size_t cut = below(n + 1), ocut = below(o->len + 1), k = o->len - ocut;
        if (cut + k > MAX_LEN) k = MAX_LEN - cut;
        memcpy(buf + cut, o->data + ocut, k);
        *len = cut + k;
        break;
    }
    case 8: /* replace a compared operand by what it was compared with */
        if (cmp_w[c] && n >= cmp_w[c])
            for (size_t at = below(n - cmp_w[c] + 1); at + cmp_w[c] <= n; at++)
                if (get_le(buf + at, cmp_w[c]) == cmp_a[c]) {
                    put_le(buf + at, cmp_b[c], cmp_w[c]);
                    break;
                }
        break;
    case 9: /* zero a run (a lost page) */
        if (n) {
            size_t at = below(n);
            memset(buf + at, 0, block(n, at, 4096));
        }
        break;
    case 10: { /* another input's bytes at the same place */
        const input *o = &corpus[below(ncorpus)];
        size_t m = o->len < n ? o->len : n;
        if (m) {
            size_t at = below(m);
            memcpy(buf + at, o->data + at, block(m, at, 512));
        }
        break;
    }
    default: /* a compared value somewhere */
        if (cmp_w[c] && n >= cmp_w[c]) put_le(buf + below(n - cmp_w[c] + 1), cmp_b[c], cmp_w[c]);
        break;
    }
}

/* ---------------------------------------------------------------- main */

static void load_file(const char *p) {
    struct stat st;
    if (stat(p, &st) || !S_ISREG(st.st_mode) || st.st_size > MAX_LEN) return;
    FILE *f = fopen(p, "rb");
    if (!f) return;
    uint8_t *b = malloc((size_t)st.st_size + 1);
    size_t n = fread(b, 1, (size_t)st.st_size, f);
    fclose(f);
    run(b, n);
    add(b, n);
    free(b);
}

/* A corpus directory's files, or one input file. */
static void load(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        if (access(path, R_OK)) {
            fprintf(stderr, "driver: cannot read %s\n", path);
            exit(2);
        }
        load_file(path);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", path, e->d_name);
        load_file(p);
    }
    closedir(d);
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    long long runs = -1; /* with no -max_total_time either: until stopped */
    double max_time = 0;
    unsigned long long seed = (unsigned long long)time(NULL);
    int ndirs = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "-runs=", 6)) runs = atoll(a + 6);
        else if (!strncmp(a, "-max_total_time=", 16)) max_time = atof(a + 16);
        else if (!strncmp(a, "-timeout=", 9)) timeout_s = (unsigned)atoi(a + 9);
        else if (!strncmp(a, "-seed=", 6)) seed = strtoull(a + 6, NULL, 10);
        else if (!strncmp(a, "-artifact_prefix=", 17)) artifact_prefix = a + 17;
        else if (!strncmp(a, "-corpus_out=", 12)) corpus_out = a + 12;
        else if (a[0] == '-') {
            fprintf(stderr, "driver: unknown option %s\n", a);
            return 2;
        } else
            argv[++ndirs] = argv[i];
    }
    rng_state = seed * 0x9e3779b97f4a7c15ull + 1;
    __sanitizer_set_death_callback(on_death);
    signal(SIGALRM, on_alarm);
    for (int i = 1; i <= ndirs; i++) load(argv[i]);
    if (!ncorpus) {
        run(NULL, 0);
        add(NULL, 0);
    }
    fprintf(stderr, "driver: seed %llu, %zu seed inputs, %u edges\n", seed, ncorpus, count_edges());
    uint8_t *buf = malloc(MAX_LEN);
    long long done = 0;
    double start = now();
    while ((runs < 0 || done < runs) && (max_time <= 0 || now() - start < max_time)) {
        const input *base = &corpus[below(ncorpus)];
        size_t len = base->len;
        memcpy(buf, base->data, len);
        for (unsigned k = 1 + (unsigned)below(6); k; k--) mutate(buf, &len);
        if (run(buf, len)) add(buf, len);
        done++;
    }
    fprintf(stderr, "driver: seed %llu\n", seed);
    printf("done: %lld inputs, %zu corpus, %u edges\n", done, ncorpus, count_edges());
    free(buf);
    for (size_t i = 0; i < ncorpus; i++) free(corpus[i].data);
    free(corpus);
    return 0;
}
