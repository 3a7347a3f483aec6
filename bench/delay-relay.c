// SPDX-License-Identifier: MIT
/*
 * delay-relay: a TCP relay that adds a fixed one-way delay to every byte, in both directions:
 * the network between a pod and its Redis, on one machine. With -d 250 a round trip through it
 * takes 500 us more than through bench/relay.c.
 *
 *   client --tcp or unix--> delay-relay --tcp--> redis
 *            (each chunk read is written to the other side DELAY us later)
 *
 * Each direction is a FIFO of the chunks read, each with the time it may leave; one timerfd
 * (absolute CLOCK_MONOTONIC, timer slack 1 ns) wakes the loop for the earliest. Ordering holds
 * because the delay is the same for every chunk. A direction holding more than RELAY_MAX_QUEUED
 * bytes stops reading its source until it drains, so memory stays bounded.
 *
 * Usage: delay-relay [-d DELAY_US] LISTEN UPSTREAM
 *   LISTEN: HOST:PORT, or a path for a Unix socket; UPSTREAM: HOST:PORT (IPv4). Default 250 us.
 *   Build: cc -std=c11 -O2 -o delay-relay bench/delay-relay.c
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* accept4 */
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define RELAY_READ       65536
#define RELAY_MAX_QUEUED (4u << 20)

struct chunk {
        struct chunk *next;
        uint64_t due_ns;
        size_t len, off;
        unsigned char data[];
};

struct pair;

/* One end: the socket, and the chunks read from the other end waiting to be written to it. */
struct side {
        int fd;
        struct pair *pair;         /* ref, owner */
        struct side *peer;         /* ref */
        struct chunk *head, *tail; /* owned: bytes for this fd, oldest first */
        size_t queued;
        bool wants_out;
        bool reading; /* EPOLLIN on: the peer's queue of our bytes has room */
};

struct pair {
        struct side a, b;
        bool is_dead;
        struct pair *next_dead, *next_live, *prev_live;
};

static int ep, tfd;
static uint64_t delay_ns = 250000;
static struct pair *dead, *live;
static struct sockaddr_in upstream;
static uint64_t timer_armed_ns; /* 0: disarmed */

static void
die(const char *what)
{
        fprintf(stderr, "delay-relay: %s: %s\n", what, strerror(errno));
        exit(1);
}

