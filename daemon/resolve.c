/* SPDX-License-Identifier: MIT */
/*
 * resolve: getaddrinfo() on detached threads, results handed back to the
 * loop thread through a mutex-protected done list and one ev_async.
 *
 * Ownership: a job belongs to its thread until the thread pushes it on the
 * done list; then to the loop, which calls the callback (unless cancelled)
 * and frees it. Cancelling only clears the callback, so no one ever frees a
 * job a thread still uses.
 */
#include "daemon/resolve.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

struct resolve_job {
        struct resolve_job *next;
        char host[CONFIG_HOST_MAX];
        char port[8];
        resolve_cb cb; /* NULL once cancelled; touched on the loop thread only */
        void *priv;
        int err;
        struct sockaddr_storage addrs[RESOLVE_MAX_ADDRS];
        socklen_t lens[RESOLVE_MAX_ADDRS];
        int n;
};

static struct ev_loop *resolve_loop;
static ev_async resolve_async;
static pthread_mutex_t resolve_lock = PTHREAD_MUTEX_INITIALIZER;
static struct resolve_job *resolve_done;

static void
resolve_on_async(struct ev_loop *loop, ev_async *w, int revents)
{
        struct resolve_job *job;

        pthread_mutex_lock(&resolve_lock);
        job = resolve_done;
        resolve_done = NULL;
        pthread_mutex_unlock(&resolve_lock);
        while (job != NULL) {
                struct resolve_job *next = job->next;
                if (job->cb != NULL)
                        job->cb(job->priv, job->err, job->addrs, job->lens, job->n);
                free(job);
                job = next;
        }
}

int
resolve_init(struct ev_loop *loop)
{
        resolve_loop = loop;
        ev_async_init(&resolve_async, resolve_on_async);
        ev_async_start(loop, &resolve_async);
        ev_unref(loop); /* a pending lookup alone must not keep the loop alive */
        return 0;
}

void
resolve_deinit(void)
{
        if (resolve_loop != NULL) {
                ev_ref(resolve_loop);
                ev_async_stop(resolve_loop, &resolve_async);
        }
        /* Jobs still on threads are leaked on purpose: they finish after exit. */
}

int
resolve_literal(const struct config_addr *a, struct sockaddr_storage *addr, socklen_t *len)
{
        memset(addr, 0, sizeof(*addr));
        if (a->is_unix) {
                struct sockaddr_un *un = (struct sockaddr_un *)addr;
                un->sun_family = AF_UNIX;
                snprintf(un->sun_path, sizeof(un->sun_path), "%s", a->path);
                *len = sizeof(*un);
                return 0;
        }
        struct sockaddr_in *in4 = (struct sockaddr_in *)addr;
        if (inet_pton(AF_INET, a->host, &in4->sin_addr) == 1) {
                in4->sin_family = AF_INET;
                in4->sin_port = htons((uint16_t)a->port);
                *len = sizeof(*in4);
                return 0;
        }
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)addr;
        if (inet_pton(AF_INET6, a->host, &in6->sin6_addr) == 1) {
                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons((uint16_t)a->port);
                *len = sizeof(*in6);
                return 0;
        }
        return RESOLVE_E_NAME;
}

static void *
resolve_thread(void *arg)
{
        struct resolve_job *job = arg;
        struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC};
        struct addrinfo *res = NULL;

        job->err = getaddrinfo(job->host, job->port, &hints, &res);
        if (job->err == 0) {
                /* Several: "localhost" may say ::1 first while Redis listens on 127.0.0.1. */
                for (struct addrinfo *ai = res; ai != NULL && job->n < RESOLVE_MAX_ADDRS;
                     ai = ai->ai_next) {
                        if (ai->ai_addrlen > sizeof(job->addrs[0]))
                                continue;
                        memcpy(&job->addrs[job->n], ai->ai_addr, ai->ai_addrlen);
                        job->lens[job->n++] = ai->ai_addrlen;
                }
                freeaddrinfo(res);
                if (job->n == 0)
                        job->err = EAI_FAMILY;
        }
        pthread_mutex_lock(&resolve_lock);
        job->next = resolve_done;
        resolve_done = job;
        pthread_mutex_unlock(&resolve_lock);
        ev_async_send(resolve_loop, &resolve_async);
        return NULL;
}

int
resolve_start(const struct config_addr *a, resolve_cb cb, void *priv, struct resolve_job **out)
{
        struct resolve_job *job;
        pthread_attr_t attr;
        pthread_t tid;
        int r;

        job = calloc(1, sizeof(*job));
        if (job == NULL)
                return -ENOMEM;
        snprintf(job->host, sizeof(job->host), "%s", a->host);
        snprintf(job->port, sizeof(job->port), "%d", a->port);
        job->cb = cb;
        job->priv = priv;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        r = pthread_create(&tid, &attr, resolve_thread, job);
        pthread_attr_destroy(&attr);
        if (r != 0) {
                free(job);
                return -r;
        }
        *out = job;
        return 0;
}

void
resolve_cancel(struct resolve_job *job)
{
        if (job != NULL)
                job->cb = NULL;
}
