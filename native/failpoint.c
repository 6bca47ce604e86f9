/* failpoint.c: named crash points for the crash-recovery tests. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "aof_internal.h"

/* Every AOF_FAILPOINT site in the C sources, for the test that proves each
 * one is exercised. Keep in step with the sites. */
static const char names[] =
    "create.opened create.header_written seal.index_written seal.synced seal.truncated "
    "recover.truncated append_many.half tx.before_commit_record sync.before_msync";

int aof_fp_armed;
static char armed_name[64];
static int armed_skip, armed_action;

void aof_failpoint_arm(const char *name, int skip, int action) {
    if (!name || !*name) {
        aof_fp_armed = 0;
        return;
    }
    snprintf(armed_name, sizeof armed_name, "%s", name);
    armed_skip = skip;
    armed_action = action;
    aof_fp_armed = 1;
}

const char *aof_failpoint_names(void) { return names; }

void aof_fp_hit(const char *name) {
    if (strcmp(name, armed_name) != 0) return;
    if (armed_skip-- > 0) return;
    if (armed_action == 1) raise(SIGKILL);
    _exit(AOF_FAILPOINT_EXIT);
}
