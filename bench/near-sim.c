// SPDX-License-Identifier: MIT
/*
 * near-sim: the hit ratio of the near cache's eviction (S3-FIFO, as daemon/near.c implements it)
 * against plain LRU and FIFO, on a Zipf key stream, with and without a scan mixed in. The figures
 * in bench/RESULTS.md that chose S3-FIFO come from here.
 *
 * Workloads: Zipf(s) over N keys (rank r has weight 1/r^s; ranks are shuffled onto key ids so
 * that popularity has nothing to do with the id), R requests, the first W of them a warm-up that
 * is not counted. "zipf+scan" is the same stream with a one-pass scan inserted every E (-e)
 * requests: L (-l) keys read once each, in order, from a range no other request touches (a
 * batch job walking cold rows). The hit ratio counted is the Zipf requests' alone, so that the
 * column shows what the scan costs the hot set; the scan's own reads all miss in every policy.
 *
 * Every object has the same size, so a capacity of C objects is what near.c's byte budget
 * means here. S3-FIFO as near.c does it:
 *   - a small FIFO holding up to 10% of the capacity, a main FIFO for the rest;
 *   - a hit sets nothing but a 2-bit frequency (saturating at 3);
 *   - a new key goes to the small FIFO, or straight to main if the ghost remembers it;
 *   - while over capacity: if the small FIFO holds more than 10% (or main is empty) its tail
 *     leaves: to main (frequency reset to 0) if it was hit while young, else out, into the ghost;
 *     otherwise main's tail leaves if its frequency is 0, else it is reinserted with frequency-1;
 *   - the ghost is a bitset of 2^16 bits indexed by the key's hash, cleared through a ring of
 *     the last 8192 insertions (near.c's NEAR_GHOST_BITS, NEAR_GHOST_RING).
 * A second S3-FIFO column sizes the ghost like the S3-FIFO paper (as many entries as the cache
 * holds, exact), to show what near.c's fixed ghost gives up.
 *
 * Usage: near-sim [-n KEYS] [-r REQUESTS] [-w WARMUP] [-s ZIPF_S] [-S SEED] [-e SCAN_EVERY]
 *                 [-l SCAN_LEN]
 *   defaults: 1000000 keys, 10000000 requests, 1000000 warm-up, s 0.99, seed 1, a scan of
 *   100000 keys (10% of the key space: as many as the largest cache) every 250000 requests.
 *   Build: cc -std=c11 -O2 -o near-sim bench/near-sim.c -lm
 */
#ifndef _GNU_SOURCE
#define _POSIX_C_SOURCE 200809L /* getopt */
#endif
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#define NIL UINT32_MAX

#define GHOST_BITS (1u << 16) /* daemon/near.c NEAR_GHOST_BITS */
#define GHOST_RING 8192       /* daemon/near.c NEAR_GHOST_RING */

static struct {
        uint32_t n_keys;
        uint64_t n_req;
        uint64_t n_warm;
        double zipf_s;
        uint64_t seed;
        uint32_t scan_every;
        uint32_t scan_len;
} opt = {1000000, 10000000, 1000000, 0.99, 1, 250000, 100000};

static void *
xcalloc(size_t n, size_t size)
{
        void *p = calloc(n, size);

        if (p == NULL) {
                fprintf(stderr, "near-sim: out of memory\n");
                exit(1);
        }
        return p;
}

/* splitmix64: the RNG, and the key hash the ghost indexes by. */
static uint64_t
mix64(uint64_t x)
{
        x += 0x9e3779b97f4a7c15ull;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
        return x ^ (x >> 31);
}

static uint64_t rng_state;

static double
rng_unit(void)
{
        rng_state += 1;
        return (double)(mix64(rng_state) >> 11) * (1.0 / 9007199254740992.0);
}

/* --- the request streams ------------------------------------------------------------------ */

struct stream {
        uint32_t *keys;   /* owned */
        uint8_t *is_scan; /* owned; 1 for the scan's requests */
        uint64_t n;
        uint32_t key_space; /* ids used: n_keys plus the scans' ranges */
};

