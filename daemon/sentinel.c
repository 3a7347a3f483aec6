/* SPDX-License-Identifier: MIT */
/*
 * sentinel: discovery and failover notices from Redis Sentinel (sentinel.h).
 *
 * A discovery round asks one sentinel at a time, in configured order,
 * starting with the one that answered last: connect (AUTH if a password is
 * set), `SENTINEL get-master-addr-by-name NAME` and `SENTINEL replicas NAME`
 * pipelined, then close. No answer within SENTINEL_QUERY_MS, or a nil master,
 * moves on to the next sentinel. A separate subscriber connection stays on
 * `+switch-master`; a notice for our master moves the primary at once and
 * starts a round for the replica list. Rounds also run every
 * SENTINEL_REFRESH_MS, so a missed notice costs at most that long.
 */
#include "daemon/sentinel.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "daemon/backend.h"
#include "daemon/json.h"
#include "daemon/log.h"
#include "daemon/rconn.h"
#include "daemon/resolve.h"

#define SENTINEL_QUERY_MS    1000
#define SENTINEL_REFRESH_MS  5000
#define SENTINEL_SOON_MS     100
#define SENTINEL_SUB_RETRY_S 0.5

struct sentinel {
        struct ev_loop *loop;     /* ref */
        const struct config *cfg; /* ref */
        struct backend *be;       /* ref, owner */
        void (*ready)(void *priv);
        void *ready_priv;
        char *handshake; /* AUTH?, PING; owned */
        size_t handshake_len;
        unsigned n_handshake;
        /* discovery round */
        struct rconn q;
        int q_idx;      /* sentinel asked now */
        int q_tried;    /* sentinels tried in this round */
        int q_good;     /* the one that answered last */
        bool in_round;
        bool is_connecting; /* inside rconn_connect(): an instant failure is handled inline */
        bool have_master;
        struct config_addr master;
        struct config_addr replicas[CONFIG_MAX_REPLICAS];
        int n_replicas;
        ev_timer q_timer;  /* per-sentinel deadline */
        ev_timer refresh;  /* periodic round */
        ev_timer soon;     /* rediscover request */
        /* subscriber */
        struct rconn sub;
        int sub_idx;
        ev_timer sub_retry;
        /* counters */
        unsigned long n_rounds, n_failed_rounds, n_switches;
        char last_error[200];
};

static void sentinel_round_next(struct sentinel *sn);
static void sub_connect(struct sentinel *sn);

static void
sentinel_report_ready(struct sentinel *sn)
{
        void (*ready)(void *) = sn->ready;

        if (ready == NULL)
                return;
        sn->ready = NULL;
        ready(sn->ready_priv);
}

static int
sentinel_connect(struct sentinel *sn, struct rconn *rc, int idx)
{
        struct sockaddr_storage ss;
        socklen_t len;

        /* Sentinel addresses must be IP literals: the round is bounded and
         * short, and a name would need a resolver round trip first. */
        if (resolve_literal(&sn->cfg->sentinel_addrs[idx], &ss, &len) != 0)
                return -EINVAL;
        return rconn_connect(rc, (struct sockaddr *)&ss, len, sn->handshake, sn->handshake_len,
                             sn->n_handshake, SENTINEL_QUERY_MS);
}

/* --- discovery round ------------------------------------------------------ */

static bool
parse_addr_pair(const redisReply *ip, const redisReply *port, struct config_addr *a)
{
        char *end;
        long p;

        if (ip->type != REDIS_REPLY_STRING || port->type != REDIS_REPLY_STRING ||
            ip->len == 0 || ip->len >= sizeof(a->host))
                return false;
        p = strtol(port->str, &end, 10);
        if (*end != '\0' || p < 1 || p > 65535)
                return false;
        memset(a, 0, sizeof(*a));
        memcpy(a->host, ip->str, ip->len);
        a->port = (int)p;
        return true;
}

static void
sentinel_round_done(struct sentinel *sn, bool ok)
{
        sn->in_round = false;
        ev_timer_stop(sn->loop, &sn->q_timer);
        if (sn->q.state != RCONN_IDLE)
                rconn_close(&sn->q, "round finished");
        sn->n_rounds++;
        if (ok) {
                sn->q_good = sn->q_idx;
                backend_set_topology(sn->be, &sn->master, sn->replicas, sn->n_replicas);
        } else {
                sn->n_failed_rounds++;
                log_warn("sentinel", "round_failed", "sentinel: no sentinel answered for %s: %s",
                         sn->cfg->sentinel_master_name, sn->last_error);
        }
        if (sn->sub.state == RCONN_IDLE && !ev_is_active(&sn->sub_retry))
                sub_connect(sn);
        sentinel_report_ready(sn);
}

