/* SPDX-License-Identifier: MIT */
/*
 * Unit test of libkcache against a scripted fake kcached.
 *
 * The fake runs in a forked child, on a Unix socket in a mkdtemp() directory.
 * For every request it receives it reports the raw request bytes to the test
 * (pipe "rep"), then takes the next scripted action from the test (pipe
 * "ctl"): reply with given error/result bytes (optionally late, with a wrong
 * msgid, after a notification and a stray reply), send raw bytes, close, or
 * stay silent. The test therefore queues the action(s) BEFORE each library
 * call and reads the report(s) after it.
 *
 *   test --ctl actions--> fake child --reports--> test
 *     \__ libkcache ______ Unix socket _____/
 *
 * SIGPIPE is left at SIG_DFL so that a send without MSG_NOSIGNAL would kill
 * the test. Exit 0 when every test passed; prints "N passed, M failed".
 */
#include <errno.h>
#include <fcntl.h>
#include <msgpack.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kcache.h"

/* --- the fake server ------------------------------------------------------ */

enum act_kind {
        ACT_REPLY,       /* [1, msgid + delta, err or nil, res or nil] */
        ACT_REPLY_CLOSE, /* the same, then close and report REP_CLOSED */
        ACT_CLOSE,       /* close without a reply */
        ACT_NONE,        /* no reply at all */
        ACT_RAW,         /* send res bytes verbatim */
        ACT_REPLY_SHUT,  /* reply, then shutdown(SHUT_RD): the client's next send is EPIPE */
};

struct act {
        int kind;
        int delay_ms;
        int32_t msgid_delta;
        int has_extra; /* a notification and a stray reply go first */
        uint32_t err_len;
        uint32_t res_len;
        /* then err_len + res_len bytes */
};

enum rep_kind { REP_REQUEST, REP_PARTIAL, REP_CLOSED };

#define REP_MAX      4096
#define PARTIAL_MAX  (1u << 20) /* an unfinished request this big asks for an action */
#define FAKE_MAXCONN 32

struct rep {
        int kind;
        int conn_id;
        uint32_t len; /* of the request; at most REP_MAX bytes follow */
};

struct fake_conn {
        int fd; /* -1: free slot */
        int id;
        bool is_partial_done;
        bool is_shut; /* shut for reading: kept open, no longer polled */
        char *buf;
        size_t len, cap;
};

static int ctl_fd[2], rep_fd[2];
static pid_t fake_pid = -1;
static char tmp_dir[] = "/tmp/kcache-test-XXXXXX";
static char sock_path[108];

static int
full_write(int fd, const void *p, size_t n)
{
        const char *c = p;

        while (n > 0) {
                ssize_t w = send(fd, c, n, MSG_NOSIGNAL);

                if (w == -1 && errno == ENOTSOCK)
                        w = write(fd, c, n);
                if (w == -1 && errno == EINTR)
                        continue;
                if (w <= 0)
                        return -1;
                c += w;
                n -= (size_t)w;
        }
        return 0;
}

static int
full_read(int fd, void *p, size_t n)
{
        char *c = p;

        while (n > 0) {
                ssize_t r = read(fd, c, n);

                if (r == -1 && errno == EINTR)
                        continue;
                if (r <= 0)
                        return -1;
                c += r;
                n -= (size_t)r;
        }
        return 0;
}

static void
sleep_ms(int ms)
{
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};

        while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
                ;
}

static void
fake_report(int kind, int conn_id, const char *p, size_t len)
{
        struct rep r = {kind, conn_id, (uint32_t)len};

        if (full_write(rep_fd[1], &r, sizeof(r)) < 0 ||
            full_write(rep_fd[1], p, len < REP_MAX ? len : REP_MAX) < 0)
                _exit(3);
}

/* Reads the next action; the test going away ends the fake. */
static char *
fake_next_action(struct act *a)
{
        char *data;

        if (full_read(ctl_fd[0], a, sizeof(*a)) < 0)
                _exit(0);
        data = malloc((size_t)a->err_len + a->res_len + 1);
        if (data == NULL || full_read(ctl_fd[0], data, (size_t)a->err_len + a->res_len) < 0)
                _exit(3);
        return data;
}

static void
fake_close(struct fake_conn *c)
{
        close(c->fd);
        c->fd = -1;
        free(c->buf);
        c->buf = NULL;
        c->len = c->cap = 0;
}

static void
fake_send_reply(struct fake_conn *c, uint32_t msgid, const struct act *a, const char *data)
{
        msgpack_sbuffer sb;
        msgpack_packer pk;

        msgpack_sbuffer_init(&sb);
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (a->has_extra) {
                msgpack_pack_array(&pk, 3);
                msgpack_pack_int(&pk, 2);
                msgpack_pack_str_with_body(&pk, "kcache.error", 12);
                msgpack_pack_array(&pk, 1);
                msgpack_pack_map(&pk, 2);
                msgpack_pack_str_with_body(&pk, "code", 4);
                msgpack_pack_str_with_body(&pk, "INTERNAL", 8);
                msgpack_pack_str_with_body(&pk, "message", 7);
                msgpack_pack_str_with_body(&pk, "noise", 5);
                msgpack_pack_array(&pk, 4);
                msgpack_pack_int(&pk, 1);
                msgpack_pack_uint32(&pk, msgid + 1000);
                msgpack_pack_nil(&pk);
                msgpack_pack_bin_with_body(&pk, "stray", 5);
        }
        msgpack_pack_array(&pk, 4);
        msgpack_pack_int(&pk, 1);
        msgpack_pack_uint32(&pk, msgid + (uint32_t)a->msgid_delta);
        if (a->err_len > 0)
                msgpack_sbuffer_write(&sb, data, a->err_len);
        else
                msgpack_pack_nil(&pk);
        if (a->res_len > 0)
                msgpack_sbuffer_write(&sb, data + a->err_len, a->res_len);
        else
                msgpack_pack_nil(&pk);
        full_write(c->fd, sb.data, sb.size);
        msgpack_sbuffer_destroy(&sb);
}

static void
fake_act(struct fake_conn *c, uint32_t msgid)
{
        struct act a;
        char *data = fake_next_action(&a);

        if (a.delay_ms > 0)
                sleep_ms(a.delay_ms);
        switch (a.kind) {
        case ACT_REPLY:
        case ACT_REPLY_CLOSE:
        case ACT_REPLY_SHUT:
                /* Shut before replying: once the client has its reply it
                 * may send at once, and that send must meet the shutdown. */
                if (a.kind == ACT_REPLY_SHUT) {
                        shutdown(c->fd, SHUT_RD);
                        c->is_shut = true;
                }
                fake_send_reply(c, msgid, &a, data);
                if (a.kind == ACT_REPLY_CLOSE) {
                        int id = c->id;

                        fake_close(c);
                        fake_report(REP_CLOSED, id, "", 0);
                }
                break;
        case ACT_CLOSE:
                fake_close(c);
                break;
        case ACT_RAW:
                full_write(c->fd, data + a.err_len, a.res_len);
                break;
        default:
                break;
        }
        free(data);
}

