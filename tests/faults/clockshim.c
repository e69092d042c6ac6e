/*
 * clockshim: an LD_PRELOAD library that steps a process's wall clock, for the
 * fault suite's clock-step scenario (tests/tests/faults/clock_steps.rs).
 *
 * Debian's libfaketime deadlocks redis-server at start (its initialisation
 * calls into the allocator, whose own initialisation reads the clock, which
 * re-enters libfaketime). This shim avoids that by never calling anything
 * that may allocate, lock or recurse: the clocks are read with raw system
 * calls (syscall(SYS_clock_gettime, ...)), and the offset file is read with
 * raw openat/read/close. Everything it calls is async-signal-safe.
 *
 * It overrides clock_gettime (CLOCK_REALTIME and CLOCK_REALTIME_COARSE only;
 * every other clock, CLOCK_MONOTONIC in particular, is passed through
 * unchanged), gettimeofday and time. Each adds an offset in milliseconds
 * (signed decimal, e.g. "-3600000") read from the file named by the
 * environment variable LW_CLOCK_OFFSET_FILE. The file is re-read at most
 * every REREAD_NS (the value is cached in between); a missing or unreadable
 * file keeps the last value (initially 0). Writers should replace the file
 * atomically (write a temporary file, then rename it over).
 *
 * Built by the test at run time: gcc -O2 -shared -fPIC -o clockshim.so clockshim.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define ENV_VAR "LW_CLOCK_OFFSET_FILE"
/* Re-read the offset file at most every 2 ms. */
#define REREAD_NS 2000000LL
#define NS_PER_SEC 1000000000LL

/* The offset file's path, copied at load time (before main, single threaded;
 * redis-server later moves its environment around for setproctitle). */
static char path[4096];
/* 0: not looked up yet, 1: path set, -1: no file (the shim is inert). */
static int path_state;
static int64_t offset_ms;
/* CLOCK_MONOTONIC_COARSE time of the last read, in ns; 0 = never. */
static int64_t last_read_ns;

static void init_path(void) {
    const char *p = getenv(ENV_VAR);
    size_t n = 0;
    if (p == NULL || p[0] == '\0') {
        __atomic_store_n(&path_state, -1, __ATOMIC_RELEASE);
        return;
    }
    while (p[n] != '\0' && n + 1 < sizeof path) {
        path[n] = p[n];
        n++;
    }
    path[n] = '\0';
    __atomic_store_n(&path_state, p[n] == '\0' ? 1 : -1, __ATOMIC_RELEASE);
}

__attribute__((constructor)) static void clockshim_init(void) {
    if (__atomic_load_n(&path_state, __ATOMIC_ACQUIRE) == 0)
        init_path();
}

/* Parses an optionally signed decimal integer (leading blanks allowed,
 * anything after the digits ignored). Returns 1 on success. */
static int parse_ms(const char *s, long n, int64_t *out) {
    long i = 0;
    int neg = 0, digits = 0;
    int64_t v = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n'))
        i++;
    if (i < n && (s[i] == '-' || s[i] == '+')) {
        neg = s[i] == '-';
        i++;
    }
    while (i < n && s[i] >= '0' && s[i] <= '9' && digits < 18) {
        v = v * 10 + (s[i] - '0');
        digits++;
        i++;
    }
    if (digits == 0)
        return 0;
    *out = neg ? -v : v;
    return 1;
}

static int read_offset(int64_t *out) {
    char buf[64];
    long fd, n;
    fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    n = syscall(SYS_read, fd, buf, sizeof buf);
    syscall(SYS_close, fd);
    return n > 0 && parse_ms(buf, n, out);
}

/* The current offset in ms (0 when the shim is inert). Preserves errno. */
static int64_t current_offset(void) {
    int state = __atomic_load_n(&path_state, __ATOMIC_ACQUIRE);
    struct timespec now;
    int64_t now_ns, last, v;
    int saved_errno;
    if (state == 0) {
        /* Called before our constructor ran: still single threaded. */
        init_path();
        state = __atomic_load_n(&path_state, __ATOMIC_ACQUIRE);
    }
    if (state != 1)
        return 0;
    saved_errno = errno;
    if (syscall(SYS_clock_gettime, CLOCK_MONOTONIC_COARSE, &now) == 0) {
        now_ns = (int64_t)now.tv_sec * NS_PER_SEC + now.tv_nsec;
        last = __atomic_load_n(&last_read_ns, __ATOMIC_RELAXED);
        if (last == 0 || now_ns - last >= REREAD_NS || now_ns < last) {
            __atomic_store_n(&last_read_ns, now_ns == 0 ? 1 : now_ns, __ATOMIC_RELAXED);
            if (read_offset(&v))
                __atomic_store_n(&offset_ms, v, __ATOMIC_RELAXED);
        }
    }
    errno = saved_errno;
    return __atomic_load_n(&offset_ms, __ATOMIC_RELAXED);
}

static void shift(int64_t *sec, int64_t *nsec, int64_t off_ms, int64_t unit_per_ms,
                  int64_t unit_per_sec) {
    int64_t s = *sec + off_ms / 1000;
    int64_t n = *nsec + (off_ms % 1000) * unit_per_ms;
    while (n < 0) {
        n += unit_per_sec;
        s--;
    }
    while (n >= unit_per_sec) {
        n -= unit_per_sec;
        s++;
    }
    *sec = s;
    *nsec = n;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    int64_t off, s, n;
    if (syscall(SYS_clock_gettime, id, ts) != 0)
        return -1; /* errno set by syscall() */
    if (id != CLOCK_REALTIME && id != CLOCK_REALTIME_COARSE)
        return 0;
    off = current_offset();
    if (off != 0) {
        s = ts->tv_sec;
        n = ts->tv_nsec;
        shift(&s, &n, off, 1000000, NS_PER_SEC);
        ts->tv_sec = s;
        ts->tv_nsec = n;
    }
    return 0;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    int64_t off, s, u;
    if (syscall(SYS_gettimeofday, tv, tz) != 0)
        return -1;
    /* glibc declares tv nonnull; hide the pointer from that assumption so
     * the check survives, since the system call accepts NULL. */
    __asm__("" : "+r"(tv));
    if (tv == NULL)
        return 0;
    off = current_offset();
    if (off != 0) {
        s = tv->tv_sec;
        u = tv->tv_usec;
        shift(&s, &u, off, 1000, 1000000);
        tv->tv_sec = s;
        tv->tv_usec = u;
    }
    return 0;
}

time_t time(time_t *tloc) {
    struct timespec ts;
    int64_t s, n;
    if (syscall(SYS_clock_gettime, CLOCK_REALTIME, &ts) != 0)
        return (time_t)-1;
    s = ts.tv_sec;
    n = ts.tv_nsec;
    shift(&s, &n, current_offset(), 1000000, NS_PER_SEC);
    if (tloc != NULL)
        *tloc = (time_t)s;
    return (time_t)s;
}
