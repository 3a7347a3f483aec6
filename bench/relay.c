// SPDX-License-Identifier: MIT
/*
 * relay: a byte relay that does nothing, the floor for any proxy in front of Redis.
 *
 * It accepts on a Unix socket and, for each client, opens one TCP connection to Redis and copies
 * bytes both ways: one epoll loop, one read and one write per event, no parsing, no pooling, no
 * funnelling. Whatever a real proxy (kcached, twemproxy) costs beyond this relay is the price of
 * its own work; what the relay costs beyond Redis direct is the price of the extra hop (two more
 * socket round trips and a wake-up).
 *
 *   client --unix--> relay --tcp--> redis
 *
 * Each direction has one buffer. While it holds bytes the peer has not taken, the relay stops
 * reading the source and waits for EPOLLOUT on the destination, so memory stays bounded.
 *
 * Usage: relay UNIX_PATH REDIS_HOST REDIS_PORT
 */
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
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define RELAY_BUF 16384

struct pair;

/* One direction: bytes read from src, waiting to be written to the other end. */
struct side {
        int fd;
        struct pair *pair; /* ref, owner */
        struct side *peer; /* ref, the other end of the pair */
        size_t off;        /* bytes of buf already written to peer */
        size_t len;        /* bytes in buf */
        unsigned char buf[RELAY_BUF];
};

struct pair {
        struct side client;
        struct side server;
        bool is_dead;           /* fds closed; freed after the current batch of events */
        struct pair *next_dead; /* ref, in the list of pairs to free */
};

static int ep;
static struct pair *dead; /* closed pairs whose events may still sit in the current batch */
static struct sockaddr_in upstream;

static void
die(const char *what)
{
        fprintf(stderr, "relay: %s: %s\n", what, strerror(errno));
        exit(1);
}

/* Interest of s: read while its buffer is empty, write while its peer's buffer holds bytes. */
static void
side_update(struct side *s, int op)
{
        struct epoll_event ev = {.data.ptr = s};

        if (s->len == 0)
                ev.events |= EPOLLIN;
        if (s->peer->len != 0)
                ev.events |= EPOLLOUT;
        if (epoll_ctl(ep, op, s->fd, &ev) == -1)
                die("epoll_ctl");
}

/*
 * Closes both ends at once. The pair is freed only after the batch: the other end may have an
 * event later in the same batch that still points at it.
 */
static void
pair_close(struct pair *p)
{
        /* close() also removes the fds from the epoll set. */
        close(p->client.fd);
        close(p->server.fd);
        p->is_dead = true;
        p->next_dead = dead;
        dead = p;
}

/* Writes what s's peer has buffered to s. Returns false if the pair must be closed. */
static bool
side_flush(struct side *s)
{
        struct side *src = s->peer;

        while (src->off < src->len) {
                ssize_t n = write(s->fd, src->buf + src->off, src->len - src->off);

                if (n == -1 && errno == EAGAIN)
                        return true;
                if (n == -1 && errno == EINTR)
                        continue;
                if (n == -1)
                        return false;
                src->off += (size_t)n;
        }
        src->off = src->len = 0;
        return true;
}

/* Handles one event on s. Returns false if the pair must be closed. */
static bool
side_event(struct side *s, uint32_t events)
{
        bool was_blocked = s->peer->len != 0 || s->len != 0;

        if ((events & EPOLLOUT) && !side_flush(s))
                return false;
        /* A hang-up while our buffer is full: nothing would ever clear the level-triggered event.
         */
        if ((events & (EPOLLHUP | EPOLLERR)) && s->len != 0)
                return false;
        if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && s->len == 0) {
                ssize_t n = read(s->fd, s->buf, sizeof(s->buf));

                if (n == 0 || (n == -1 && errno != EAGAIN && errno != EINTR))
                        return false;
                if (n > 0) {
                        s->len = (size_t)n;
                        if (!side_flush(s->peer))
                                return false;
                }
        }
        /* epoll_ctl only when something is left over: the common case costs read + write. */
        if (was_blocked || s->len != 0) {
                side_update(s, EPOLL_CTL_MOD);
                side_update(s->peer, EPOLL_CTL_MOD);
        }
        return true;
}

static void
accept_one(int lfd)
{
        struct pair *p;
        int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), sfd, one = 1;

        if (cfd == -1)
                return;
        sfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (sfd == -1)
                die("socket");
        setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        /*
         * A blocking connect to loopback Redis: it completes at once, and a benchmark relay need
         * not serve others meanwhile.
         */
        if (connect(sfd, (struct sockaddr *)&upstream, sizeof(upstream)) == -1) {
                fprintf(stderr, "relay: connect to Redis: %s\n", strerror(errno));
                close(cfd);
                close(sfd);
                return;
        }
        if (fcntl(sfd, F_SETFL, fcntl(sfd, F_GETFL) | O_NONBLOCK) == -1)
                die("fcntl");
        p = calloc(1, sizeof(*p));
        if (p == NULL)
                die("calloc");
        p->client = (struct side){.fd = cfd, .pair = p, .peer = &p->server};
        p->server = (struct side){.fd = sfd, .pair = p, .peer = &p->client};
        side_update(&p->client, EPOLL_CTL_ADD);
        side_update(&p->server, EPOLL_CTL_ADD);
}

int
main(int argc, char **argv)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        struct epoll_event evs[64], lev = {.events = EPOLLIN};
        int lfd;

        if (argc != 4 || strlen(argv[1]) >= sizeof(sa.sun_path)) {
                fprintf(stderr, "usage: relay UNIX_PATH REDIS_HOST REDIS_PORT\n");
                return 2;
        }
        signal(SIGPIPE, SIG_IGN);
        upstream.sin_family = AF_INET;
        upstream.sin_port = htons((uint16_t)atoi(argv[3]));
        if (inet_pton(AF_INET, argv[2], &upstream.sin_addr) != 1) {
                fprintf(stderr, "relay: %s: not an IPv4 address\n", argv[2]);
                return 2;
        }
        memcpy(sa.sun_path, argv[1], strlen(argv[1]));
        unlink(argv[1]);
        lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (lfd == -1 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == -1 ||
            listen(lfd, 512) == -1)
                die(argv[1]);
        ep = epoll_create1(EPOLL_CLOEXEC);
        if (ep == -1)
                die("epoll_create1");
        lev.data.ptr = NULL; /* the listener */
        if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) == -1)
                die("epoll_ctl");
        for (;;) {
                int n = epoll_wait(ep, evs, 64, -1);

                if (n == -1 && errno != EINTR)
                        die("epoll_wait");
                for (int i = 0; i < n; i++) {
                        struct side *s = evs[i].data.ptr;

                        if (s == NULL)
                                accept_one(lfd);
                        else if (!s->pair->is_dead && !side_event(s, evs[i].events))
                                pair_close(s->pair);
                }
                while (dead != NULL) {
                        struct pair *p = dead;

                        dead = p->next_dead;
                        free(p);
                }
        }
}