/* Handles every complete request in c->buf. */
static void
fake_requests(struct fake_conn *c)
{
        while (c->fd != -1 && c->len > 0) {
                msgpack_unpacked up;
                size_t off = 0;
                uint32_t msgid = 0;
                int r;

                msgpack_unpacked_init(&up);
                r = msgpack_unpack_next(&up, c->buf, c->len, &off);
                if (r == MSGPACK_UNPACK_CONTINUE) {
                        msgpack_unpacked_destroy(&up);
                        if (c->len > PARTIAL_MAX && !c->is_partial_done) {
                                struct act a;
                                char *data;

                                c->is_partial_done = true;
                                fake_report(REP_PARTIAL, c->id, c->buf, c->len);
                                data = fake_next_action(&a);
                                free(data);
                                if (a.kind == ACT_CLOSE)
                                        fake_close(c);
                        }
                        return;
                }
                if (r != MSGPACK_UNPACK_SUCCESS) {
                        msgpack_unpacked_destroy(&up);
                        fake_close(c);
                        return;
                }
                if (up.data.type == MSGPACK_OBJECT_ARRAY && up.data.via.array.size == 4 &&
                    up.data.via.array.ptr[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                        msgid = (uint32_t)up.data.via.array.ptr[1].via.u64;
                msgpack_unpacked_destroy(&up);
                fake_report(REP_REQUEST, c->id, c->buf, off);
                memmove(c->buf, c->buf + off, c->len - off);
                c->len -= off;
                c->is_partial_done = false;
                fake_act(c, msgid);
        }
}

static void
fake_run(int lfd)
{
        struct fake_conn conns[FAKE_MAXCONN];
        int next_id = 0;

        for (int i = 0; i < FAKE_MAXCONN; i++)
                conns[i] = (struct fake_conn){.fd = -1};
        for (;;) {
                struct pollfd pfd[FAKE_MAXCONN + 1];
                int map[FAKE_MAXCONN + 1];
                nfds_t n = 0;

                pfd[n] = (struct pollfd){.fd = lfd, .events = POLLIN};
                map[n++] = -1;
                for (int i = 0; i < FAKE_MAXCONN; i++) {
                        if (conns[i].fd == -1 || conns[i].is_shut)
                                continue;
                        pfd[n] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
                        map[n++] = i;
                }
                if (poll(pfd, n, -1) == -1) {
                        if (errno == EINTR)
                                continue;
                        _exit(3);
                }
                for (nfds_t k = 0; k < n; k++) {
                        struct fake_conn *c;
                        ssize_t r;

                        if (pfd[k].revents == 0)
                                continue;
                        if (map[k] == -1) {
                                int fd = accept(lfd, NULL, NULL);

                                for (int i = 0; fd != -1 && i < FAKE_MAXCONN; i++) {
                                        if (conns[i].fd != -1)
                                                continue;
                                        conns[i] = (struct fake_conn){.fd = fd, .id = ++next_id};
                                        fd = -1;
                                }
                                if (fd != -1)
                                        close(fd);
                                continue;
                        }
                        c = &conns[map[k]];
                        if (c->cap - c->len < 65536) {
                                c->cap = c->cap * 2 + 65536;
                                c->buf = realloc(c->buf, c->cap);
                                if (c->buf == NULL)
                                        _exit(3);
                        }
                        r = read(c->fd, c->buf + c->len, c->cap - c->len);
                        if (r <= 0) {
                                fake_close(c);
                                continue;
                        }
                        c->len += (size_t)r;
                        fake_requests(c);
                }
        }
}

static int
fake_start(void)
{
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        int lfd;

        if (mkdtemp(tmp_dir) == NULL)
                return -1;
        snprintf(sock_path, sizeof(sock_path), "%s/kcached.sock", tmp_dir);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
        lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (lfd == -1 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) == -1 ||
            listen(lfd, 64) == -1)
                return -1;
        if (pipe2(ctl_fd, O_CLOEXEC) == -1 || pipe2(rep_fd, O_CLOEXEC) == -1)
                return -1;
        fake_pid = fork();
        if (fake_pid == -1)
                return -1;
        if (fake_pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(ctl_fd[1]);
                close(rep_fd[0]);
                fake_run(lfd);
                _exit(0);
        }
        close(lfd);
        close(ctl_fd[0]);
        close(rep_fd[1]);
        return 0;
}

static void
fake_stop(void)
{
        if (fake_pid > 0) {
                close(ctl_fd[1]);
                kill(fake_pid, SIGKILL);
                waitpid(fake_pid, NULL, 0);
                fake_pid = -1;
        }
        unlink(sock_path);
        rmdir(tmp_dir);
}

/* --- scripting the fake ---------------------------------------------------- */

struct pkbuf {
        msgpack_sbuffer sb;
        msgpack_packer pk;
};

static void
pk_init(struct pkbuf *b)
{
        msgpack_sbuffer_init(&b->sb);
        msgpack_packer_init(&b->pk, &b->sb, msgpack_sbuffer_write);
}

static void
push(int kind, int delay_ms, int32_t delta, int extra, const struct pkbuf *err,
     const struct pkbuf *res)
{
        struct act a = {kind,
                        delay_ms,
                        delta,
                        extra,
                        err ? (uint32_t)err->sb.size : 0,
                        res ? (uint32_t)res->sb.size : 0};

        if (full_write(ctl_fd[1], &a, sizeof(a)) < 0 ||
            (err && full_write(ctl_fd[1], err->sb.data, err->sb.size) < 0) ||
            (res && full_write(ctl_fd[1], res->sb.data, res->sb.size) < 0)) {
                fprintf(stderr, "cannot script the fake server\n");
                fake_stop();
                exit(2);
        }
}

/* Queues a plain reply whose result is built by the caller in *res (then freed). */
static void
push_res(struct pkbuf *res)
{
        push(ACT_REPLY, 0, 0, 0, NULL, res);
        msgpack_sbuffer_destroy(&res->sb);
}

static void
push_bin(const char *s)
{
        struct pkbuf b;

        pk_init(&b);
        msgpack_pack_bin_with_body(&b.pk, s, strlen(s));
        push_res(&b);
}

static void
push_true(void)
{
        struct pkbuf b;

        pk_init(&b);
        msgpack_pack_true(&b.pk);
        push_res(&b);
}

static void
push_int(int64_t v)
{
        struct pkbuf b;

        pk_init(&b);
        msgpack_pack_int64(&b.pk, v);
        push_res(&b);
}

static void
push_pong(int kind)
{
        struct pkbuf b;

        pk_init(&b);
        msgpack_pack_str_with_body(&b.pk, "pong", 4);
        push(kind, 0, 0, 0, NULL, &b);
        msgpack_sbuffer_destroy(&b.sb);
}

static void
push_nil(void)
{
        push(ACT_REPLY, 0, 0, 0, NULL, NULL);
}

static void
push_error(const char *code, const char *message)
{
        struct pkbuf e;

        pk_init(&e);
        msgpack_pack_map(&e.pk, 2);
        msgpack_pack_str_with_body(&e.pk, "code", 4);
        msgpack_pack_str_with_body(&e.pk, code, strlen(code));
        msgpack_pack_str_with_body(&e.pk, "message", 7);
        msgpack_pack_str_with_body(&e.pk, message, strlen(message));
        push(ACT_REPLY, 0, 0, 0, &e, NULL);
        msgpack_sbuffer_destroy(&e.sb);
}

static void
push_simple(int kind)
{
        push(kind, 0, 0, 0, NULL, NULL);
}

struct report {
        int kind;
        int conn_id;
        size_t len;
        char data[REP_MAX];
        msgpack_unpacked up;
        bool is_decoded;
        /* the request, when it decoded as [0, msgid, method, params] */
        uint32_t msgid;
        char method[32];
        const msgpack_object *params;
};

/* Reads the fake's next report; false after 5 s without one. */
static bool
report_read(struct report *r)
{
        struct pollfd pfd = {.fd = rep_fd[0], .events = POLLIN};
        struct rep h;

        memset(r, 0, sizeof(*r));
        if (poll(&pfd, 1, 5000) != 1 || full_read(rep_fd[0], &h, sizeof(h)) < 0)
                return false;
        r->kind = h.kind;
        r->conn_id = h.conn_id;
        r->len = h.len;
        if (full_read(rep_fd[0], r->data, h.len < REP_MAX ? h.len : REP_MAX) < 0)
                return false;
        if (r->kind == REP_REQUEST) {
                const msgpack_object *o;
                size_t off = 0;

                msgpack_unpacked_init(&r->up);
                r->is_decoded = true;
                if (msgpack_unpack_next(&r->up, r->data, r->len, &off) != MSGPACK_UNPACK_SUCCESS ||
                    off != r->len)
                        return true;
                o = &r->up.data;
                if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 4 ||
                    o->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                    o->via.array.ptr[0].via.u64 != 0 ||
                    o->via.array.ptr[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                    o->via.array.ptr[1].via.u64 > UINT32_MAX ||
                    o->via.array.ptr[2].type != MSGPACK_OBJECT_STR ||
                    o->via.array.ptr[2].via.str.size >= sizeof(r->method) ||
                    o->via.array.ptr[3].type != MSGPACK_OBJECT_ARRAY)
                        return true;
                r->msgid = (uint32_t)o->via.array.ptr[1].via.u64;
                memcpy(r->method, o->via.array.ptr[2].via.str.ptr,
                       o->via.array.ptr[2].via.str.size);
                r->params = &o->via.array.ptr[3];
        }
        return true;
}

static void
report_done(struct report *r)
{
        if (r->is_decoded)
                msgpack_unpacked_destroy(&r->up);
        r->is_decoded = false;
}

/* --- checks --------------------------------------------------------------- */

static int n_checks_failed; /* in the current test */

#define CHECK(cond)                                                                                \
        do {                                                                                       \
                if (!(cond)) {                                                                     \
                        n_checks_failed++;                                                         \
                        fprintf(stderr, "  FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);          \
                }                                                                                  \
        } while (0)

static bool
is_bin(const msgpack_object *o, const char *s)
{
        return o->type == MSGPACK_OBJECT_BIN && o->via.bin.size == strlen(s) &&
               memcmp(o->via.bin.ptr, s, o->via.bin.size) == 0;
}

static bool
is_str(const msgpack_object *o, const char *s)
{
        return o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
               memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

static bool
is_int(const msgpack_object *o, int64_t v)
{
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
                return v >= 0 && o->via.u64 == (uint64_t)v;
        return o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER && o->via.i64 == v;
}

/* Params of a request: an array of n. */
static bool
params_n(const struct report *r, const char *method, uint32_t n)
{
        return r->kind == REP_REQUEST && r->params != NULL && strcmp(r->method, method) == 0 &&
               r->params->via.array.size == n;
}

/* The i-th param; a nil past the end, so that a failed check cannot read
 * out of bounds. */
static const msgpack_object *
param(const struct report *r, uint32_t i)
{
        static const msgpack_object nil = {.type = MSGPACK_OBJECT_NIL};

        if (r->params == NULL || i >= r->params->via.array.size)
                return &nil;
        return &r->params->via.array.ptr[i];
}

/* An options map {"ttl": v}. */
static bool
is_ttl_opt(const msgpack_object *o, int64_t v)
{
        return o->type == MSGPACK_OBJECT_MAP && o->via.map.size == 1 &&
               is_str(&o->via.map.ptr[0].key, "ttl") && is_int(&o->via.map.ptr[0].val, v);
}

static struct kcache *
new_kc(int timeout_ms)
{
        struct kcache_options o = {.timeout_ms = timeout_ms, .socket_path = sock_path};
        struct kcache *kc = NULL;

        if (kcache_new(&kc, &o) != KCACHE_OK) {
                fprintf(stderr, "kcache_new failed\n");
                fake_stop();
                exit(2);
        }
        return kc;
}

/* Does a ping that the fake answers; returns the connection id it came on. */
static int
ping_conn(struct kcache *kc)
{
        struct report r;
        int id = -1;

        push_pong(ACT_REPLY);
        CHECK(kcache_ping(kc) == KCACHE_OK);
        CHECK(report_read(&r));
        CHECK(params_n(&r, "ping", 0));
        id = r.conn_id;
        report_done(&r);
        return id;
}

/* --- tests ------------------------------------------------------------------ */

static void
test_args(void)
{
        struct kcache_options o = {.socket_path = ""};
        char long_path[200];
        struct kcache *kc;
        void *v;
        size_t n;

        CHECK(kcache_new(NULL, NULL) == KCACHE_E_ARG);
        CHECK(kcache_new(&kc, &o) == KCACHE_E_ARG);
        memset(long_path, 'x', sizeof(long_path) - 1);
        long_path[sizeof(long_path) - 1] = '\0';
        o.socket_path = long_path;
        CHECK(kcache_new(&kc, &o) == KCACHE_E_ARG);
        kc = new_kc(1000);
        CHECK(kcache_get(kc, NULL, 3, &v, &n) == KCACHE_E_ARG);
        CHECK(kcache_strerror(kc)[0] != '\0');
        CHECK(kcache_get(kc, "k", 1, NULL, &n) == KCACHE_E_ARG);
        CHECK(kcache_set(kc, "k", 1, "v", 1, -5) == KCACHE_E_ARG);
        CHECK(kcache_del(NULL, 0, NULL, NULL, NULL) == KCACHE_E_ARG);
        CHECK(kcache_ping(NULL) == KCACHE_E_ARG);
        CHECK(strcmp(kcache_code_name(KCACHE_E_TIMEOUT), "TIMEOUT") == 0);
        CHECK(strcmp(kcache_code_name(KCACHE_E_UNAVAILABLE), "UNAVAILABLE") == 0);
        CHECK(strcmp(kcache_code_name(KCACHE_MISS), "MISS") == 0);
        CHECK(strcmp(kcache_code_name(12345), "UNKNOWN") == 0);
        kcache_free(kc);
        kcache_free(NULL);
}

static void
test_connect_errors(void)
{
        struct kcache_options o = {.timeout_ms = 500};
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
        struct kcache *kc;
        int fd;

        snprintf(path, sizeof(path), "%s/missing.sock", tmp_dir);
        o.socket_path = path;
        CHECK(kcache_new(&kc, &o) == KCACHE_OK);
        CHECK(kcache_ping(kc) == KCACHE_E_CONNECT);
        CHECK(strstr(kcache_strerror(kc), path) != NULL);
        CHECK(strstr(kcache_strerror(kc), "No such file") != NULL);
        kcache_free(kc);

        /* bound but not listening: ECONNREFUSED */
        snprintf(path, sizeof(path), "%s/refused.sock", tmp_dir);
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        CHECK(fd != -1 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
        CHECK(kcache_new(&kc, &o) == KCACHE_OK);
        CHECK(kcache_get(kc, "k", 1, &(void *){NULL}, &(size_t){0}) == KCACHE_E_CONNECT);
        CHECK(strstr(kcache_strerror(kc), "refused") != NULL);
        kcache_free(kc);
        close(fd);
        unlink(path);
}

static void
test_env_socket(void)
{
        struct kcache *kc = NULL;

        setenv("KCACHE_SOCKET", sock_path, 1);
        CHECK(kcache_new(&kc, NULL) == KCACHE_OK);
        unsetenv("KCACHE_SOCKET");
        if (kc != NULL)
                CHECK(ping_conn(kc) > 0);
        kcache_free(kc);
}

static void
test_ping_hello(void)
{
        struct kcache *kc = new_kc(2000);
        struct kcache_server_info info;
        struct report r;
        struct pkbuf b;
        const char *name;
        int64_t value;

        CHECK(ping_conn(kc) > 0);
        CHECK(strcmp(kcache_strerror(kc), "") == 0);

        pk_init(&b);
        msgpack_pack_map(&b.pk, 6);
        msgpack_pack_str_with_body(&b.pk, "server", 6);
        msgpack_pack_str_with_body(&b.pk, "kcached", 7);
        msgpack_pack_str_with_body(&b.pk, "version", 7);
        msgpack_pack_str_with_body(&b.pk, "9.8.7", 5);
        msgpack_pack_str_with_body(&b.pk, "protocol", 8);
        msgpack_pack_int(&b.pk, 1);
        msgpack_pack_str_with_body(&b.pk, "limits", 6);
        msgpack_pack_map(&b.pk, 3);
        msgpack_pack_str_with_body(&b.pk, "max_request_bytes", 17);
        msgpack_pack_int64(&b.pk, 1048576);
        msgpack_pack_str_with_body(&b.pk, "max_batch_keys", 14);
        msgpack_pack_int64(&b.pk, 512);
        msgpack_pack_str_with_body(&b.pk, "max_value_bytes", 15);
        msgpack_pack_int64(&b.pk, 4096);
        msgpack_pack_str_with_body(&b.pk, "methods", 7);
        msgpack_pack_array(&b.pk, 1);
        msgpack_pack_str_with_body(&b.pk, "get", 3);
        msgpack_pack_str_with_body(&b.pk, "options", 7);
        msgpack_pack_map(&b.pk, 0);
        push_res(&b);
        CHECK(kcache_hello(kc, &info) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "hello", 0));
        report_done(&r);
        CHECK(strcmp(info.server, "kcached") == 0);
        CHECK(strcmp(info.version, "9.8.7") == 0);
        CHECK(info.protocol == 1);
        CHECK(info.max_request_bytes == 1048576);
        CHECK(info.max_batch_keys == 512);
        CHECK(kcache_server_limit(kc, 2, &name, &value) == KCACHE_OK);
        CHECK(strcmp(name, "max_value_bytes") == 0 && value == 4096);
        CHECK(kcache_server_limit(kc, 3, &name, &value) == KCACHE_E_ARG);

        /* a hello without the required fields */
        pk_init(&b);
        msgpack_pack_map(&b.pk, 0);
        push_res(&b);
        CHECK(kcache_hello(kc, &info) == KCACHE_E_PROTOCOL);
        CHECK(report_read(&r));
        report_done(&r);
        kcache_free(kc);
}

static void
test_get_set(void)
{
        struct kcache *kc = new_kc(2000);
        struct report r;
        void *v = NULL;
        size_t len = 0;

        push_bin("hello world");
        CHECK(kcache_get(kc, "k1", 2, &v, &len) == KCACHE_OK);
        CHECK(len == 11 && v != NULL && memcmp(v, "hello world", 12) == 0); /* NUL too */
        free(v);
        CHECK(report_read(&r) && params_n(&r, "get", 1) && is_bin(param(&r, 0), "k1"));
        report_done(&r);

        push_nil();
        v = (void *)&len;
        CHECK(kcache_get(kc, "nokey", 5, &v, &len) == KCACHE_MISS);
        CHECK(v == NULL && len == 0);
        CHECK(strcmp(kcache_strerror(kc), "") == 0);
        CHECK(report_read(&r));
        report_done(&r);

        /* a binary key with a NUL inside, and an empty value */
        push_bin("");
        CHECK(kcache_get(kc, "a\0b", 3, &v, &len) == KCACHE_OK);
        CHECK(len == 0 && v != NULL && ((char *)v)[0] == '\0');
        free(v);
        CHECK(report_read(&r) && params_n(&r, "get", 1));
        CHECK(param(&r, 0)->type == MSGPACK_OBJECT_BIN && param(&r, 0)->via.bin.size == 3 &&
              memcmp(param(&r, 0)->via.bin.ptr, "a\0b", 3) == 0);
        report_done(&r);

        push_int(5); /* wrong type: an incompatible server, its connection is dropped */
        CHECK(kcache_get(kc, "k", 1, &v, &len) == KCACHE_E_PROTOCOL);
        CHECK(report_read(&r));
        CHECK(ping_conn(kc) != r.conn_id);
        report_done(&r);

        push_true();
        CHECK(kcache_set(kc, "k", 1, "val", 3, 0) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "set", 2) && is_bin(param(&r, 0), "k") &&
              is_bin(param(&r, 1), "val"));
        report_done(&r);

        push_true();
        CHECK(kcache_set(kc, "k", 1, "val", 3, 60) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "set", 3) && is_ttl_opt(param(&r, 2), 60));
        report_done(&r);
        kcache_free(kc);
}

static void
test_batch(void)
{
        static const char *const keys[] = {"a", "b", "c"};
        static const size_t klens[] = {1, 1, 1};
        static const char *const vals[] = {"1", "22"};
        static const size_t vlens[] = {1, 2};
        struct kcache *kc = new_kc(2000);
        struct kcache_value out[3] = {{0}};
        struct report r;
        struct pkbuf b;
        int64_t n = -99;
        int existed = -1;

        push_int(2);
        CHECK(kcache_del(kc, 2, (const void *const *)keys, klens, &n) == KCACHE_OK && n == 2);
        CHECK(report_read(&r) && params_n(&r, "del", 1));
        CHECK(r.params && param(&r, 0)->type == MSGPACK_OBJECT_ARRAY &&
              param(&r, 0)->via.array.size == 2 && is_bin(&param(&r, 0)->via.array.ptr[0], "a") &&
              is_bin(&param(&r, 0)->via.array.ptr[1], "b"));
        report_done(&r);

        CHECK(kcache_del(kc, 0, NULL, NULL, &n) == KCACHE_OK && n == 0); /* no round trip */

        pk_init(&b);
        msgpack_pack_array(&b.pk, 3);
        msgpack_pack_bin_with_body(&b.pk, "x", 1);
        msgpack_pack_nil(&b.pk);
        msgpack_pack_bin_with_body(&b.pk, "zz", 2);
        push_res(&b);
        CHECK(kcache_mget(kc, 3, (const void *const *)keys, klens, out) == KCACHE_OK);
        CHECK(out[0].data && out[0].len == 1 && memcmp(out[0].data, "x", 2) == 0);
        CHECK(out[1].data == NULL);
        CHECK(out[2].data && out[2].len == 2 && memcmp(out[2].data, "zz", 3) == 0);
        kcache_values_free(out, 3);
        CHECK(out[0].data == NULL);
        CHECK(report_read(&r) && params_n(&r, "mget", 1) &&
              param(&r, 0)->type == MSGPACK_OBJECT_ARRAY && param(&r, 0)->via.array.size == 3 &&
              is_bin(&param(&r, 0)->via.array.ptr[2], "c"));
        report_done(&r);

        pk_init(&b); /* wrong count */
        msgpack_pack_array(&b.pk, 1);
        msgpack_pack_nil(&b.pk);
        push_res(&b);
        CHECK(kcache_mget(kc, 3, (const void *const *)keys, klens, out) == KCACHE_E_PROTOCOL);
        CHECK(report_read(&r));
        report_done(&r);

        push_true();
        CHECK(kcache_mset(kc, 2, (const void *const *)keys, klens, (const void *const *)vals, vlens,
                          5) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "mset", 2));
        CHECK(r.params && param(&r, 0)->type == MSGPACK_OBJECT_MAP &&
              param(&r, 0)->via.map.size == 2 && is_bin(&param(&r, 0)->via.map.ptr[0].key, "a") &&
              is_bin(&param(&r, 0)->via.map.ptr[0].val, "1") &&
              is_bin(&param(&r, 0)->via.map.ptr[1].key, "b") &&
              is_bin(&param(&r, 0)->via.map.ptr[1].val, "22") && is_ttl_opt(param(&r, 1), 5));
        report_done(&r);

        push_true();
        CHECK(kcache_mset(kc, 1, (const void *const *)keys, klens, (const void *const *)vals, vlens,
                          0) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "mset", 1));
        report_done(&r);

        push_int(3);
        CHECK(kcache_exists(kc, 3, (const void *const *)keys, klens, &n) == KCACHE_OK && n == 3);
        CHECK(report_read(&r) && params_n(&r, "exists", 1) && param(&r, 0)->via.array.size == 3);
        report_done(&r);

        push_int(-2);
        CHECK(kcache_ttl(kc, "k", 1, &n) == KCACHE_OK && n == -2);
        CHECK(report_read(&r) && params_n(&r, "ttl", 1) && is_bin(param(&r, 0), "k"));
        report_done(&r);

        pk_init(&b);
        msgpack_pack_true(&b.pk);
        push_res(&b);
        CHECK(kcache_expire(kc, "k", 1, 30, &existed) == KCACHE_OK && existed == 1);
        CHECK(report_read(&r) && params_n(&r, "expire", 2) && is_bin(param(&r, 0), "k") &&
              is_int(param(&r, 1), 30));
        report_done(&r);

        pk_init(&b);
        msgpack_pack_false(&b.pk);
        push_res(&b);
        CHECK(kcache_expire(kc, "k", 1, 30, &existed) == KCACHE_OK && existed == 0);
        CHECK(report_read(&r));
        report_done(&r);
        kcache_free(kc);
}

static void
test_errors(void)
{
        struct kcache *kc = new_kc(2000);
        struct report r;
        void *v;
        size_t len;

        push_error("UNAVAILABLE", "no redis node is up");
        CHECK(kcache_get(kc, "k", 1, &v, &len) == KCACHE_E_UNAVAILABLE);
        CHECK(strcmp(kcache_strerror(kc), "no redis node is up") == 0);
        CHECK(report_read(&r));
        report_done(&r);

        push_error("TIMEOUT", "redis took too long");
        CHECK(kcache_set(kc, "k", 1, "v", 1, 0) == KCACHE_E_TIMEOUT);
        CHECK(strstr(kcache_strerror(kc), "redis took too long") != NULL);
        CHECK(report_read(&r));
        report_done(&r);

        push_error("BAD_REQUEST", "nope");
        CHECK(kcache_ttl(kc, "k", 1, &(int64_t){0}) == KCACHE_E_BAD_REQUEST);
        CHECK(report_read(&r));
        report_done(&r);

        push_error("FROM_THE_FUTURE", "new\nthing");
        CHECK(kcache_ping(kc) == KCACHE_E_SERVER);
        CHECK(strstr(kcache_strerror(kc), "FROM_THE_FUTURE") != NULL);
        CHECK(strchr(kcache_strerror(kc), '\n') == NULL);
        CHECK(report_read(&r));
        report_done(&r);

        /* the connection survived the error replies, and success clears the detail */
        CHECK(ping_conn(kc) == r.conn_id);
        CHECK(strcmp(kcache_strerror(kc), "") == 0);
        kcache_free(kc);
}

/* Notifications and replies to other msgids are skipped. */
static void
test_out_of_order(void)
{
        struct kcache *kc = new_kc(2000);
        struct report r;
        struct pkbuf b;
        void *v = NULL;
        size_t len;

        pk_init(&b);
        msgpack_pack_bin_with_body(&b.pk, "mine", 4);
        push(ACT_REPLY, 0, 0, 1, NULL, &b);
        msgpack_sbuffer_destroy(&b.sb);
        CHECK(kcache_get(kc, "k", 1, &v, &len) == KCACHE_OK);
        CHECK(v != NULL && strcmp(v, "mine") == 0);
        free(v);
        CHECK(report_read(&r));
        report_done(&r);
        kcache_free(kc);
}

static void
test_late_reply(void)
{
        struct kcache *kc = new_kc(100);
        struct report r1, r2;
        struct pkbuf b;
        void *v = NULL;
        size_t len;

        pk_init(&b);
        msgpack_pack_bin_with_body(&b.pk, "first", 5);
        push(ACT_REPLY, 300, 0, 0, NULL, &b);
        msgpack_sbuffer_destroy(&b.sb);
        CHECK(kcache_get(kc, "k", 1, &v, &len) == KCACHE_E_TIMEOUT);
        CHECK(strstr(kcache_strerror(kc), "100 ms") != NULL);
        CHECK(report_read(&r1));

        kcache_set_timeout(kc, 2000);
        push_bin("second");
        CHECK(kcache_get(kc, "k", 1, &v, &len) == KCACHE_OK);
        CHECK(v != NULL && strcmp(v, "second") == 0);
        free(v);
        CHECK(report_read(&r2));
        CHECK(r1.conn_id == r2.conn_id); /* the connection was kept */
        CHECK(r2.msgid > r1.msgid);
        report_done(&r1);
        report_done(&r2);
        kcache_free(kc);
}

/* More than 16 abandoned replies: the next call uses a new connection. */
static void
test_pending_limit(void)
{
        struct kcache *kc = new_kc(20);
        struct report r;
        int conn = -1;
        void *v;
        size_t len;

        for (int i = 0; i < 16; i++) {
                push_simple(ACT_NONE);
                CHECK(kcache_get(kc, "k", 1, &v, &len) == KCACHE_E_TIMEOUT);
                CHECK(report_read(&r));
                conn = r.conn_id;
                report_done(&r);
        }
        kcache_set_timeout(kc, 2000);
        CHECK(ping_conn(kc) == conn); /* 16 abandoned: still kept */
        kcache_set_timeout(kc, 20);
        push_simple(ACT_NONE);
        CHECK(kcache_get(kc, "k", 1, &v, &len) == KCACHE_E_TIMEOUT);
        CHECK(report_read(&r) && r.conn_id == conn);
        report_done(&r);
        kcache_set_timeout(kc, 2000);
        CHECK(ping_conn(kc) != conn); /* 17: reconnected */
        kcache_free(kc);
}

/* A write whose connection breaks after it was sent: KCACHE_E_IO, and the
 * next call reconnects. */
static void
test_close_mid_call(void)
{
        struct kcache *kc = new_kc(2000);
        struct report r;
        int conn;

        conn = ping_conn(kc);
        push_simple(ACT_CLOSE);
        CHECK(kcache_set(kc, "k", 1, "v", 1, 0) == KCACHE_E_IO);
        CHECK(strstr(kcache_strerror(kc), "closed") != NULL);
        CHECK(report_read(&r) && params_n(&r, "set", 2) && r.conn_id == conn);
        report_done(&r);
        CHECK(ping_conn(kc) != conn); /* not retried: the next request is this ping */
        kcache_free(kc);
}

/* A big write cut off while sending: KCACHE_E_IO, no SIGPIPE. */
static void
test_close_mid_send(void)
{
        size_t big = 8u << 20;
        char *val = malloc(big);
        struct kcache *kc = new_kc(5000);
        struct report r;

        CHECK(val != NULL);
        if (val == NULL)
                return;
        memset(val, 'x', big);
        push_simple(ACT_CLOSE);
        CHECK(kcache_set(kc, "k", 1, val, big, 0) == KCACHE_E_IO);
        CHECK(report_read(&r) && r.kind == REP_PARTIAL);
        report_done(&r);
        CHECK(ping_conn(kc) > 0);
        free(val);
        kcache_free(kc);
}

/* Reads are retried once on a new connection; twice broken is KCACHE_E_IO. */
static void
test_read_retry(void)
{
        struct kcache *kc = new_kc(2000);
        struct report r1, r2;
        void *v = NULL;
        size_t len;

        ping_conn(kc);
        push_simple(ACT_CLOSE);
        push_bin("again");
        CHECK(kcache_get(kc, "k", 1, &v, &len) == KCACHE_OK);
        CHECK(v != NULL && strcmp(v, "again") == 0);
        free(v);
        CHECK(report_read(&r1) && report_read(&r2));
        CHECK(params_n(&r1, "get", 1) && params_n(&r2, "get", 1) && r1.conn_id != r2.conn_id);
        report_done(&r1);
        report_done(&r2);

        push_simple(ACT_CLOSE);
        push_simple(ACT_CLOSE);
        CHECK(kcache_get(kc, "k", 1, &v, &len) == KCACHE_E_IO);
        CHECK(report_read(&r1) && report_read(&r2));
        report_done(&r1);
        report_done(&r2);
        kcache_free(kc);
}

/* An idle connection closed by kcached (a restart) fails at the first send,
 * before a byte went out, so even a write goes through on a new connection. */
static void
test_idle_close(void)
{
        struct kcache *kc = new_kc(2000);
        struct report r;
        int conn;

        push_pong(ACT_REPLY_CLOSE);
        CHECK(kcache_ping(kc) == KCACHE_OK);
        CHECK(report_read(&r) && r.kind == REP_REQUEST);
        conn = r.conn_id;
        report_done(&r);
        CHECK(report_read(&r) && r.kind == REP_CLOSED && r.conn_id == conn);
        report_done(&r);
        push_true();
        CHECK(kcache_set(kc, "k", 1, "v", 1, 0) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "set", 2) && r.conn_id != conn);
        report_done(&r);
        kcache_free(kc);
}