static uint64_t
now_ns(void)
{
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
side_update(struct side *s)
{
        struct epoll_event ev = {.data.ptr = s};

        if (s->reading)
                ev.events |= EPOLLIN;
        if (s->wants_out)
                ev.events |= EPOLLOUT;
        if (epoll_ctl(ep, EPOLL_CTL_MOD, s->fd, &ev) == -1)
                die("epoll_ctl");
}

static void
free_chunks(struct side *s)
{
        while (s->head != NULL) {
                struct chunk *c = s->head;

                s->head = c->next;
                free(c);
        }
        s->tail = NULL;
}

static void
pair_close(struct pair *p)
{
        if (p->is_dead)
                return;
        close(p->a.fd);
        close(p->b.fd);
        free_chunks(&p->a);
        free_chunks(&p->b);
        p->is_dead = true;
        if (p->prev_live != NULL)
                p->prev_live->next_live = p->next_live;
        else
                live = p->next_live;
        if (p->next_live != NULL)
                p->next_live->prev_live = p->prev_live;
        p->next_dead = dead;
        dead = p;
}

/* Writes s's due chunks. Returns false if the pair must be closed. */
static bool
side_drain(struct side *s, uint64_t now)
{
        while (s->head != NULL && s->head->due_ns <= now) {
                struct chunk *c = s->head;
                ssize_t n = write(s->fd, c->data + c->off, c->len - c->off);

                if (n == -1 && errno == EINTR)
                        continue;
                if (n == -1 && errno == EAGAIN) {
                        if (!s->wants_out) {
                                s->wants_out = true;
                                side_update(s);
                        }
                        return true;
                }
                if (n == -1)
                        return false;
                c->off += (size_t)n;
                if (c->off < c->len)
                        continue;
                s->head = c->next;
                if (s->head == NULL)
                        s->tail = NULL;
                s->queued -= c->len;
                free(c);
        }
        if (s->wants_out) {
                s->wants_out = false;
                side_update(s);
        }
        /* Room again for the peer's bytes: read it again. */
        if (!s->peer->reading && s->queued < RELAY_MAX_QUEUED) {
                s->peer->reading = true;
                side_update(s->peer);
        }
        return true;
}

/* Reads from s into its peer's queue. Returns false if the pair must be closed. */
static bool
side_read(struct side *s, uint64_t now)
{
        struct side *dst = s->peer;
        struct chunk *c = malloc(sizeof(*c) + RELAY_READ);
        ssize_t n;

        if (c == NULL)
                die("malloc");
        n = read(s->fd, c->data, RELAY_READ);
        if (n <= 0) {
                free(c);
                return n == -1 && (errno == EAGAIN || errno == EINTR);
        }
        c->len = (size_t)n;
        c->off = 0;
        c->next = NULL;
        c->due_ns = now + delay_ns;
        if (dst->tail != NULL)
                dst->tail->next = c;
        else
                dst->head = c;
        dst->tail = c;
        dst->queued += c->len;
        if (dst->queued >= RELAY_MAX_QUEUED) {
                s->reading = false;
                side_update(s);
        }
        return true;
}

/* Arms the timer for the earliest due chunk of any pair. */
static void
timer_rearm(void)
{
        uint64_t next = 0;
        struct itimerspec its = {0};

        for (struct pair *p = live; p != NULL; p = p->next_live) {
                if (p->a.head != NULL && !p->a.wants_out && (next == 0 || p->a.head->due_ns < next))
                        next = p->a.head->due_ns;
                if (p->b.head != NULL && !p->b.wants_out && (next == 0 || p->b.head->due_ns < next))
                        next = p->b.head->due_ns;
        }
        if (next == timer_armed_ns)
                return;
        timer_armed_ns = next;
        its.it_value.tv_sec = (time_t)(next / 1000000000u);
        its.it_value.tv_nsec = (long)(next % 1000000000u);
        if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) == -1)
                die("timerfd_settime");
}

static void
accept_one(int lfd)
{
        struct pair *p;
        int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), sfd, one = 1;
        struct epoll_event ev = {.events = EPOLLIN};

        if (cfd == -1)
                return;
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)); /* fails on Unix: fine */
        sfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (sfd == -1)
                die("socket");
        setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        /* Blocking connect to a loopback Redis: at once. */
        if (connect(sfd, (struct sockaddr *)&upstream, sizeof(upstream)) == -1) {
                fprintf(stderr, "delay-relay: connect upstream: %s\n", strerror(errno));
                close(cfd);
                close(sfd);
                return;
        }
        if (fcntl(sfd, F_SETFL, fcntl(sfd, F_GETFL) | O_NONBLOCK) == -1)
                die("fcntl");
        p = calloc(1, sizeof(*p));
        if (p == NULL)
                die("calloc");
        p->a = (struct side){.fd = cfd, .pair = p, .peer = &p->b, .reading = true};
        p->b = (struct side){.fd = sfd, .pair = p, .peer = &p->a, .reading = true};
        p->next_live = live;
        if (live != NULL)
                live->prev_live = p;
        live = p;
        ev.data.ptr = &p->a;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &ev) == -1)
                die("epoll_ctl");
        ev.data.ptr = &p->b;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev) == -1)
                die("epoll_ctl");
}

