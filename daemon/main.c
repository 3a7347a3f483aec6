/* SPDX-License-Identifier: MIT */
/*
 * kcached: entry point. Parses argv, loads the configuration, and runs the
 * server in the foreground (supervisors such as systemd own daemonizing).
 *   kcached -c FILE        run
 *   kcached -t -c FILE     check FILE, print the running config with sources
 */
#include <getopt.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/config.h"
#include "daemon/log.h"
#include "daemon/server.h"
#include "kcache-version.h"

static void
usage(FILE *out)
{
        fprintf(out, "usage: kcached [-t] [-c FILE]\n"
                     "  -c, --config FILE  INI configuration (default: none, built-in defaults)\n"
                     "  -t, --test         check the configuration, print it with sources, exit\n"
                     "  -V, --version      print the version\n"
                     "  -h, --help         this text\n");
}

/*
 * Every client and every Redis connection is a descriptor: raise the soft
 * NOFILE limit to the hard one, and refuse a max_clients that cannot fit.
 */
static int
check_fd_limit(struct config *cfg, bool raise, char *err, size_t errlen)
{
        struct rlimit rl;
        long need = (long)cfg->max_clients + cfg->pool_size +
                    (long)(cfg->n_sentinels > 0 ? 16 : cfg->n_replicas) * cfg->replica_pool_size +
                    64; /* listeners, admin, subscriber, sentinels, resolver, logs */

        if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
                return 0;
        if (rl.rlim_max != RLIM_INFINITY && (long)rl.rlim_max < need &&
            config_source_of(cfg, "server", "max_clients") == CONFIG_SRC_DEFAULT &&
            (long)rl.rlim_max > need - cfg->max_clients + 16) {
                /* Only the default asked for more: fit it, and say so. */
                cfg->max_clients = (int)((long)rl.rlim_max - (need - cfg->max_clients));
                fprintf(stderr, "kcached: [server] max_clients lowered to %d to fit the hard "
                        "NOFILE limit %ld\n", cfg->max_clients, (long)rl.rlim_max);
                return 0;
        }
        if (rl.rlim_max != RLIM_INFINITY && (long)rl.rlim_max < need) {
                snprintf(err, errlen, "[server] max_clients: %d clients and the Redis pools need %ld "
                         "file descriptors, the hard NOFILE limit is %ld (raise it, e.g. "
                         "LimitNOFILE=, or lower max_clients)",
                         cfg->max_clients, need, (long)rl.rlim_max);
                return -1;
        }
        if (raise && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void)setrlimit(RLIMIT_NOFILE, &rl);
        }
        return 0;
}

int
main(int argc, char **argv)
{
        static const struct option longopts[] = {
                {"config", required_argument, NULL, 'c'},
                {"test", no_argument, NULL, 't'},
                {"version", no_argument, NULL, 'V'},
                {"help", no_argument, NULL, 'h'},
                {NULL, 0, NULL, 0},
        };
        const char *path = NULL;
        bool test_only = false;
        struct config cfg;
        struct server srv;
        char err[512];
        int ch, rc;

        while ((ch = getopt_long(argc, argv, "c:tVh", longopts, NULL)) != -1) {
                switch (ch) {
                case 'c':
                        path = optarg;
                        break;
                case 't':
                        test_only = true;
                        break;
                case 'V':
                        printf("kcached %s\n", KCACHE_VERSION);
                        return 0;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind != argc) {
                usage(stderr);
                return 2;
        }
        if (config_load(&cfg, path, err, sizeof(err)) < 0) {
                fprintf(stderr, "kcached: %s\n", err);
                config_deinit(&cfg); /* a failed load leaves the defaults, which own memory */
                return 1;
        }
        if (check_fd_limit(&cfg, !test_only, err, sizeof(err)) < 0) {
                fprintf(stderr, "kcached: %s\n", err);
                config_deinit(&cfg);
                return 1;
        }
        if (test_only) {
                config_dump(&cfg, stdout);
                fprintf(stderr, "kcached: configuration %s is valid\n", path ? path : "(defaults)");
                config_deinit(&cfg);
                return 0;
        }
        log_set_level(cfg.log_level);
        log_set_target(cfg.log_target);
        struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
        if (loop == NULL) {
                fprintf(stderr, "kcached: cannot initialise libev\n");
                return 1;
        }
        if (server_init(&srv, loop, &cfg, err, sizeof(err)) < 0) {
                log_error("server", "start_failed", "server: %s", err);
                fprintf(stderr, "kcached: %s\n", err);
                config_deinit(&cfg);
                return 1;
        }
        rc = server_run(&srv);
        server_deinit(&srv);
        config_deinit(&cfg);
        ev_loop_destroy(loop);
        return rc;
}