/* The peer stopped reading (shutdown(SHUT_RD)) but sends no EOF: the next
 * send fails with EPIPE, which must not raise SIGPIPE, and since nothing of the
 * request went out even a write may go again on a new connection. */
static void
test_epipe(void)
{
        struct kcache *kc = new_kc(2000);
        struct report r;
        int conn;

        push_pong(ACT_REPLY_SHUT);
        CHECK(kcache_ping(kc) == KCACHE_OK);
        CHECK(report_read(&r));
        conn = r.conn_id;
        report_done(&r);
        push_true();
        CHECK(kcache_set(kc, "k", 1, "v", 1, 0) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "set", 2) && r.conn_id != conn);
        report_done(&r);
        kcache_free(kc);
}

/* A hostile frame header must not allocate: KCACHE_E_PROTOCOL, then a reconnect. */
static void
test_hostile_frame(void)
{
        struct kcache *kc = new_kc(2000);
        struct report r;
        struct pkbuf b;
        void *v;
        size_t len;
        int conn;

        pk_init(&b);
        msgpack_sbuffer_write(&b.sb, "\xdd\x20\x00\x00\x00", 5);
        push(ACT_RAW, 0, 0, 0, NULL, &b);
        msgpack_sbuffer_destroy(&b.sb);
        CHECK(kcache_get(kc, "k", 1, &v, &len) == KCACHE_E_PROTOCOL);
        CHECK(report_read(&r));
        conn = r.conn_id;
        report_done(&r);
        CHECK(ping_conn(kc) != conn);
        kcache_free(kc);
}

