/* SPDX-License-Identifier: MIT */
/* stats: storage for the daemon's counters, and their JSON form (see stats.h). */
#include "daemon/stats.h"

#include "daemon/json.h"

struct stats stats;

void
stats_write_json(struct json *j, double uptime_s)
{
        json_obj_begin(j);
        json_key(j, "uptime_s");
        json_double(j, uptime_s);
        /* The short name operators look for first; clients_connected says the same. */
        json_key(j, "clients");
        json_uint(j, stats.clients_connected);
#define X(name, type, help)                                                                        \
        json_key(j, #name);                                                                        \
        json_uint(j, stats.name);
        STATS_TABLE(X)
#undef X
        json_key(j, "requests_by_method");
        json_obj_begin(j);
        for (int m = 0; m < RPC_M_COUNT; m++) {
                json_key(j, rpc_methods[m].name);
                json_uint(j, stats.requests_by_method[m]);
        }
        json_obj_end(j);
        json_key(j, "errors_by_code");
        json_obj_begin(j);
        for (int e = 0; e < RPC_ERR_COUNT; e++) {
                json_key(j, rpc_errors[e].name);
                json_uint(j, stats.errors_by_code[e]);
        }
        json_obj_end(j);
        json_obj_end(j);
}