/* Zipf over opt.n_keys by inversion of the CDF; ranks shuffled onto ids. */
static void
make_zipf(uint32_t *out, uint64_t n)
{
        double *cdf = xcalloc(opt.n_keys, sizeof(*cdf)), sum = 0;
        uint32_t *perm = xcalloc(opt.n_keys, sizeof(*perm));

        for (uint32_t i = 0; i < opt.n_keys; i++) {
                sum += 1.0 / pow((double)(i + 1), opt.zipf_s);
                cdf[i] = sum;
                perm[i] = i;
        }
        for (uint32_t i = opt.n_keys - 1; i > 0; i--) {
                uint32_t j = (uint32_t)(rng_unit() * (i + 1));
                uint32_t t = perm[i];

                perm[i] = perm[j];
                perm[j] = t;
        }
        for (uint64_t k = 0; k < n; k++) {
                double u = rng_unit() * sum;
                uint32_t lo = 0, hi = opt.n_keys - 1;

                while (lo < hi) {
                        uint32_t mid = lo + (hi - lo) / 2;

                        if (cdf[mid] < u)
                                lo = mid + 1;
                        else
                                hi = mid;
                }
                out[k] = perm[lo];
        }
        free(cdf);
        free(perm);
}

static void
make_streams(struct stream *plain, struct stream *scan)
{
        uint64_t n_scans = opt.n_req / opt.scan_every, j = 0;
        uint32_t next_scan_key = opt.n_keys;

        plain->n = opt.n_req;
        plain->keys = xcalloc(plain->n, sizeof(uint32_t));
        plain->is_scan = xcalloc(plain->n, 1);
        plain->key_space = opt.n_keys;
        make_zipf(plain->keys, plain->n);

        scan->n = opt.n_req + n_scans * opt.scan_len;
        scan->keys = xcalloc(scan->n, sizeof(uint32_t));
        scan->is_scan = xcalloc(scan->n, 1);
        for (uint64_t i = 0; i < plain->n; i++) {
                scan->keys[j++] = plain->keys[i];
                if ((i + 1) % opt.scan_every == 0 && i + 1 < plain->n) {
                        for (uint32_t s = 0; s < opt.scan_len; s++) {
                                scan->is_scan[j] = 1;
                                scan->keys[j++] = next_scan_key++;
                        }
                }
        }
        scan->n = j;
        scan->key_space = next_scan_key;
}

/* --- the caches: intrusive FIFOs over key ids ----------------------------------------------- */

enum where { W_OUT = 0, W_SMALL, W_MAIN };

struct list {
        uint32_t head, tail; /* newest at head */
        uint32_t n;
};

struct cache {
        uint32_t cap;
        uint32_t *prev, *next; /* owned, per key id */
        uint8_t *where;        /* owned */
        uint8_t *freq;         /* owned */
        struct list small, main;
        /* near.c's ghost */
        uint8_t ghost_bits[GHOST_BITS / 8];
        uint32_t ghost_ring[GHOST_RING];
        uint32_t ghost_pos;
        /* the paper's ghost: a FIFO of cap key ids, exact membership */
        uint8_t *in_ghost; /* owned */
        uint32_t *gq;      /* owned, ring of cap ids */
        uint32_t gq_pos, gq_n;
        bool is_exact_ghost;
};

static void
cache_init(struct cache *c, uint32_t cap, uint32_t key_space)
{
        memset(c, 0, sizeof(*c));
        c->cap = cap;
        c->prev = xcalloc(key_space, sizeof(uint32_t));
        c->next = xcalloc(key_space, sizeof(uint32_t));
        c->where = xcalloc(key_space, 1);
        c->freq = xcalloc(key_space, 1);
        c->in_ghost = xcalloc(key_space, 1);
        c->gq = xcalloc(cap, sizeof(uint32_t));
        c->small.head = c->small.tail = c->main.head = c->main.tail = NIL;
}

static void
cache_deinit(struct cache *c)
{
        free(c->prev);
        free(c->next);
        free(c->where);
        free(c->freq);
        free(c->in_ghost);
        free(c->gq);
}

static void
list_push(struct cache *c, struct list *l, uint32_t k)
{
        c->prev[k] = NIL;
        c->next[k] = l->head;
        if (l->head != NIL)
                c->prev[l->head] = k;
        l->head = k;
        if (l->tail == NIL)
                l->tail = k;
        l->n++;
}

static void
list_remove(struct cache *c, struct list *l, uint32_t k)
{
        if (c->prev[k] != NIL)
                c->next[c->prev[k]] = c->next[k];
        else
                l->head = c->next[k];
        if (c->next[k] != NIL)
                c->prev[c->next[k]] = c->prev[k];
        else
                l->tail = c->prev[k];
        l->n--;
}

/* FIFO: a hit changes nothing; the oldest insertion leaves. */
static bool
fifo_access(struct cache *c, uint32_t k)
{
        if (c->where[k] != W_OUT)
                return true;
        if (c->main.n == c->cap) {
                uint32_t t = c->main.tail;

                list_remove(c, &c->main, t);
                c->where[t] = W_OUT;
        }
        list_push(c, &c->main, k);
        c->where[k] = W_MAIN;
        return false;
}