/* After fork() the child never touches the parent's socket. */
static void
test_fork(void)
{
        struct kcache *kc = new_kc(2000);
        struct report r;
        int conn, status = -1;
        pid_t pid;

        conn = ping_conn(kc);
        push_pong(ACT_REPLY);
        pid = fork();
        if (pid == 0) {
                int rc = kcache_ping(kc);

                kcache_free(kc);
                _exit(rc == KCACHE_OK ? 0 : 1);
        }
        CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        CHECK(report_read(&r) && params_n(&r, "ping", 0) && r.conn_id != conn);
        report_done(&r);
        /* the parent's connection is intact: same id, and no stray request on it */
        CHECK(ping_conn(kc) == conn);
        kcache_free(kc);
}

/* --- options, hashes, invalidation, leases, raw calls ----------------------- */

/* The value of option name in an options map, or NULL. */
static const msgpack_object *
opt(const msgpack_object *map, const char *name)
{
        if (map->type != MSGPACK_OBJECT_MAP)
                return NULL;
        for (uint32_t i = 0; i < map->via.map.size; i++)
                if (is_str(&map->via.map.ptr[i].key, name))
                        return &map->via.map.ptr[i].val;
        return NULL;
}

static bool
is_map_n(const msgpack_object *o, uint32_t n)
{
        return o->type == MSGPACK_OBJECT_MAP && o->via.map.size == n;
}

