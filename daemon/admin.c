/* SPDX-License-Identifier: MIT */
/*
 * admin: the operators' line-protocol socket (see admin.h).
 *
 *   accept -> admin_conn: recv into in[] -> split lines -> admin_cmds[] ->
 *             answer appended to out -> prepare hook: one send per conn
 *
 * Input: in[] holds at most one line being assembled (ADMIN_LINE_MAX bytes
 * plus "\r\n"). A line that cannot fit is answered `error: line too long` as
 * soon as that is known, and the bytes up to the next newline are discarded,
 * so the answers stay one per line and the connection stays usable.
 *
 * Output: answers are appended to out and written once per loop iteration
 * from our own ev_prepare hook; EV_WRITE only after a short write. While more
 * than ADMIN_OUT_PAUSE bytes wait, reading and command execution pause (a
 * pipelining peer is slowed, not dropped); a peer whose unread answers still
 * pass ADMIN_OUT_MAX is closed.
 *
 * A connection is never freed inside its own callback: admin_conn_close()
 * parks it on the dead list, freed from the prepare hook.
 */
#include "daemon/admin.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "buf.h"
#include "daemon/backend.h"
#include "daemon/json.h"
#include "daemon/log.h"
#include "daemon/server.h"
#include "daemon/stats.h"

#define ADMIN_IN_SIZE      (ADMIN_LINE_MAX + 2) /* a full line and its "\r\n" */
#define ADMIN_MAX_ARGS     4
#define ADMIN_ECHO_MAX     64  /* bytes of an unknown command echoed back */
#define ADMIN_CLOSE_WAIT   1.0 /* seconds to flush the last answers after quit or EOF */
#define ADMIN_IDLE_KEEP    (16 * 1024)
#define ADMIN_ACCEPT_BATCH 16

/* clang-format 14 reads `(ptr) - x` as a cast of `-x`: keep it away from these. */
/* clang-format off */
#define admin_of(ptr, member) ((struct admin *)((char *)(ptr) - offsetof(struct admin, member)))
#define admin_conn_of(ptr, member) \
        ((struct admin_conn *)((char *)(ptr) - offsetof(struct admin_conn, member)))
/* clang-format on */
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

struct admin_conn {
        struct admin *adm; /* ref, owner */
        int fd;
        uint64_t id;
        ev_io rio;
        ev_io wio;
        ev_timer close_timer; /* bounds the final flush after quit or EOF */
        char in[ADMIN_IN_SIZE];
        size_t in_len;
        struct buf out;
        struct admin_conn *next, *prev; /* live list, or next on the dead list */
        bool is_discarding;             /* inside an over-long line: drop through its newline */
        bool is_paused;                 /* too many answers unread: not reading, not executing */
        bool is_closing;                /* no more commands; close once out is written */
        bool is_dead;                   /* torn down, waiting to be freed */
};

struct admin {
        struct server *srv;   /* ref, owner */
        struct ev_loop *loop; /* ref */
        int lfd;
        char *path; /* owned; unlinked on free */
        ev_io lio;
        ev_prepare flush;
        struct admin_conn *conns; /* owned, doubly linked */
        struct admin_conn *dead;  /* owned: closed conns freed in the prepare hook */
        unsigned n_conns;
        uint64_t next_id;
        bool has_dirty; /* some conn has answers to write this iteration */
};

/* A word of the command line: not NUL-terminated, may hold any byte. */
struct admin_tok {
        const char *p;
        size_t n;
};

struct admin_cmd {
        const char *name;
        const char *usage; /* for help and `error: usage:` */
        int min_args, max_args;
        void (*fn)(struct admin_conn *c, const struct admin_tok *args, int n_args);
};

static void admin_conn_on_read(struct ev_loop *loop, ev_io *w, int revents);
static void admin_conn_on_write(struct ev_loop *loop, ev_io *w, int revents);
static void admin_conn_on_close_timer(struct ev_loop *loop, ev_timer *w, int revents);
static void admin_conn_process(struct admin_conn *c);