/* LRU: a hit moves the key to the head; the least recently used leaves. */
static bool
lru_access(struct cache *c, uint32_t k)
{
        if (c->where[k] != W_OUT) {
                list_remove(c, &c->main, k);
                list_push(c, &c->main, k);
                return true;
        }
        return fifo_access(c, k);
}

static void
ghost_add(struct cache *c, uint32_t k)
{
        if (c->is_exact_ghost) {
                if (c->gq_n == c->cap)
                        c->in_ghost[c->gq[c->gq_pos]] = 0;
                else
                        c->gq_n++;
                c->gq[c->gq_pos] = k;
                c->gq_pos = (c->gq_pos + 1) % c->cap;
                c->in_ghost[k] = 1;
                return;
        }
        uint32_t bit = (uint32_t)(mix64(k) % GHOST_BITS);
        uint32_t old = c->ghost_ring[c->ghost_pos];

        c->ghost_bits[old / 8] &= (uint8_t) ~(1u << (old % 8));
        c->ghost_ring[c->ghost_pos] = bit;
        c->ghost_pos = (c->ghost_pos + 1) % GHOST_RING;
        c->ghost_bits[bit / 8] |= (uint8_t)(1u << (bit % 8));
}

static bool
ghost_has(const struct cache *c, uint32_t k)
{
        uint32_t bit;

        if (c->is_exact_ghost)
                return c->in_ghost[k];
        bit = (uint32_t)(mix64(k) % GHOST_BITS);
        return (c->ghost_bits[bit / 8] >> (bit % 8)) & 1;
}

/* daemon/near.c evict_until_fits(), with every object of size 1. */
static void
s3_evict(struct cache *c)
{
        while (c->small.n + c->main.n > c->cap) {
                if (c->small.n > 0 && (c->small.n > c->cap / 10 || c->main.n == 0)) {
                        uint32_t t = c->small.tail;

                        list_remove(c, &c->small, t);
                        if (c->freq[t] > 0) {
                                c->freq[t] = 0;
                                c->where[t] = W_MAIN;
                                list_push(c, &c->main, t);
                                continue;
                        }
                        c->where[t] = W_OUT;
                        ghost_add(c, t);
                        continue;
                }
                uint32_t t = c->main.tail;

                list_remove(c, &c->main, t);
                if (c->freq[t] > 0) {
                        c->freq[t]--;
                        list_push(c, &c->main, t);
                        continue;
                }
                c->where[t] = W_OUT;
        }
}

static bool
s3_access(struct cache *c, uint32_t k)
{
        if (c->where[k] != W_OUT) {
                if (c->freq[k] < 3)
                        c->freq[k]++;
                return true;
        }
        c->freq[k] = 0;
        if (ghost_has(c, k)) {
                c->where[k] = W_MAIN;
                list_push(c, &c->main, k);
        } else {
                c->where[k] = W_SMALL;
                list_push(c, &c->small, k);
        }
        s3_evict(c);
        return false;
}

enum policy { P_FIFO, P_LRU, P_S3, P_S3_EXACT, P_COUNT };

static const char *const policy_names[P_COUNT] = {"FIFO", "LRU", "S3-FIFO", "S3-FIFO*"};

/* Hit ratio of the counted (post-warm-up, non-scan) requests. */
static double
run(const struct stream *s, enum policy p, uint32_t cap)
{
        struct cache c;
        uint64_t hits = 0, counted = 0, n_zipf = 0;

        cache_init(&c, cap, s->key_space);
        c.is_exact_ghost = p == P_S3_EXACT;
        for (uint64_t i = 0; i < s->n; i++) {
                uint32_t k = s->keys[i];
                bool hit;

                switch (p) {
                case P_FIFO:
                        hit = fifo_access(&c, k);
                        break;
                case P_LRU:
                        hit = lru_access(&c, k);
                        break;
                default:
                        hit = s3_access(&c, k);
                        break;
                }
                if (s->is_scan[i])
                        continue;
                if (n_zipf++ < opt.n_warm)
                        continue;
                counted++;
                hits += hit;
        }
        cache_deinit(&c);
        return counted != 0 ? (double)hits / (double)counted : NAN;
}