static void
push_map_int(const char *name, int64_t v)
{
        struct pkbuf b;

        pk_init(&b);
        msgpack_pack_map(&b.pk, 1);
        msgpack_pack_str_with_body(&b.pk, name, strlen(name));
        msgpack_pack_int64(&b.pk, v);
        push_res(&b);
}

static void
test_opts_encoding(void)
{
        static const char *const keys[] = {"a", "b"};
        static const size_t klens[] = {1, 1};
        static const char *const vals[] = {"1", "2"};
        static const size_t vlens[] = {1, 1};
        static const char *const tags[] = {"t1", "t2"};
        struct kcache *kc = new_kc(2000);
        struct kcache_call_opts o = {
                .ns = "users",
                .schema = "v2",
                .schema_len = 2,
                .ttl_ms = 1500,
                .stale_ttl_ms = 30000,
                .tags = tags,
                .n_tags = 2,
                .consistency = "primary",
        };
        struct kcache_value out[2] = {{0}};
        const msgpack_object *m, *t;
        struct report r;
        struct pkbuf b;
        void *v = NULL;
        size_t len;
        int64_t n;
        int existed;

        /* get takes ns, schema and consistency; the ttls and tags stay home */
        push_bin("x");
        CHECK(kcache_get_ex(kc, "k", 1, &o, &v, &len) == KCACHE_OK);
        free(v);
        CHECK(report_read(&r) && params_n(&r, "get", 2) && is_bin(param(&r, 0), "k"));
        m = param(&r, 1);
        CHECK(is_map_n(m, 3) && opt(m, "ns") && is_str(opt(m, "ns"), "users") && opt(m, "schema") &&
              is_bin(opt(m, "schema"), "v2") && opt(m, "consistency") &&
              is_str(opt(m, "consistency"), "primary"));
        report_done(&r);

        /* set takes the ttls, ns, schema and tags, not consistency */
        push_true();
        CHECK(kcache_set_ex(kc, "k", 1, "val", 3, &o) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "set", 3) && is_bin(param(&r, 1), "val"));
        m = param(&r, 2);
        CHECK(is_map_n(m, 5) && opt(m, "ttl_ms") && is_int(opt(m, "ttl_ms"), 1500) &&
              opt(m, "stale_ttl_ms") && is_int(opt(m, "stale_ttl_ms"), 30000) && opt(m, "ns") &&
              opt(m, "schema") && !opt(m, "consistency") && !opt(m, "ttl"));
        t = opt(m, "tags");
        CHECK(t && t->type == MSGPACK_OBJECT_ARRAY && t->via.array.size == 2 &&
              is_str(&t->via.array.ptr[0], "t1") && is_str(&t->via.array.ptr[1], "t2"));
        report_done(&r);

        /* seconds are sent as "ttl" and "stale_ttl" */
        push_true();
        CHECK(kcache_set_ex(kc, "k", 1, "v", 1,
                            &(struct kcache_call_opts){.ttl_s = 7, .stale_ttl_s = 9}) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "set", 3));
        m = param(&r, 2);
        CHECK(is_map_n(m, 2) && opt(m, "ttl") && is_int(opt(m, "ttl"), 7) && opt(m, "stale_ttl") &&
              is_int(opt(m, "stale_ttl"), 9));
        report_done(&r);

        /* nothing set: the request looks as without options */
        push_true();
        CHECK(kcache_set_ex(kc, "k", 1, "v", 1, &(struct kcache_call_opts){0}) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "set", 2));
        report_done(&r);

        /* del, exists, ttl, expire: ns only */
        push_int(1);
        CHECK(kcache_del_ex(kc, 2, (const void *const *)keys, klens, &o, &n) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "del", 2) && is_map_n(param(&r, 1), 1) &&
              opt(param(&r, 1), "ns"));
        report_done(&r);
        push_int(2);
        CHECK(kcache_exists_ex(kc, 2, (const void *const *)keys, klens, &o, &n) == KCACHE_OK &&
              n == 2);
        CHECK(report_read(&r) && params_n(&r, "exists", 2) && is_map_n(param(&r, 1), 2) &&
              opt(param(&r, 1), "ns") && opt(param(&r, 1), "consistency"));
        report_done(&r);
        push_int(42);
        CHECK(kcache_ttl_ex(kc, "k", 1, &o, &n) == KCACHE_OK && n == 42);
        CHECK(report_read(&r) && params_n(&r, "ttl", 2) && is_map_n(param(&r, 1), 2));
        report_done(&r);
        push_true();
        CHECK(kcache_expire_ex(kc, "k", 1, 10, &o, &existed) == KCACHE_OK && existed == 1);
        CHECK(report_read(&r) && params_n(&r, "expire", 3) && is_int(param(&r, 1), 10) &&
              is_map_n(param(&r, 2), 1) && opt(param(&r, 2), "ns"));
        report_done(&r);

        /* mget: ns, schema, consistency; mset: the write set */
        pk_init(&b);
        msgpack_pack_array(&b.pk, 2);
        msgpack_pack_nil(&b.pk);
        msgpack_pack_bin_with_body(&b.pk, "B", 1);
        push_res(&b);
        CHECK(kcache_mget_ex(kc, 2, (const void *const *)keys, klens, &o, out) == KCACHE_OK);
        CHECK(out[0].data == NULL && out[1].data && strcmp(out[1].data, "B") == 0);
        kcache_values_free(out, 2);
        CHECK(report_read(&r) && params_n(&r, "mget", 2) && is_map_n(param(&r, 1), 3));
        report_done(&r);
        push_true();
        CHECK(kcache_mset_ex(kc, 2, (const void *const *)keys, klens, (const void *const *)vals,
                             vlens, &o) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "mset", 2) && is_map_n(param(&r, 0), 2) &&
              is_map_n(param(&r, 1), 5) && opt(param(&r, 1), "tags"));
        report_done(&r);

        /* caught before anything is sent */
        CHECK(kcache_set_ex(kc, "k", 1, "v", 1,
                            &(struct kcache_call_opts){.ttl_s = 1, .ttl_ms = 1000}) ==
              KCACHE_E_ARG);
        CHECK(kcache_set_ex(kc, "k", 1, "v", 1, &(struct kcache_call_opts){.ttl_ms = -1}) ==
              KCACHE_E_ARG);
        CHECK(kcache_get_ex(kc, "k", 1, &(struct kcache_call_opts){.schema_len = 3}, &v, &len) ==
              KCACHE_E_ARG);
        CHECK(kcache_set_ex(kc, "k", 1, "v", 1, &(struct kcache_call_opts){.n_tags = 1}) ==
              KCACHE_E_ARG);
        CHECK(kcache_set_ex(kc, "k", 1, "v", 1,
                            &(struct kcache_call_opts){.tags = (const char *const[]){NULL},
                                                       .n_tags = 1}) == KCACHE_E_ARG);
        CHECK(strstr(kcache_strerror(kc), "tag") != NULL);
        CHECK(ping_conn(kc) > 0); /* and nothing of them reached the fake */
        kcache_free(kc);
}