static void
on_master_reply(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct sentinel *sn = priv;

        sn->have_master = false;
        if (err != 0 || !sn->in_round)
                return;
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
            parse_addr_pair(reply->element[0], reply->element[1], &sn->master))
                sn->have_master = true;
        else
                snprintf(sn->last_error, sizeof(sn->last_error),
                         "sentinel %d does not know master '%s'", sn->q_idx,
                         sn->cfg->sentinel_master_name);
}

static const redisReply *
flat_get(const redisReply *r, const char *key)
{
        for (size_t i = 0; i + 1 < r->elements; i += 2)
                if (r->element[i]->type == REDIS_REPLY_STRING && strcmp(r->element[i]->str, key) == 0)
                        return r->element[i + 1];
        return NULL;
}

static void
on_replicas_reply(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct sentinel *sn = priv;

        if (!sn->in_round)
                return;
        if (err != 0) {
                snprintf(sn->last_error, sizeof(sn->last_error), "connection lost");
                sentinel_round_next(sn);
                return;
        }
        if (!sn->have_master || reply->type != REDIS_REPLY_ARRAY) {
                sentinel_round_next(sn);
                return;
        }
        sn->n_replicas = 0;
        for (size_t i = 0; i < reply->elements && sn->n_replicas < CONFIG_MAX_REPLICAS; i++) {
                const redisReply *r = reply->element[i];
                const redisReply *ip, *port, *flags;
                if (r->type != REDIS_REPLY_ARRAY)
                        continue;
                ip = flat_get(r, "ip");
                port = flat_get(r, "port");
                flags = flat_get(r, "flags");
                if (ip == NULL || port == NULL)
                        continue;
                /* Replicas Sentinel considers down are not worth a connection. */
                if (flags != NULL && flags->type == REDIS_REPLY_STRING &&
                    (strstr(flags->str, "s_down") || strstr(flags->str, "o_down") ||
                     strstr(flags->str, "disconnected")))
                        continue;
                if (parse_addr_pair(ip, port, &sn->replicas[sn->n_replicas]))
                        sn->n_replicas++;
        }
        sentinel_round_done(sn, true);
}

static void
q_on_state(struct rconn *rc, enum rconn_event ev, const char *why)
{
        struct sentinel *sn = rc->owner;
        const char *name = sn->cfg->sentinel_master_name != NULL ? sn->cfg->sentinel_master_name : "";
        char cmd[512];
        int len;

        if (!sn->in_round)
                return;
        if (ev == RCONN_EV_DOWN) {
                snprintf(sn->last_error, sizeof(sn->last_error), "sentinel %d: %s", sn->q_idx,
                         why != NULL ? why : "closed");
                if (!sn->is_connecting)
                        sentinel_round_next(sn);
                return;
        }
        len = snprintf(cmd, sizeof(cmd),
                       "*3\r\n$8\r\nSENTINEL\r\n$23\r\nget-master-addr-by-name\r\n$%zu\r\n%s\r\n",
                       strlen(name), name);
        if (rconn_send(rc, cmd, (size_t)len, 1, on_master_reply, sn, 0) < 0)
                goto fail;
        len = snprintf(cmd, sizeof(cmd), "*3\r\n$8\r\nSENTINEL\r\n$8\r\nreplicas\r\n$%zu\r\n%s\r\n",
                       strlen(name), name);
        if (rconn_send(rc, cmd, (size_t)len, 1, on_replicas_reply, sn, 0) < 0)
                goto fail;
        return;
fail:
                rconn_close(rc, "out of memory");
}

static void
q_on_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct sentinel *sn = (struct sentinel *)((char *)w - offsetof(struct sentinel, q_timer));

        snprintf(sn->last_error, sizeof(sn->last_error), "sentinel %d: no answer within %d ms",
                 sn->q_idx, SENTINEL_QUERY_MS);
        sentinel_round_next(sn);
}