static void
print_machine(void)
{
        char model[256] = "?", line[512], date[64];
        struct utsname u;
        time_t now = time(NULL);
        FILE *f = fopen("/proc/cpuinfo", "r");

        if (f != NULL) {
                while (fgets(line, sizeof(line), f) != NULL) {
                        char *colon = strchr(line, ':');

                        if (strncmp(line, "model name", 10) == 0 && colon != NULL) {
                                snprintf(model, sizeof(model), "%s", colon + 2);
                                model[strcspn(model, "\n")] = '\0';
                                break;
                        }
                }
                fclose(f);
        }
        uname(&u);
        strftime(date, sizeof(date), "%Y-%m-%d %H:%M:%S UTC", gmtime(&now));
        printf("machine: nproc %ld, CPU \"%s\", %s %s %s, date %s\n", sysconf(_SC_NPROCESSORS_ONLN),
               model, u.sysname, u.release, u.machine, date);
}

int
main(int argc, char **argv)
{
        static const double fractions[] = {0.01, 0.05, 0.10};
        struct stream plain, scan;
        int ch;

        while ((ch = getopt(argc, argv, "n:r:w:s:S:e:l:")) != -1) {
                switch (ch) {
                case 'n':
                        opt.n_keys = (uint32_t)strtoul(optarg, NULL, 10);
                        break;
                case 'r':
                        opt.n_req = strtoull(optarg, NULL, 10);
                        break;
                case 'w':
                        opt.n_warm = strtoull(optarg, NULL, 10);
                        break;
                case 's':
                        opt.zipf_s = atof(optarg);
                        break;
                case 'S':
                        opt.seed = strtoull(optarg, NULL, 10);
                        break;
                case 'e':
                        opt.scan_every = (uint32_t)strtoul(optarg, NULL, 10);
                        break;
                case 'l':
                        opt.scan_len = (uint32_t)strtoul(optarg, NULL, 10);
                        break;
                default:
                        fprintf(stderr, "usage: near-sim [-n KEYS] [-r REQUESTS] [-w WARMUP] "
                                        "[-s ZIPF_S] [-S SEED] [-e SCAN_EVERY] [-l SCAN_LEN]\n");
                        return 2;
                }
        }
        if (opt.n_keys < 100 || opt.n_req <= opt.n_warm || opt.zipf_s <= 0 || opt.scan_every == 0 ||
            (uint64_t)opt.n_keys + opt.n_req / opt.scan_every * opt.scan_len > UINT32_MAX - 1) {
                fprintf(stderr, "near-sim: need >= 100 keys, more requests than warm-up, s > 0, "
                                "a scan period > 0, fewer than 2^32 keys in all\n");
                return 2;
        }
        rng_state = opt.seed;
        print_machine();
        printf("near-sim: Zipf(%.2f) over %u keys, %llu requests (first %llu not counted), seed "
               "%llu; zipf+scan: a one-pass scan of %u cold keys every %u requests\n",
               opt.zipf_s, opt.n_keys, (unsigned long long)opt.n_req,
               (unsigned long long)opt.n_warm, (unsigned long long)opt.seed, opt.scan_len,
               opt.scan_every);
        printf("hit ratio of the Zipf requests; S3-FIFO = daemon/near.c (ghost: %u bits, ring of "
               "%u); S3-FIFO* = the same with an exact ghost of as many keys as the cache\n",
               GHOST_BITS, GHOST_RING);
        make_streams(&plain, &scan);

        printf("\n%-10s %7s %9s", "workload", "cache", "objects");
        for (int p = 0; p < P_COUNT; p++)
                printf(" %9s", policy_names[p]);
        printf("   S3-FIFO vs LRU\n");
        for (int w = 0; w < 2; w++) {
                const struct stream *s = w == 0 ? &plain : &scan;

                for (size_t f = 0; f < sizeof(fractions) / sizeof(fractions[0]); f++) {
                        uint32_t cap = (uint32_t)(fractions[f] * opt.n_keys);
                        double r[P_COUNT];

                        printf("%-10s %6.0f%% %9u", w == 0 ? "zipf" : "zipf+scan",
                               fractions[f] * 100, cap);
                        fflush(stdout);
                        for (int p = 0; p < P_COUNT; p++) {
                                r[p] = run(s, (enum policy)p, cap);
                                printf(" %8.2f%%", r[p] * 100);
                                fflush(stdout);
                        }
                        printf("   %+.2f pt, misses %.3fx\n", (r[P_S3] - r[P_LRU]) * 100,
                               (1 - r[P_S3]) / (1 - r[P_LRU]));
                }
        }
        free(plain.keys);
        free(plain.is_scan);
        free(scan.keys);
        free(scan.is_scan);
        return 0;
}