static struct log_limit admin_log_limit;

/* --- output ------------------------------------------------------------- */

static void
admin_conn_mark_dirty(struct admin_conn *c)
{
        c->adm->has_dirty = true;
}

/* Appends one answer line; the text must not contain a newline. */
static void __attribute__((format(printf, 2, 3)))
admin_reply(struct admin_conn *c, const char *fmt, ...)
{
        char line[1024];
        va_list ap;
        int n;

        va_start(ap, fmt);
        n = vsnprintf(line, sizeof(line) - 1, fmt, ap);
        va_end(ap);
        if (n < 0)
                n = 0;
        if ((size_t)n > sizeof(line) - 2)
                n = (int)sizeof(line) - 2; /* truncated: still one line */
        line[n++] = '\n';
        /* Out of memory: this answer is lost; the peer sees fewer lines. */
        (void)buf_append(&c->out, line, (size_t)n);
        admin_conn_mark_dirty(c);
}

/* A JSON answer: fn writes one value into out, then the newline. */
static void
admin_reply_json(struct admin_conn *c, void (*fn)(struct admin_conn *c, struct json *j))
{
        size_t start = c->out.len;
        struct json j;

        json_init(&j, &c->out);
        fn(c, &j);
        if (!j.failed && buf_append(&c->out, "\n", 1) == 0) {
                admin_conn_mark_dirty(c);
                return;
        }
        /* Drop the partial answer (bytes before start are untouched). */
        c->out.len = start;
        admin_reply(c, "error: out of memory");
}

/*
 * Copies peer bytes into out as printable ASCII: quote, backslash and bytes
 * outside 0x20..0x7e become \xNN; at most ADMIN_ECHO_MAX input bytes, then
 * "...". out must hold 4 * ADMIN_ECHO_MAX + 4 bytes.
 */
static void
admin_escape(const struct admin_tok *t, char *out, size_t outlen)
{
        size_t n = t->n < ADMIN_ECHO_MAX ? t->n : ADMIN_ECHO_MAX;
        size_t j = 0;

        for (size_t i = 0; i < n && j + 5 < outlen; i++) {
                unsigned char ch = (unsigned char)t->p[i];
                if (ch < 0x20 || ch > 0x7e || ch == '\'' || ch == '\\')
                        j += (size_t)snprintf(out + j, outlen - j, "\\x%02x", ch);
                else
                        out[j++] = (char)ch;
        }
        if (t->n > n && j + 4 <= outlen) {
                memcpy(out + j, "...", 3);
                j += 3;
        }
        out[j] = '\0';
}

/* Makes text from elsewhere (a backend's reason) safe inside one line. */
static void
admin_one_line(char *s)
{
        for (; *s != '\0'; s++)
                if ((unsigned char)*s < 0x20 || *s == 0x7f)
                        *s = ' ';
}

/* --- commands ----------------------------------------------------------- */

static bool
admin_tok_is(const struct admin_tok *t, const char *word)
{
        return t->n == strlen(word) && memcmp(t->p, word, t->n) == 0;
}