/* Asks the next sentinel of the round, or ends the round. */
static void
sentinel_round_next(struct sentinel *sn)
{
        ev_timer_stop(sn->loop, &sn->q_timer);
        if (sn->q.state != RCONN_IDLE) {
                bool was = sn->in_round;
                sn->in_round = false; /* the close below must not recurse */
                rconn_close(&sn->q, "next sentinel");
                sn->in_round = was;
        }
        while (sn->q_tried < sn->cfg->n_sentinels) {
                sn->q_idx = (sn->q_good + sn->q_tried) % sn->cfg->n_sentinels;
                sn->q_tried++;
                sn->have_master = false;
                sn->is_connecting = true;
                int r = sentinel_connect(sn, &sn->q, sn->q_idx);
                sn->is_connecting = false;
                if (r < 0) {
                        snprintf(sn->last_error, sizeof(sn->last_error),
                                 "sentinel %d: not an IP address", sn->q_idx);
                        continue;
                }
                if (sn->q.state == RCONN_IDLE)
                        continue; /* failed at once; q_on_state recorded why */
                ev_timer_set(&sn->q_timer, SENTINEL_QUERY_MS / 1000.0 * 1.5, 0.);
                ev_timer_start(sn->loop, &sn->q_timer);
                return;
        }
        sentinel_round_done(sn, false);
}

static void
sentinel_round_start(struct sentinel *sn)
{
        if (sn->in_round)
                return;
        sn->in_round = true;
        sn->q_tried = 0;
        sentinel_round_next(sn);
}

static void
on_refresh(struct ev_loop *loop, ev_timer *w, int revents)
{
        sentinel_round_start((struct sentinel *)((char *)w - offsetof(struct sentinel, refresh)));
}

static void
on_soon(struct ev_loop *loop, ev_timer *w, int revents)
{
        sentinel_round_start((struct sentinel *)((char *)w - offsetof(struct sentinel, soon)));
}

void
sentinel_rediscover(struct sentinel *sn)
{
        if (!ev_is_active(&sn->soon) && !sn->in_round) {
                ev_timer_set(&sn->soon, SENTINEL_SOON_MS / 1000.0, 0.);
                ev_timer_start(sn->loop, &sn->soon);
        }
}

/* --- +switch-master subscription ------------------------------------------ */

static void
sub_on_push(void *priv, redisReply *reply)
{
        struct sentinel *sn = priv;
        const char *name = sn->cfg->sentinel_master_name;
        char mname[256], oldip[64], newip[64];
        int oldport, newport;

        /* ["message", channel, payload]; anything else (subscribe confirmations) is ignored */
        if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 3 ||
            reply->element[0]->type != REDIS_REPLY_STRING ||
            strcmp(reply->element[0]->str, "message") != 0 ||
            reply->element[2]->type != REDIS_REPLY_STRING)
                return;
        if (sscanf(reply->element[2]->str, "%255s %63s %d %63s %d", mname, oldip, &oldport, newip,
                   &newport) != 5 ||
            strcmp(mname, name) != 0)
                return;
        sn->n_switches++;
        log_warn("sentinel", "switch_master", "sentinel: %s switched from %s:%d to %s:%d", name,
                 oldip, oldport, newip, newport);
        if (strlen(newip) < sizeof(sn->master.host) && newport > 0 && newport < 65536) {
                struct config_addr a = {0};
                snprintf(a.host, sizeof(a.host), "%s", newip);
                a.port = newport;
                sn->master = a;
                /* Move writes now; the round below brings the replica list. */
                backend_set_topology(sn->be, &a, sn->replicas, sn->n_replicas);
        }
        sentinel_round_start(sn);
}

static void
sub_on_subscribed(void *priv, uint32_t gen, redisReply *reply, int err)
{
        struct sentinel *sn = priv;

        if (err == 0 && reply->type != REDIS_REPLY_ERROR)
                log_info("sentinel", "subscribed", "sentinel: subscribed to +switch-master on sentinel %d",
                         sn->sub_idx);
}

static void
sub_on_state(struct rconn *rc, enum rconn_event ev, const char *why)
{
        struct sentinel *sn = rc->owner;
        static const char cmd[] = "*2\r\n$9\r\nSUBSCRIBE\r\n$14\r\n+switch-master\r\n";

        if (ev == RCONN_EV_UP) {
                if (rconn_send(rc, cmd, sizeof(cmd) - 1, 1, sub_on_subscribed, sn, 0) < 0)
                        rconn_close(rc, "out of memory");
                return;
        }
        log_debug("sentinel", "sub_down", "sentinel: subscriber on sentinel %d: %s", sn->sub_idx, why);
        /* Try the next sentinel shortly, and ask again: a notice may have been missed. */
        sn->sub_idx = (sn->sub_idx + 1) % sn->cfg->n_sentinels;
        ev_timer_set(&sn->sub_retry, SENTINEL_SUB_RETRY_S, 0.);
        ev_timer_start(sn->loop, &sn->sub_retry);
        sentinel_rediscover(sn);
}

