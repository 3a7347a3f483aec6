/* SPDX-License-Identifier: MIT */
/*
 * cache: the method handlers. Each turns an RPC request into Redis commands
 * (keys carry key_prefix), submits them through the backend, and turns the
 * reply into the RPC result. One handler per row of proto/methods.def, named
 * handler_<method>; dispatch.c has already checked the argument count and the
 * options.
 */
#ifndef KCACHE_CACHE_H
#define KCACHE_CACHE_H

#include <msgpack.h>

#include "daemon/dispatch.h"

struct server;

void cache_init(struct server *srv);

#define KC_METHOD(name, n_args_, flags_, opts_, params_, result_)                                  \
        void handler_##name(struct req *r, const msgpack_object *args, const struct opts *o);
#include "methods.def"
#undef KC_METHOD

#endif
