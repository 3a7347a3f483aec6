/* SPDX-License-Identifier: MIT */
/*
 * sentinel: follows a Redis Sentinel deployment, as the Sentinel client spec
 * describes: ask the sentinels in order (each with a short timeout) for the
 * primary (`SENTINEL get-master-addr-by-name`) and the replicas (`SENTINEL
 * replicas`), hand the answer to the backend, stay subscribed to
 * `+switch-master` on one sentinel, and ask again periodically and whenever
 * the backend saw the primary move (-READONLY, ROLE not master).
 */
#ifndef KCACHE_SENTINEL_H
#define KCACHE_SENTINEL_H

#include <ev.h>

#include "daemon/config.h"

struct backend;
struct json;
struct sentinel;

/* cfg and be are refs that outlive the sentinel. */
int sentinel_new(struct sentinel **out, struct ev_loop *loop, const struct config *cfg,
                 struct backend *be);
struct sentinel *sentinel_free(struct sentinel *sn);

/* Starts discovery; ready(priv) once the first round finished either way. */
void sentinel_start(struct sentinel *sn, void (*ready)(void *priv), void *priv);
/* Asks the sentinels again soon (rate-limited). */
void sentinel_rediscover(struct sentinel *sn);
void sentinel_write_json(struct sentinel *sn, struct json *j);

#endif