static void
test_hashes(void)
{
        static const char *const fields[] = {"f1", "f2"};
        static const size_t flens[] = {2, 2};
        static const char *const vals[] = {"v1", "v2"};
        static const size_t vlens[] = {2, 2};
        const struct kcache_call_opts o = {.ns = "n", .ttl_ms = 500, .consistency = "primary"};
        struct kcache *kc = new_kc(2000);
        struct kcache_value *f = NULL, *vv = NULL;
        struct report r;
        struct pkbuf b;
        void *v = NULL;
        size_t len, n = 99;
        int64_t removed;

        push_bin("hv");
        CHECK(kcache_hget(kc, "h", 1, "f", 1, &o, &v, &len) == KCACHE_OK);
        CHECK(v && len == 2 && strcmp(v, "hv") == 0);
        free(v);
        CHECK(report_read(&r) && params_n(&r, "hget", 3) && is_bin(param(&r, 0), "h") &&
              is_bin(param(&r, 1), "f") && is_map_n(param(&r, 2), 2) &&
              opt(param(&r, 2), "consistency") && !opt(param(&r, 2), "ttl_ms"));
        report_done(&r);
        push_nil();
        CHECK(kcache_hget(kc, "h", 1, "f", 1, NULL, &v, &len) == KCACHE_MISS && v == NULL);
        CHECK(report_read(&r) && params_n(&r, "hget", 2));
        report_done(&r);

        push_true();
        CHECK(kcache_hset(kc, "h", 1, 2, (const void *const *)fields, flens,
                          (const void *const *)vals, vlens, &o) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "hset", 3) && is_map_n(param(&r, 1), 2) &&
              is_bin(&param(&r, 1)->via.map.ptr[1].key, "f2") &&
              is_bin(&param(&r, 1)->via.map.ptr[1].val, "v2") && is_map_n(param(&r, 2), 2) &&
              opt(param(&r, 2), "ttl_ms") && is_int(opt(param(&r, 2), "ttl_ms"), 500));
        report_done(&r);
        CHECK(kcache_hset(kc, "h", 1, 0, NULL, NULL, NULL, NULL, NULL) == KCACHE_OK);

        push_int(1);
        CHECK(kcache_hdel(kc, "h", 1, 2, (const void *const *)fields, flens, NULL, &removed) ==
                      KCACHE_OK &&
              removed == 1);
        CHECK(report_read(&r) && params_n(&r, "hdel", 2) &&
              param(&r, 1)->type == MSGPACK_OBJECT_ARRAY && param(&r, 1)->via.array.size == 2);
        report_done(&r);

        pk_init(&b);
        msgpack_pack_map(&b.pk, 2);
        msgpack_pack_bin_with_body(&b.pk, "f1", 2);
        msgpack_pack_bin_with_body(&b.pk, "v1", 2);
        msgpack_pack_str_with_body(&b.pk, "f2", 2);
        msgpack_pack_bin_with_body(&b.pk, "", 0);
        push_res(&b);
        CHECK(kcache_hgetall(kc, "h", 1, &o, &f, &vv, &n) == KCACHE_OK && n == 2);
        CHECK(f && vv && strcmp(f[0].data, "f1") == 0 && strcmp(vv[0].data, "v1") == 0 &&
              f[1].len == 2 && vv[1].len == 0 && vv[1].data != NULL);
        kcache_hash_free(f, vv, n);
        CHECK(report_read(&r) && params_n(&r, "hgetall", 2));
        report_done(&r);

        pk_init(&b);
        msgpack_pack_map(&b.pk, 0);
        push_res(&b);
        CHECK(kcache_hgetall(kc, "h", 1, NULL, &f, &vv, &n) == KCACHE_OK && n == 0 && f == NULL &&
              vv == NULL);
        CHECK(report_read(&r));
        report_done(&r);

        pk_init(&b); /* a nil value is not a field */
        msgpack_pack_map(&b.pk, 1);
        msgpack_pack_bin_with_body(&b.pk, "f1", 2);
        msgpack_pack_nil(&b.pk);
        push_res(&b);
        n = 77;
        CHECK(kcache_hgetall(kc, "h", 1, NULL, &f, &vv, &n) == KCACHE_E_PROTOCOL && n == 77);
        CHECK(report_read(&r));
        report_done(&r);
        kcache_free(kc);
}

