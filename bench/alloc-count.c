/* SPDX-License-Identifier: MIT */
/*
 * alloc-count: an LD_PRELOAD library that counts heap allocations (malloc,
 * calloc, realloc, posix_memalign, aligned_alloc, strdup goes through
 * malloc) by the shared object that called them, and writes the counts to
 * the file named by $ALLOC_COUNT_OUT when the process exits. bench/allocs
 * runs kcached under it with and without N requests; the difference over N
 * is what one request allocates, and in which library (the kcached
 * executable itself, libhiredis, libmsgpackc, libev, libc).
 *
 * The caller is the return address of the wrapper, resolved with dladdr()
 * only at exit; during the run a fixed open-addressing table of addresses is
 * bumped with atomics, so the wrapper itself never allocates.
 *
 *   cc -O2 -shared -fPIC -o alloc-count.so bench/alloc-count.c -ldl
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_NEXT, dladdr */
#endif
#include <dlfcn.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 65536 /* distinct call sites; more are counted as "(table full)" */

static _Atomic uintptr_t site_addr[SLOTS];
static _Atomic unsigned long site_n[SLOTS];
static _Atomic unsigned long n_overflow;

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);

/* dlsym() may call calloc before real_calloc is known: serve it from here. */
static char boot_buf[4096];
static size_t boot_used;

static void
count(uintptr_t ra)
{
        size_t i = (ra >> 4) * 0x9E3779B97F4A7C15ull >> 48;

        for (size_t probe = 0; probe < SLOTS; probe++, i = (i + 1) % SLOTS) {
                uintptr_t cur = atomic_load_explicit(&site_addr[i], memory_order_relaxed);
                if (cur == 0) {
                        uintptr_t zero = 0;
                        if (!atomic_compare_exchange_strong(&site_addr[i], &zero, ra) &&
                            zero != ra)
                                continue;
                        cur = ra;
                }
                if (cur == ra) {
                        atomic_fetch_add_explicit(&site_n[i], 1, memory_order_relaxed);
                        return;
                }
        }
        atomic_fetch_add_explicit(&n_overflow, 1, memory_order_relaxed);
}

static void
init(void)
{
        if (real_malloc != NULL)
                return;
        real_calloc = dlsym(RTLD_NEXT, "calloc");
        real_realloc = dlsym(RTLD_NEXT, "realloc");
        real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
        real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
        real_malloc = dlsym(RTLD_NEXT, "malloc");
}

void *
malloc(size_t n)
{
        init();
        count((uintptr_t)__builtin_return_address(0));
        return real_malloc(n);
}

void *
calloc(size_t a, size_t b)
{
        if (real_calloc == NULL) {
                size_t n = (a * b + 15) & ~(size_t)15;
                void *p;
                if (boot_used + n > sizeof(boot_buf))
                        return NULL;
                p = boot_buf + boot_used;
                boot_used += n;
                return p; /* zeroed: static storage */
        }
        count((uintptr_t)__builtin_return_address(0));
        return real_calloc(a, b);
}

void *
realloc(void *p, size_t n)
{
        init();
        count((uintptr_t)__builtin_return_address(0));
        return real_realloc(p, n);
}

void
free(void *p)
{
        static void (*real_free)(void *);

        if ((char *)p >= boot_buf && (char *)p < boot_buf + sizeof(boot_buf))
                return;
        if (real_free == NULL)
                real_free = dlsym(RTLD_NEXT, "free");
        real_free(p);
}

int
posix_memalign(void **out, size_t align, size_t n)
{
        init();
        count((uintptr_t)__builtin_return_address(0));
        return real_posix_memalign(out, align, n);
}

void *
aligned_alloc(size_t align, size_t n)
{
        init();
        count((uintptr_t)__builtin_return_address(0));
        return real_aligned_alloc(align, n);
}

/*
 * One line per call site: "object<TAB>function<TAB>offset<TAB>address<TAB>count";
 * the offset is from the object's base: addr2line -f -e object takes it for a
 * PIE or a library, the address for a non-PIE executable (static functions of
 * an executable have no name dladdr could give).
 */
__attribute__((destructor)) static void
dump(void)
{
        const char *path = getenv("ALLOC_COUNT_OUT");
        FILE *f;

        if (path == NULL || (f = fopen(path, "w")) == NULL)
                return;
        for (size_t i = 0; i < SLOTS; i++) {
                uintptr_t a = atomic_load(&site_addr[i]);
                unsigned long n = atomic_load(&site_n[i]);
                Dl_info info;
                const char *obj = "?", *fn = "?";
                uintptr_t off = a;

                if (a == 0 || n == 0)
                        continue;
                if (dladdr((void *)a, &info) != 0) {
                        if (info.dli_fname != NULL)
                                obj = strrchr(info.dli_fname, '/') != NULL
                                              ? strrchr(info.dli_fname, '/') + 1
                                              : info.dli_fname;
                        if (info.dli_sname != NULL)
                                fn = info.dli_sname;
                        off = a - (uintptr_t)info.dli_fbase;
                }
                fprintf(f, "%s\t%s\t%#lx\t%#lx\t%lu\n", obj, fn, (unsigned long)off,
                        (unsigned long)a, n);
        }
        if (atomic_load(&n_overflow) != 0)
                fprintf(f, "(table full)\t?\t0\t0\t%lu\n", atomic_load(&n_overflow));
        fclose(f);
}