static void
sub_connect(struct sentinel *sn)
{
        for (int k = 0; k < sn->cfg->n_sentinels; k++) {
                if (sentinel_connect(sn, &sn->sub, sn->sub_idx) == 0 && sn->sub.state != RCONN_IDLE)
                        return;
                if (ev_is_active(&sn->sub_retry))
                        return; /* the failure was reported and a retry is planned */
                sn->sub_idx = (sn->sub_idx + 1) % sn->cfg->n_sentinels;
        }
}

static void
on_sub_retry(struct ev_loop *loop, ev_timer *w, int revents)
{
        struct sentinel *sn = (struct sentinel *)((char *)w - offsetof(struct sentinel, sub_retry));

        if (sn->sub.state == RCONN_IDLE)
                sub_connect(sn);
}

/* --- lifecycle --------------------------------------------------------------- */

int
sentinel_new(struct sentinel **out, struct ev_loop *loop, const struct config *cfg,
             struct backend *be)
{
        struct sentinel *sn = calloc(1, sizeof(*sn));
        struct buf b = BUF_INIT;
        char *cmd = NULL;

        if (sn == NULL)
                return -ENOMEM;
        sn->loop = loop;
        sn->cfg = cfg;
        sn->be = be;
        if (cfg->sentinel_password != NULL && cfg->sentinel_password[0] != '\0') {
                const char *argv[2] = {"AUTH", cfg->sentinel_password};
                size_t argvlen[2] = {4, strlen(cfg->sentinel_password)};
                int len = redisFormatCommandArgv(&cmd, 2, argv, argvlen);
                if (len < 0 || buf_append(&b, cmd, (size_t)len) < 0)
                        goto fail;
                redisFreeCommand(cmd);
                cmd = NULL;
                sn->n_handshake++;
        }
        if (buf_append(&b, "*1\r\n$4\r\nPING\r\n", 14) < 0)
                goto fail;
        sn->n_handshake++;
        sn->handshake = (char *)b.data;
        sn->handshake_len = b.len;
        rconn_init(&sn->q, loop, q_on_state, sn, "sentinel query");
        rconn_init(&sn->sub, loop, sub_on_state, sn, "sentinel subscriber");
        rconn_set_push(&sn->sub, sub_on_push, sn);
        ev_timer_init(&sn->q_timer, q_on_timeout, 0., 0.);
        ev_timer_init(&sn->refresh, on_refresh, SENTINEL_REFRESH_MS / 1000.0,
                      SENTINEL_REFRESH_MS / 1000.0);
        ev_timer_init(&sn->soon, on_soon, 0., 0.);
        ev_timer_init(&sn->sub_retry, on_sub_retry, 0., 0.);
        *out = sn;
        return 0;
fail:
        redisFreeCommand(cmd);
        buf_deinit(&b);
        free(sn);
        return -ENOMEM;
}

struct sentinel *
sentinel_free(struct sentinel *sn)
{
        if (sn == NULL)
                return NULL;
        sn->in_round = false;
        ev_timer_stop(sn->loop, &sn->q_timer);
        ev_timer_stop(sn->loop, &sn->refresh);
        ev_timer_stop(sn->loop, &sn->soon);
        ev_timer_stop(sn->loop, &sn->sub_retry);
        rconn_deinit(&sn->q);
        rconn_deinit(&sn->sub);
        if (sn->handshake != NULL) {
                memset(sn->handshake, 0, sn->handshake_len);
                free(sn->handshake);
        }
        free(sn);
        return NULL;
}

void
sentinel_start(struct sentinel *sn, void (*ready)(void *priv), void *priv)
{
        sn->ready = ready;
        sn->ready_priv = priv;
        ev_timer_start(sn->loop, &sn->refresh);
        sentinel_round_start(sn);
}

void
sentinel_write_json(struct sentinel *sn, struct json *j)
{
        char a[CONFIG_HOST_MAX + 16];
        const struct config_addr *p = backend_primary_addr(sn->be);

        json_obj_begin(j);
        json_key(j, "master_name");
        json_str(j, sn->cfg->sentinel_master_name);
        json_key(j, "primary");
        if (p != NULL)
                json_str(j, config_addr_str(p, a, sizeof(a)));
        else
                json_null(j);
        json_key(j, "failovers");
        json_uint(j, sn->n_switches);
        json_key(j, "rounds");
        json_uint(j, sn->n_rounds);
        json_key(j, "failed_rounds");
        json_uint(j, sn->n_failed_rounds);
        json_key(j, "subscribed_to");
        if (sn->sub.state == RCONN_UP)
                json_int(j, sn->sub_idx);
        else
                json_null(j);
        json_obj_end(j);
}