static void
test_invalidate(void)
{
        static const char *const keys[] = {"a", "b"};
        static const size_t klens[] = {1, 1};
        static const char *const tags[] = {"t"};
        const struct kcache_call_opts o = {.ns = "n", .schema = "s", .schema_len = 1};
        struct kcache *kc = new_kc(2000);
        const msgpack_object *sel;
        struct report r;
        int64_t n = 0;

        push_map_int("deleted", 2);
        CHECK(kcache_invalidate_keys(kc, 2, (const void *const *)keys, klens, &o, &n) ==
                      KCACHE_OK &&
              n == 2);
        CHECK(report_read(&r) && params_n(&r, "invalidate", 2) && is_map_n(param(&r, 0), 1));
        sel = opt(param(&r, 0), "keys");
        CHECK(sel && sel->type == MSGPACK_OBJECT_ARRAY && sel->via.array.size == 2 &&
              is_bin(&sel->via.array.ptr[1], "b"));
        CHECK(is_map_n(param(&r, 1), 1) && opt(param(&r, 1), "ns")); /* no schema */
        report_done(&r);

        push_map_int("deleted", 5);
        CHECK(kcache_invalidate_pattern(kc, "user:*", NULL, &n) == KCACHE_OK && n == 5);
        CHECK(report_read(&r) && params_n(&r, "invalidate", 1) && opt(param(&r, 0), "pattern") &&
              is_str(opt(param(&r, 0), "pattern"), "user:*"));
        report_done(&r);

        push_map_int("deleted", 3);
        CHECK(kcache_invalidate_tags(kc, 1, tags, &n) == KCACHE_OK && n == 3);
        CHECK(report_read(&r) && params_n(&r, "invalidate", 1) && opt(param(&r, 0), "tags") &&
              opt(param(&r, 0), "tags")->via.array.size == 1);
        report_done(&r);

        push_map_int("generation", 1700000000123);
        CHECK(kcache_invalidate_namespace(kc, "n", &n) == KCACHE_OK && n == 1700000000123);
        CHECK(report_read(&r) && params_n(&r, "invalidate", 1) && opt(param(&r, 0), "namespace") &&
              is_str(opt(param(&r, 0), "namespace"), "n"));
        report_done(&r);

        push_map_int("generation", 1); /* the wrong key for a keys selector */
        CHECK(kcache_invalidate_keys(kc, 1, (const void *const *)keys, klens, NULL, &n) ==
              KCACHE_E_PROTOCOL);
        CHECK(report_read(&r));
        report_done(&r);

        CHECK(kcache_invalidate_namespace(kc, NULL, &n) == KCACHE_E_ARG);
        CHECK(kcache_invalidate_keys(kc, 0, NULL, NULL, NULL, &n) == KCACHE_OK && n == 0);
        kcache_free(kc);
}

/* {"value": v} / {"lease": t} / {"value": v, "stale": true, "lease": t} */
static void
push_gos(const char *value, const char *lease, bool is_stale)
{
        struct pkbuf b;

        pk_init(&b);
        msgpack_pack_map(&b.pk, (value != NULL) + (lease != NULL) + is_stale);
        if (value != NULL) {
                msgpack_pack_str_with_body(&b.pk, "value", 5);
                msgpack_pack_bin_with_body(&b.pk, value, strlen(value));
        }
        if (is_stale) {
                msgpack_pack_str_with_body(&b.pk, "stale", 5);
                msgpack_pack_true(&b.pk);
        }
        if (lease != NULL) {
                msgpack_pack_str_with_body(&b.pk, "lease", 5);
                msgpack_pack_str_with_body(&b.pk, lease, strlen(lease));
        }
        push_res(&b);
}

static void
test_leases(void)
{
        const struct kcache_call_opts o = {.ns = "n",
                                           .field = "f",
                                           .field_len = 1,
                                           .lease_ms = 2000,
                                           .wait_ms = 300,
                                           .ttl_ms = 60000,
                                           .tags = (const char *const[]){"t"},
                                           .n_tags = 1};
        struct kcache *kc = new_kc(2000);
        char *token = NULL;
        struct report r;
        struct pkbuf b;
        void *v = NULL;
        size_t len = 0;
        int is_stale = -1, held = -1;

        push_gos("cached", NULL, false);
        CHECK(kcache_get_or_set_begin(kc, "k", 1, &o, &v, &len, &token, &is_stale) == KCACHE_OK);
        CHECK(v && strcmp(v, "cached") == 0 && token == NULL && is_stale == 0);
        free(v);
        CHECK(report_read(&r) && params_n(&r, "get_or_set", 2) && is_map_n(param(&r, 1), 4) &&
              opt(param(&r, 1), "lease_ms") && is_int(opt(param(&r, 1), "lease_ms"), 2000) &&
              opt(param(&r, 1), "wait_ms") && is_bin(opt(param(&r, 1), "field"), "f") &&
              !opt(param(&r, 1), "ttl_ms") && !opt(param(&r, 1), "tags"));
        report_done(&r);

        push_gos(NULL, "tok-1", false);
        CHECK(kcache_get_or_set_begin(kc, "k", 1, NULL, &v, &len, &token, &is_stale) ==
              KCACHE_LEASE);
        CHECK(token && strcmp(token, "tok-1") == 0 && v == NULL && len == 0 && is_stale == 0);
        CHECK(strcmp(kcache_strerror(kc), "") == 0);
        free(token);
        CHECK(report_read(&r) && params_n(&r, "get_or_set", 1));
        report_done(&r);

        push_gos("old", "tok-2", true);
        CHECK(kcache_get_or_set_begin(kc, "k", 1, NULL, &v, &len, &token, &is_stale) ==
              KCACHE_LEASE);
        CHECK(token && strcmp(token, "tok-2") == 0 && v && strcmp(v, "old") == 0 && is_stale == 1);
        free(token);
        free(v);
        CHECK(report_read(&r));
        report_done(&r);

        /* while another caller refreshes it, a stale value is served as it is */
        push_gos("old", NULL, true);
        CHECK(kcache_get_or_set_begin(kc, "k", 1, NULL, &v, &len, &token, &is_stale) == KCACHE_OK);
        CHECK(token == NULL && v && strcmp(v, "old") == 0 && is_stale == 1);
        free(v);
        CHECK(report_read(&r));
        report_done(&r);

        push_gos(NULL, NULL, false); /* {} */
        CHECK(kcache_get_or_set_begin(kc, "k", 1, NULL, &v, &len, &token, NULL) ==
              KCACHE_E_PROTOCOL);
        CHECK(report_read(&r));
        report_done(&r);
        push_gos(NULL, "", false); /* an empty token */
        CHECK(kcache_get_or_set_begin(kc, "k", 1, NULL, &v, &len, &token, NULL) ==
              KCACHE_E_PROTOCOL);
        CHECK(report_read(&r));
        report_done(&r);

        /* fill: [key, token, value, opts] with the write options and field */
        push_true();
        CHECK(kcache_fill(kc, "k", 1, "tok-1", "new", 3, &o) == KCACHE_OK);
        CHECK(report_read(&r) && params_n(&r, "fill", 4) && is_bin(param(&r, 0), "k") &&
              is_str(param(&r, 1), "tok-1") && is_bin(param(&r, 2), "new") &&
              is_map_n(param(&r, 3), 4) && opt(param(&r, 3), "ttl_ms") &&
              opt(param(&r, 3), "tags") && opt(param(&r, 3), "field") &&
              !opt(param(&r, 3), "lease_ms"));
        report_done(&r);

        /* LEASE_INVALID maps to its own code and keeps the connection */
        push_error("LEASE_INVALID", "the lease was revoked by a write");
        CHECK(kcache_fill(kc, "k", 1, "tok-1", "new", 3, NULL) == KCACHE_E_LEASE_INVALID);
        CHECK(strstr(kcache_strerror(kc), "revoked") != NULL);
        CHECK(strcmp(kcache_code_name(KCACHE_E_LEASE_INVALID), "LEASE_INVALID") == 0);
        CHECK(strcmp(kcache_code_name(KCACHE_LEASE), "LEASE") == 0);
        CHECK(strcmp(kcache_code_name(KCACHE_E_LOADER), "LOADER") == 0);
        CHECK(report_read(&r));
        CHECK(ping_conn(kc) == r.conn_id);
        report_done(&r);

        pk_init(&b);
        msgpack_pack_false(&b.pk);
        push_res(&b);
        CHECK(kcache_release(kc, "k", 1, "tok-1", &o, &held) == KCACHE_OK && held == 0);
        CHECK(report_read(&r) && params_n(&r, "release", 3) && is_str(param(&r, 1), "tok-1") &&
              is_map_n(param(&r, 2), 2) && opt(param(&r, 2), "ns") && opt(param(&r, 2), "field"));
        report_done(&r);

        CHECK(kcache_fill(kc, "k", 1, NULL, "v", 1, NULL) == KCACHE_E_ARG);
        CHECK(kcache_get_or_set_begin(kc, "k", 1, NULL, &v, &len, NULL, NULL) == KCACHE_E_ARG);
        kcache_free(kc);
}

struct loader {
        int n_calls;
        int rc;
        const char *value; /* copied into the result */
        char key[16];
};

static int
test_loader(void *priv, const void *key, size_t klen, void **val, size_t *len)
{
        struct loader *l = priv;

        l->n_calls++;
        snprintf(l->key, sizeof(l->key), "%.*s", (int)klen, (const char *)key);
        if (l->rc != 0)
                return l->rc;
        *len = strlen(l->value);
        *val = malloc(*len); /* not NUL-terminated: the library adds it */
        memcpy(*val, l->value, *len);
        return 0;
}