static void admin_cmd_help(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_health(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_stats(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_backends(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_loglevel(struct admin_conn *c, const struct admin_tok *args, int n_args);
static void admin_cmd_quit(struct admin_conn *c, const struct admin_tok *args, int n_args);

/* The commands, in the order `help` lists them. */
static const struct admin_cmd admin_cmds[] = {
        {"help", "help", 0, 0, admin_cmd_help},
        {"health", "health [live|ready]", 0, 1, admin_cmd_health},
        {"stats", "stats", 0, 0, admin_cmd_stats},
        {"backends", "backends", 0, 0, admin_cmd_backends},
        {"loglevel", "loglevel debug|info|warn|error", 1, 1, admin_cmd_loglevel},
        {"quit", "quit", 0, 0, admin_cmd_quit},
};

static void
admin_cmd_help(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        char line[512];
        size_t j = 0;

        j += (size_t)snprintf(line, sizeof(line), "commands:");
        for (size_t i = 0; i < ARRAY_SIZE(admin_cmds) && j < sizeof(line); i++)
                j += (size_t)snprintf(line + j, sizeof(line) - j, "%s %s", i == 0 ? "" : ",",
                                      admin_cmds[i].usage);
        admin_reply(c, "%s", line);
}

/*
 * live: the process runs its loop (this answer proves it). ready: kcached
 * would serve a request now: the client socket is open, not draining, and
 * the backend says how healthy the Redis side is.
 */
static void
admin_cmd_health(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        struct server *srv = c->adm->srv;
        char why[256] = "";

        if (n_args == 1 && admin_tok_is(&args[0], "live")) {
                admin_reply(c, "ok");
                return;
        }
        if (n_args == 1 && !admin_tok_is(&args[0], "ready")) {
                admin_reply(c, "error: usage: health [live|ready]");
                return;
        }
        if (srv->is_draining) {
                admin_reply(c, "down: draining");
                return;
        }
        if (!srv->is_listening) {
                admin_reply(c, "down: starting");
                return;
        }
        int r = backend_health(srv->be, why, sizeof(why));
        why[sizeof(why) - 1] = '\0';
        admin_one_line(why);
        switch (r) {
        case 0:
                admin_reply(c, "ok");
                break;
        case 1:
                admin_reply(c, "degraded: %s", why[0] != '\0' ? why : "unknown");
                break;
        default:
                admin_reply(c, "down: %s", why[0] != '\0' ? why : "unknown");
                break;
        }
}

static void
admin_write_stats(struct admin_conn *c, struct json *j)
{
        struct server *srv = c->adm->srv;

        stats_write_json(j, ev_now(srv->loop) - srv->started);
}

static void
admin_cmd_stats(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        admin_reply_json(c, admin_write_stats);
}

static void
admin_write_backends(struct admin_conn *c, struct json *j)
{
        backend_write_json(c->adm->srv->be, j);
}

static void
admin_cmd_backends(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        admin_reply_json(c, admin_write_backends);
}

static void
admin_cmd_loglevel(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        for (int level = LOG_DEBUG; level <= LOG_ERROR; level++) {
                if (!admin_tok_is(&args[0], log_level_name(level)))
                        continue;
                /* Logged before the change so that raising the level still leaves a trace. */
                log_info("admin", "loglevel", "admin: log level %s -> %s",
                         log_level_name(log_level_current), log_level_name(level));
                log_set_level(level);
                admin_reply(c, "ok");
                return;
        }
        admin_reply(c, "error: unknown level");
}

static void admin_conn_close_after_flush(struct admin_conn *c);

static void
admin_cmd_quit(struct admin_conn *c, const struct admin_tok *args, int n_args)
{
        admin_conn_close_after_flush(c);
}

/* One line, without its "\n"; len may exceed ADMIN_LINE_MAX (then it is refused). */
static void
admin_conn_line(struct admin_conn *c, const char *line, size_t len)
{
        struct admin_tok tok[ADMIN_MAX_ARGS + 2];
        size_t i = 0;
        int n = 0;

        if (len > 0 && line[len - 1] == '\r')
                len--;
        if (len > ADMIN_LINE_MAX) {
                admin_reply(c, "error: line too long");
                return;
        }
        while (i < len && n < (int)ARRAY_SIZE(tok)) {
                while (i < len && (line[i] == ' ' || line[i] == '\t'))
                        i++;
                if (i == len)
                        break;
                tok[n].p = line + i;
                while (i < len && line[i] != ' ' && line[i] != '\t')
                        i++;
                tok[n].n = (size_t)(line + i - tok[n].p);
                n++;
        }
        if (n == 0)
                return; /* empty line: nothing to answer */
        for (size_t k = 0; k < ARRAY_SIZE(admin_cmds); k++) {
                const struct admin_cmd *cmd = &admin_cmds[k];
                if (!admin_tok_is(&tok[0], cmd->name))
                        continue;
                if (n - 1 < cmd->min_args || n - 1 > cmd->max_args) {
                        admin_reply(c, "error: usage: %s", cmd->usage);
                        return;
                }
                log_debug("admin", "command", "admin: client %llu: %s", (unsigned long long)c->id,
                          cmd->name);
                cmd->fn(c, tok + 1, n - 1);
                return;
        }
        char esc[4 * ADMIN_ECHO_MAX + 4];
        admin_escape(&tok[0], esc, sizeof(esc));
        admin_reply(c, "error: unknown command '%s'", esc);
}

/* --- connections -------------------------------------------------------- */

static void
admin_conn_close(struct admin_conn *c, const char *why)
{
        struct admin *adm = c->adm;

        if (c->is_dead)
                return;
        log_debug("admin", "close", "admin: client %llu: %s", (unsigned long long)c->id, why);
        c->is_dead = true;
        ev_io_stop(adm->loop, &c->rio);
        ev_io_stop(adm->loop, &c->wio);
        ev_timer_stop(adm->loop, &c->close_timer);
        close(c->fd);
        c->fd = -1;
        if (c->prev != NULL)
                c->prev->next = c->next;
        else
                adm->conns = c->next;
        if (c->next != NULL)
                c->next->prev = c->prev;
        c->prev = NULL;
        c->next = adm->dead;
        adm->dead = c;
        adm->n_conns--;
}

static struct admin_conn *
admin_conn_free(struct admin_conn *c)
{
        if (c == NULL)
                return NULL;
        buf_deinit(&c->out);
        free(c);
        return NULL;
}

static void
admin_conn_close_after_flush(struct admin_conn *c)
{
        if (c->is_dead || c->is_closing)
                return;
        c->is_closing = true;
        ev_io_stop(c->adm->loop, &c->rio);
        ev_timer_start(c->adm->loop, &c->close_timer);
        admin_conn_mark_dirty(c);
}

static void
admin_conn_on_close_timer(struct ev_loop *loop, ev_timer *w, int revents)
{
        admin_conn_close(admin_conn_of(w, close_timer), "peer did not read its last answers");
}

/* Writes out; 0, or -1 if the connection was closed. */
static int
admin_conn_flush(struct admin_conn *c)
{
        if (c->is_dead)
                return -1;
        while (buf_size(&c->out) > 0) {
                ssize_t n = send(c->fd, buf_head(&c->out), buf_size(&c->out), MSG_NOSIGNAL);
                if (n == -1) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                /* buf only rewinds when emptied: keep a slow reader's
                                 * buffer from creeping forward without bound. */
                                if (c->out.off > buf_size(&c->out))
                                        buf_compact(&c->out);
                                if (buf_size(&c->out) > ADMIN_OUT_MAX) {
                                        admin_conn_close(c, "peer does not read its answers");
                                        return -1;
                                }
                                ev_io_start(c->adm->loop, &c->wio);
                                return 0;
                        }
                        admin_conn_close(c, strerror(errno));
                        return -1;
                }
                buf_consume(&c->out, (size_t)n);
        }
        ev_io_stop(c->adm->loop, &c->wio);
        buf_shrink(&c->out, ADMIN_IDLE_KEEP);
        if (c->is_closing) {
                admin_conn_close(c, "closed after its last answer");
                return -1;
        }
        if (c->is_paused) {
                /* Answers drained: run the commands already buffered, then read again. */
                c->is_paused = false;
                admin_conn_process(c);
                if (!c->is_dead && !c->is_paused && !c->is_closing)
                        ev_io_start(c->adm->loop, &c->rio);
        }
        return 0;
}

static void
admin_conn_on_write(struct ev_loop *loop, ev_io *w, int revents)
{
        (void)admin_conn_flush(admin_conn_of(w, wio));
}

/*
 * Runs every complete line in in[], unless answers pile up (then pauses with
 * the rest kept in in[]). Leaves in[] holding the start of an unfinished
 * line; a full in[] without a newline is an over-long line.
 */
static void
admin_conn_process(struct admin_conn *c)
{
        size_t pos = 0;

        while (!c->is_dead && !c->is_closing && pos < c->in_len) {
                char *start = c->in + pos;
                char *nl = memchr(start, '\n', c->in_len - pos);

                if (buf_size(&c->out) >= ADMIN_OUT_PAUSE) {
                        c->is_paused = true;
                        ev_io_stop(c->adm->loop, &c->rio);
                        break;
                }
                if (c->is_discarding) {
                        if (nl == NULL) {
                                pos = c->in_len;
                                break;
                        }
                        c->is_discarding = false;
                        pos = (size_t)(nl - c->in) + 1;
                        continue;
                }
                if (nl == NULL) {
                        if (pos == 0 && c->in_len == sizeof(c->in)) {
                                /* Cannot be a line we accept: answer now, drop the rest. */
                                admin_reply(c, "error: line too long");
                                c->is_discarding = true;
                                pos = c->in_len;
                        }
                        break;
                }
                admin_conn_line(c, start, (size_t)(nl - start));
                pos = (size_t)(nl - c->in) + 1;
        }
        if (c->is_dead)
                return;
        if (c->is_closing) {
                c->in_len = 0; /* quit: whatever followed it is not run */
                return;
        }
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
}

static void
admin_conn_on_read(struct ev_loop *loop, ev_io *w, int revents)
{
        struct admin_conn *c = admin_conn_of(w, rio);
        ssize_t n;

        if (c->in_len == sizeof(c->in)) {
                /* Not expected (process leaves room), but recv(0) would read as EOF. */
                admin_conn_process(c);
                return;
        }
        n = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, 0);
        if (n == 0) {
                /* `printf stats | socat ...`: a last line without "\n" still counts. */
                if (c->in_len > 0 && !c->is_discarding)
                        admin_conn_line(c, c->in, c->in_len);
                c->in_len = 0;
                admin_conn_close_after_flush(c);
                return;
        }
        if (n == -1) {
                if (errno == EAGAIN || errno == EINTR)
                        return;
                admin_conn_close(c, strerror(errno));
                return;
        }
        c->in_len += (size_t)n;
        admin_conn_process(c);
}

static void
admin_accept_one(struct admin *adm, int fd)
{
        struct admin_conn *c;

        if (adm->n_conns >= ADMIN_MAX_CONNS) {
                static const char msg[] = "error: too many admin connections\n";
                /* A fresh socket's buffer is empty: this short write does not block. */
                (void)send(fd, msg, sizeof(msg) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
                close(fd);
                if (log_ratelimit(&admin_log_limit, 5))
                        log_warn("admin", "too_many", "admin: refused a connection: %u open",
                                 adm->n_conns);
                return;
        }
        c = calloc(1, sizeof(*c));
        if (c == NULL) {
                close(fd);
                return;
        }
        c->adm = adm;
        c->fd = fd;
        c->id = ++adm->next_id;
        buf_init(&c->out);
        ev_io_init(&c->rio, admin_conn_on_read, fd, EV_READ);
        ev_io_init(&c->wio, admin_conn_on_write, fd, EV_WRITE);
        ev_timer_init(&c->close_timer, admin_conn_on_close_timer, ADMIN_CLOSE_WAIT, 0.);
        ev_io_start(adm->loop, &c->rio);
        c->next = adm->conns;
        if (adm->conns != NULL)
                adm->conns->prev = c;
        adm->conns = c;
        adm->n_conns++;
        log_debug("admin", "accept", "admin: client %llu connected", (unsigned long long)c->id);
}

static void
admin_on_accept(struct ev_loop *loop, ev_io *w, int revents)
{
        struct admin *adm = admin_of(w, lio);

        for (int i = 0; i < ADMIN_ACCEPT_BATCH; i++) {
                int fd = accept4(adm->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd == -1) {
                        if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED &&
                            log_ratelimit(&admin_log_limit, 5))
                                log_warn("admin", "accept", "admin: accept: %s", strerror(errno));
                        return;
                }
                admin_accept_one(adm, fd);
        }
}

/* Once per loop iteration, before blocking: write answers, free closed conns. */
static void
admin_on_prepare(struct ev_loop *loop, ev_prepare *w, int revents)
{
        struct admin *adm = admin_of(w, flush);

        /* A flush can unpause a conn and run its buffered commands: repeat until written. */
        while (adm->has_dirty) {
                struct admin_conn *c, *next;
                adm->has_dirty = false;
                for (c = adm->conns; c != NULL; c = next) {
                        next = c->next;
                        /* A conn waiting for EV_WRITE is flushed by that watcher. */
                        if ((buf_size(&c->out) > 0 || c->is_closing) && !ev_is_active(&c->wio))
                                (void)admin_conn_flush(c);
                }
        }
        while (adm->dead != NULL) {
                struct admin_conn *c = adm->dead;
                adm->dead = c->next;
                admin_conn_free(c);
        }
}

/* --- lifecycle ---------------------------------------------------------- */

int
admin_new(struct admin **out, struct server *srv, char *err, size_t errlen)
{
        const struct config *cfg = srv->cfg;
        struct admin *adm;

        if (cfg->admin_socket == NULL || cfg->admin_socket[0] == '\0') {
                *out = NULL;
                return 0;
        }
        if (strlen(cfg->admin_socket) >= sizeof(((struct sockaddr_un *)NULL)->sun_path)) {
                snprintf(err, errlen, "admin socket %s: path too long", cfg->admin_socket);
                return -1;
        }
        if (strcmp(cfg->admin_socket, cfg->socket) == 0) {
                snprintf(err, errlen, "admin socket %s: must differ from [server] socket",
                         cfg->admin_socket);
                return -1;
        }
        adm = calloc(1, sizeof(*adm));
        if (adm == NULL || (adm->path = strdup(cfg->admin_socket)) == NULL) {
                free(adm);
                snprintf(err, errlen, "out of memory");
                return -1;
        }
        adm->srv = srv;
        adm->loop = srv->loop;
        if (server_prepare_path(adm->path, err, errlen) < 0)
                goto fail;
        adm->lfd = server_bind_unix(adm->path, cfg->admin_socket_mode, err, errlen);
        if (adm->lfd == -1)
                goto fail;
        ev_io_init(&adm->lio, admin_on_accept, adm->lfd, EV_READ);
        ev_io_start(adm->loop, &adm->lio);
        ev_prepare_init(&adm->flush, admin_on_prepare);
        ev_prepare_start(adm->loop, &adm->flush);
        log_info("admin", "listening", "admin: listening on %s", adm->path);
        *out = adm;
        return 0;
fail:
        free(adm->path);
        free(adm);
        return -1;
}

struct admin *
admin_free(struct admin *adm)
{
        if (adm == NULL)
                return NULL;
        while (adm->conns != NULL)
                admin_conn_close(adm->conns, "shutting down");
        while (adm->dead != NULL) {
                struct admin_conn *c = adm->dead;
                adm->dead = c->next;
                admin_conn_free(c);
        }
        ev_io_stop(adm->loop, &adm->lio);
        ev_prepare_stop(adm->loop, &adm->flush);
        close(adm->lfd);
        unlink(adm->path);
        free(adm->path);
        free(adm);
        return NULL;
}