static int
listen_on(const char *addr)
{
        const char *colon = strrchr(addr, ':');
        int fd, one = 1;

        if (strchr(addr, '/') != NULL || colon == NULL) {
                struct sockaddr_un sa = {.sun_family = AF_UNIX};

                if (strlen(addr) >= sizeof(sa.sun_path)) {
                        fprintf(stderr, "delay-relay: %s: path too long\n", addr);
                        exit(2);
                }
                memcpy(sa.sun_path, addr, strlen(addr));
                unlink(addr);
                fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (fd == -1 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1)
                        die(addr);
        } else {
                struct sockaddr_in sa = {.sin_family = AF_INET};
                char host[64];

                if ((size_t)(colon - addr) >= sizeof(host)) {
                        fprintf(stderr, "delay-relay: %s: bad address\n", addr);
                        exit(2);
                }
                memcpy(host, addr, (size_t)(colon - addr));
                host[colon - addr] = '\0';
                sa.sin_port = htons((uint16_t)atoi(colon + 1));
                if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
                        fprintf(stderr, "delay-relay: %s: not an IPv4 address\n", host);
                        exit(2);
                }
                fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (fd == -1)
                        die("socket");
                setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
                if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1)
                        die(addr);
        }
        if (listen(fd, 512) == -1)
                die("listen");
        return fd;
}

int
main(int argc, char **argv)
{
        struct epoll_event evs[64], lev = {.events = EPOLLIN}, tev = {.events = EPOLLIN};
        const char *colon;
        char host[64];
        int lfd, ch;

        while ((ch = getopt(argc, argv, "d:")) != -1) {
                if (ch != 'd')
                        goto usage;
                delay_ns = (uint64_t)(atof(optarg) * 1000);
        }
        if (argc - optind != 2)
                goto usage;
        colon = strrchr(argv[optind + 1], ':');
        if (colon == NULL || (size_t)(colon - argv[optind + 1]) >= sizeof(host))
                goto usage;
        memcpy(host, argv[optind + 1], (size_t)(colon - argv[optind + 1]));
        host[colon - argv[optind + 1]] = '\0';
        upstream.sin_family = AF_INET;
        upstream.sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &upstream.sin_addr) != 1)
                goto usage;
        signal(SIGPIPE, SIG_IGN);
        /* Wake-ups on time: the default 50 us slack would be a fifth of the delay. */
        prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
        lfd = listen_on(argv[optind]);
        ep = epoll_create1(EPOLL_CLOEXEC);
        tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
        if (ep == -1 || tfd == -1)
                die("epoll/timerfd");
        lev.data.ptr = &lfd;
        tev.data.ptr = &tfd;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) == -1 ||
            epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev) == -1)
                die("epoll_ctl");
        for (;;) {
                int n = epoll_wait(ep, evs, 64, -1);
                uint64_t now = now_ns();

                if (n == -1 && errno != EINTR)
                        die("epoll_wait");
                for (int i = 0; i < n; i++) {
                        struct side *s;

                        if (evs[i].data.ptr == &lfd) {
                                accept_one(lfd);
                                continue;
                        }
                        if (evs[i].data.ptr == &tfd) {
                                uint64_t ticks;

                                if (read(tfd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
                                        die("timerfd read");
                                timer_armed_ns = 0;
                                continue;
                        }
                        s = evs[i].data.ptr;
                        if (s->pair->is_dead)
                                continue;
                        if ((evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && s->reading &&
                            !side_read(s, now))
                                pair_close(s->pair);
                        else if ((evs[i].events & EPOLLOUT) && !side_drain(s, now))
                                pair_close(s->pair);
                }
                /* Whatever is due now, on every connection; then sleep until the next. */
                now = now_ns();
                for (struct pair *p = live, *next; p != NULL; p = next) {
                        next = p->next_live;
                        if ((p->a.head != NULL && p->a.head->due_ns <= now &&
                             !side_drain(&p->a, now)) ||
                            (p->b.head != NULL && p->b.head->due_ns <= now &&
                             !side_drain(&p->b, now)))
                                pair_close(p);
                }
                timer_rearm();
                while (dead != NULL) {
                        struct pair *p = dead;

                        dead = p->next_dead;
                        free(p);
                }
        }
usage:
        fprintf(stderr, "usage: delay-relay [-d DELAY_US] LISTEN UPSTREAM_HOST:PORT\n"
                        "  LISTEN: HOST:PORT or a Unix socket path; the delay is one-way, each "
                        "direction (default 250)\n");
        return 2;
}