static void
test_get_or_set_wrapper(void)
{
        const struct kcache_call_opts o = {.ns = "n", .ttl_ms = 1000};
        struct kcache *kc = new_kc(2000);
        struct loader l = {.value = "loaded"};
        struct report r1, r2;
        void *v = NULL;
        size_t len = 0;

        /* a hit: no loader */
        push_gos("cached", NULL, false);
        CHECK(kcache_get_or_set(kc, "k", 1, &o, test_loader, &l, &v, &len) == KCACHE_OK);
        CHECK(v && strcmp(v, "cached") == 0 && l.n_calls == 0);
        free(v);
        CHECK(report_read(&r1));
        report_done(&r1);

        /* a lease: load, fill with the token, return the value */
        push_gos(NULL, "T1", false);
        push_true();
        CHECK(kcache_get_or_set(kc, "key1", 4, &o, test_loader, &l, &v, &len) == KCACHE_OK);
        CHECK(v && len == 6 && memcmp(v, "loaded", 7) == 0 && l.n_calls == 1 &&
              strcmp(l.key, "key1") == 0);
        free(v);
        CHECK(report_read(&r1) && params_n(&r1, "get_or_set", 2));
        CHECK(report_read(&r2) && params_n(&r2, "fill", 4) && is_bin(param(&r2, 0), "key1") &&
              is_str(param(&r2, 1), "T1") && is_bin(param(&r2, 2), "loaded") &&
              opt(param(&r2, 3), "ttl_ms") && opt(param(&r2, 3), "ns"));
        report_done(&r1);
        report_done(&r2);

        /* a stale value with the lease is replaced by the loaded one; a fill
         * refused (a write raced) still returns the loaded value */
        push_gos("stale", "T2", true);
        push_error("LEASE_INVALID", "revoked");
        CHECK(kcache_get_or_set(kc, "k", 1, NULL, test_loader, &l, &v, &len) == KCACHE_OK);
        CHECK(v && strcmp(v, "loaded") == 0 && l.n_calls == 2);
        CHECK(strcmp(kcache_strerror(kc), "") == 0);
        free(v);
        CHECK(report_read(&r1) && report_read(&r2) && params_n(&r2, "fill", 3));
        report_done(&r1);
        report_done(&r2);

        /* the loader fails: release, KCACHE_E_LOADER with its code */
        l.rc = 7;
        push_gos(NULL, "T3", false);
        push_true();
        v = NULL;
        CHECK(kcache_get_or_set(kc, "k", 1, &o, test_loader, &l, &v, &len) == KCACHE_E_LOADER);
        CHECK(v == NULL && l.n_calls == 3 && strstr(kcache_strerror(kc), "7") != NULL);
        CHECK(report_read(&r1) && report_read(&r2) && params_n(&r2, "release", 3) &&
              is_str(param(&r2, 1), "T3") && is_map_n(param(&r2, 2), 1) &&
              opt(param(&r2, 2), "ns"));
        report_done(&r1);
        report_done(&r2);

        /* an error of the begin: no loader */
        push_error("UNAVAILABLE", "down");
        CHECK(kcache_get_or_set(kc, "k", 1, NULL, test_loader, &l, &v, &len) ==
              KCACHE_E_UNAVAILABLE);
        CHECK(l.n_calls == 3);
        CHECK(report_read(&r1));
        report_done(&r1);
        kcache_free(kc);
}

/* get_or_set's deadline covers wait_ms; when it passes, the connection goes. */
static void
test_get_or_set_deadline(void)
{
        struct kcache *kc = new_kc(100);
        struct report r;
        struct pkbuf b;
        char *token = NULL;
        void *v = NULL;
        size_t len;
        int conn;

        /* 300 ms > the handle's 100 ms, < wait_ms 50 + 1000 */
        pk_init(&b);
        msgpack_pack_map(&b.pk, 1);
        msgpack_pack_str_with_body(&b.pk, "value", 5);
        msgpack_pack_bin_with_body(&b.pk, "w", 1);
        push(ACT_REPLY, 300, 0, 0, NULL, &b);
        msgpack_sbuffer_destroy(&b.sb);
        CHECK(kcache_get_or_set_begin(kc, "k", 1, &(struct kcache_call_opts){.wait_ms = 50}, &v,
                                      &len, &token, NULL) == KCACHE_OK);
        free(v);
        CHECK(report_read(&r));
        conn = r.conn_id;
        report_done(&r);

        push_simple(ACT_NONE);
        CHECK(kcache_get_or_set_begin(kc, "k", 1, &(struct kcache_call_opts){.wait_ms = 10}, &v,
                                      &len, &token, NULL) == KCACHE_E_TIMEOUT);
        CHECK(strstr(kcache_strerror(kc), "1010 ms") != NULL);
        CHECK(report_read(&r) && r.conn_id == conn);
        report_done(&r);
        kcache_set_timeout(kc, 2000);
        CHECK(ping_conn(kc) != conn); /* not kept for the late reply */
        kcache_free(kc);
}

static void
test_call_raw(void)
{
        static const char no_params[] = "\x90";
        struct kcache *kc = new_kc(2000);
        msgpack_unpacked up;
        struct report r1, r2;
        struct pkbuf b;
        void *res = NULL;
        size_t rn = 0, off = 0;
        int conn;

        pk_init(&b);
        msgpack_pack_map(&b.pk, 1);
        msgpack_pack_str_with_body(&b.pk, "totals", 6);
        msgpack_pack_map(&b.pk, 1);
        msgpack_pack_str_with_body(&b.pk, "hits", 4);
        msgpack_pack_int(&b.pk, 12);
        push_res(&b);
        CHECK(kcache_call_raw(kc, "stats", no_params, 1, &res, &rn) == KCACHE_OK);
        CHECK(report_read(&r1) && params_n(&r1, "stats", 0));
        report_done(&r1);
        msgpack_unpacked_init(&up);
        CHECK(res && msgpack_unpack_next(&up, res, rn, &off) == MSGPACK_UNPACK_SUCCESS &&
              off == rn && is_map_n(&up.data, 1) && opt(&up.data, "totals") &&
              opt(opt(&up.data, "totals"), "hits") &&
              is_int(opt(opt(&up.data, "totals"), "hits"), 12));
        msgpack_unpacked_destroy(&up);
        free(res);

        /* not one whole array: refused before anything is sent */
        CHECK(kcache_call_raw(kc, "stats", "\x91", 1, &res, &rn) == KCACHE_E_ARG);
        CHECK(kcache_call_raw(kc, "stats", "\x90\x90", 2, &res, &rn) == KCACHE_E_ARG);
        CHECK(kcache_call_raw(kc, "stats", "\x80", 1, &res, &rn) == KCACHE_E_ARG);
        CHECK(kcache_call_raw(kc, "", no_params, 1, &res, &rn) == KCACHE_E_ARG);

        /* errors map as for named calls */
        push_error("NO_METHOD", "no such method");
        CHECK(kcache_call_raw(kc, "frobnicate", no_params, 1, &res, &rn) == KCACHE_E_NO_METHOD);
        CHECK(report_read(&r1) && strcmp(r1.method, "frobnicate") == 0);
        report_done(&r1);

        /* a known read is retried after a break, an unknown method is not */
        conn = ping_conn(kc);
        push_simple(ACT_CLOSE);
        push_bin("again");
        CHECK(kcache_call_raw(kc, "get", "\x91\xa1k", 3, &res, &rn) == KCACHE_OK);
        CHECK(rn == 7 && memcmp(res,
                                "\xc4\x05"
                                "again",
                                7) == 0);
        free(res);
        CHECK(report_read(&r1) && report_read(&r2) && r1.conn_id == conn && r2.conn_id != conn);
        report_done(&r1);
        report_done(&r2);
        conn = r2.conn_id;
        push_simple(ACT_CLOSE);
        CHECK(kcache_call_raw(kc, "newthing", no_params, 1, &res, &rn) == KCACHE_E_IO);
        CHECK(report_read(&r1) && r1.conn_id == conn);
        report_done(&r1);
        CHECK(ping_conn(kc) != conn); /* the next request is this ping: not retried */
        kcache_free(kc);
}

int
main(void)
{
        static const struct {
                const char *name;
                void (*fn)(void);
        } tests[] = {
                {"args", test_args},
                {"connect_errors", test_connect_errors},
                {"env_socket", test_env_socket},
                {"ping_hello", test_ping_hello},
                {"get_set", test_get_set},
                {"batch", test_batch},
                {"errors", test_errors},
                {"out_of_order", test_out_of_order},
                {"late_reply", test_late_reply},
                {"pending_limit", test_pending_limit},
                {"close_mid_call", test_close_mid_call},
                {"close_mid_send", test_close_mid_send},
                {"read_retry", test_read_retry},
                {"idle_close", test_idle_close},
                {"epipe", test_epipe},
                {"hostile_frame", test_hostile_frame},
                {"fork", test_fork},
                {"opts_encoding", test_opts_encoding},
                {"hashes", test_hashes},
                {"invalidate", test_invalidate},
                {"leases", test_leases},
                {"get_or_set_wrapper", test_get_or_set_wrapper},
                {"get_or_set_deadline", test_get_or_set_deadline},
                {"call_raw", test_call_raw},
        };
        int n_pass = 0, n_fail = 0;

        signal(SIGPIPE, SIG_DFL); /* a send without MSG_NOSIGNAL would kill us */
        if (fake_start() < 0) {
                perror("test-client: cannot start the fake server");
                fake_stop();
                return 2;
        }
        for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
                n_checks_failed = 0;
                tests[i].fn();
                printf("%s %s\n", n_checks_failed == 0 ? "ok  " : "FAIL", tests[i].name);
                if (n_checks_failed == 0)
                        n_pass++;
                else
                        n_fail++;
        }
        fake_stop();
        printf("%d passed, %d failed\n", n_pass, n_fail);
        return n_fail == 0 ? 0 : 1;
}
