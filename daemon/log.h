/* SPDX-License-Identifier: MIT */
/*
 * log: logfmt lines, one per event, on stderr by default:
 *   ts=2026-11-22T01:02:03.456Z level=warn module=backend event=down msg="backend: primary 127.0.0.1:6379: connect: Connection refused"
 * or to syslog (facility daemon, ident kcached) with `[log] target = syslog`:
 * the same line without ts=, which syslog stamps itself, at the matching
 * syslog priority. The level is checked before anything is formatted. Never
 * log a secret or a cached value. log_ratelimit() guards events a peer can
 * trigger at will.
 */
#ifndef KCACHE_LOG_H
#define KCACHE_LOG_H

#include <stdbool.h>

#include "daemon/config.h"

extern int log_level_current;

void log_set_level(int level);

/*
 * Where lines go from now on: LOG_TARGET_STDERR or LOG_TARGET_SYSLOG (enum
 * config_log_target). Switching to syslog opens the connection to it at once
 * (LOG_NDELAY), so a later chroot or sandbox does not lose it.
 */
void log_set_target(int target);

void log_write(int level, const char *module, const char *event, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

#define log_at(level, module, event, ...)                                                          \
        do {                                                                                       \
                if ((level) >= log_level_current)                                                  \
                        log_write((level), (module), (event), __VA_ARGS__);                        \
        } while (0)

#define log_debug(m, e, ...) log_at(LOG_DEBUG, m, e, __VA_ARGS__)
#define log_info(m, e, ...)  log_at(LOG_INFO, m, e, __VA_ARGS__)
#define log_warn(m, e, ...)  log_at(LOG_WARN, m, e, __VA_ARGS__)
#define log_error(m, e, ...) log_at(LOG_ERROR, m, e, __VA_ARGS__)

/* At most `burst` events per second per limiter; counts what it suppressed. */
struct log_limit {
        double window_start;
        unsigned n_in_window;
        unsigned long n_suppressed;
};

/* True if the event may be logged now. */
bool log_ratelimit(struct log_limit *l, unsigned burst);

#endif
