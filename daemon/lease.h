/* SPDX-License-Identifier: MIT */
/*
 * lease: get_or_set, fill and release — one loader for a cold key, across
 * the pod and across pods.
 *
 * Per key (ns, key, field, schema) this kcached keeps at most one entry:
 *
 *   ACQUIRING --GOS script--> hit: answer everyone, drop the entry
 *       ^                  -> lease granted here: HELD (holder = a client)
 *       |                  -> lease held elsewhere: REMOTE
 *       +-- drive(): the next waiter runs the script again, when the holder
 *           released, disconnected or let the lease expire, when another
 *           kcached's fill/release notice arrives, or the lease's PTTL ran out
 *
 * Every other get_or_set for the key waits on the entry (no polling); a
 * fill through this kcached answers them with the value at once.
 */
#ifndef KCACHE_LEASE_H
#define KCACHE_LEASE_H

#include <stdint.h>

struct server;

int lease_init(struct server *srv);
void lease_deinit(void);
/* A client connection went away: its leases pass to waiters. */
void lease_conn_closed(uint64_t conn_id);

#endif
