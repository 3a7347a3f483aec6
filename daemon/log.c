/* SPDX-License-Identifier: MIT */
/*
 * log: logfmt writer. The message is escaped (quotes, backslashes, control
 * bytes) so one event is always one line, whatever a peer put in it.
 */
#include "daemon/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/*
 * <syslog.h> names two of its priorities LOG_DEBUG and LOG_INFO, as macros
 * that would shadow enum log_level's constants: take its values here, then
 * drop the macros so the rest of this file means ours.
 */
#include <syslog.h>
static const int log_syslog_prio[] = {LOG_DEBUG, LOG_INFO, LOG_WARNING, LOG_ERR};
#undef LOG_DEBUG
#undef LOG_INFO
_Static_assert(LOG_DEBUG == 0 && LOG_INFO == 1 && LOG_WARN == 2 && LOG_ERROR == 3,
               "log_syslog_prio[] is indexed by enum log_level");

int log_level_current = LOG_INFO;
static int log_target = LOG_TARGET_STDERR;

void
log_set_level(int level)
{
        log_level_current = level;
}

void
log_set_target(int target)
{
        if (target == log_target)
                return;
        if (target == LOG_TARGET_SYSLOG)
                openlog("kcached", LOG_PID | LOG_NDELAY, LOG_DAEMON);
        else
                closelog();
        log_target = target;
}

void
log_write(int level, const char *module, const char *event, const char *fmt, ...)
{
        char msg[1024], esc[2048];
        struct timespec ts;
        struct tm tm;
        va_list ap;
        size_t j = 0;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        for (size_t i = 0; msg[i] != '\0' && j + 5 < sizeof(esc); i++) {
                unsigned char ch = (unsigned char)msg[i];
                if (ch == '"' || ch == '\\') {
                        esc[j++] = '\\';
                        esc[j++] = (char)ch;
                } else if (ch < 0x20 || ch == 0x7f) {
                        j += (size_t)snprintf(esc + j, sizeof(esc) - j, "\\x%02x", ch);
                } else {
                        esc[j++] = (char)ch;
                }
        }
        esc[j] = '\0';

        if (log_target == LOG_TARGET_SYSLOG) {
                int prio =
                        level >= LOG_DEBUG && level <= LOG_ERROR ? log_syslog_prio[level] : LOG_ERR;
                syslog(prio, "level=%s module=%s event=%s msg=\"%s\"", log_level_name(level),
                       module, event, esc);
                return;
        }
        clock_gettime(CLOCK_REALTIME, &ts);
        gmtime_r(&ts.tv_sec, &tm);
        fprintf(stderr,
                "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s module=%s event=%s msg=\"%s\"\n",
                tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                ts.tv_nsec / 1000000, log_level_name(level), module, event, esc);
}

bool
log_ratelimit(struct log_limit *l, unsigned burst)
{
        struct timespec ts;
        double now;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        now = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
        if (now - l->window_start >= 1.0) {
                l->window_start = now;
                l->n_in_window = 0;
        }
        if (l->n_in_window >= burst) {
                l->n_suppressed++;
                return false;
        }
        l->n_in_window++;
        return true;
}
