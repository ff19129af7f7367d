/* Fault injection for tests/test_faults.py, loaded with LD_PRELOAD into a qbscale process.
 *
 * Counts the bytes written to files under $QBF_DIR (write, pwrite, writev, pwritev,
 * fwrite: Python, pyarrow and faiss all end in one of these) and, once the count
 * passes $QBF_AT, acts by $QBF_MODE:
 *   eio    this write and every later one (and fsync) under $QBF_DIR fail with EIO
 *   enospc the same with ENOSPC
 *   term   SIGTERM to itself, once; the writes go on
 *   kill   SIGKILL to itself
 *   slow   no fault: the first $QBF_SLOW_WRITES writes (default 40) under $QBF_DIR
 *          sleep $QBF_SLEEP_US each first
 * $QBF_LOG, if set, receives the running byte count (a decimal number).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static const char *dir;
static size_t dir_len;
static long long at = -1;
static int mode;  /* 0 none, 1 eio, 2 enospc, 3 term, 4 kill, 5 slow */
static useconds_t sleep_us;
static long slow_writes = 40;
static long writes;
static long long count;
static int fired;
static int log_fd = -1;

static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec *, int);
static ssize_t (*real_pwritev)(int, const struct iovec *, int, off_t);
static size_t (*real_fwrite)(const void *, size_t, size_t, FILE *);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);

__attribute__((constructor)) static void init(void) {
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_writev = dlsym(RTLD_NEXT, "writev");
    real_pwritev = dlsym(RTLD_NEXT, "pwritev");
    real_fwrite = dlsym(RTLD_NEXT, "fwrite");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    dir = getenv("QBF_DIR");
    dir_len = dir ? strlen(dir) : 0;
    const char *m = getenv("QBF_MODE");
    if (m) {
        mode = !strcmp(m, "eio") ? 1 : !strcmp(m, "enospc") ? 2 : !strcmp(m, "term") ? 3
             : !strcmp(m, "kill") ? 4 : !strcmp(m, "slow") ? 5 : 0;
    }
    const char *a = getenv("QBF_AT");
    if (a) at = atoll(a);
    const char *s = getenv("QBF_SLEEP_US");
    if (s) sleep_us = (useconds_t)atol(s);
    const char *w = getenv("QBF_SLOW_WRITES");
    if (w) slow_writes = atol(w);
    const char *l = getenv("QBF_LOG");
    if (l) log_fd = open(l, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    unsetenv("LD_PRELOAD");  /* not into the children (mount, faiss helpers, ...) */
}

/* The same settings as the environment gives, for a process forked after loading
 * (tests/_forkserver.py configures each child it forks); the counts start again. */
void qbf_configure(const char *d, const char *m, long long a, long sleep, long slow) {
    dir = d ? strdup(d) : NULL;
    dir_len = dir ? strlen(dir) : 0;
    mode = !m ? 0 : !strcmp(m, "eio") ? 1 : !strcmp(m, "enospc") ? 2 : !strcmp(m, "term") ? 3
         : !strcmp(m, "kill") ? 4 : !strcmp(m, "slow") ? 5 : 0;
    at = a;
    sleep_us = (useconds_t)sleep;
    slow_writes = slow;
    count = 0;
    writes = 0;
    fired = 0;
}

static int watched(int fd) {
    if (!dir_len || fd < 0) return 0;
    char link[64], path[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, sizeof path - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    return (size_t)n > dir_len && !strncmp(path, dir, dir_len) && path[dir_len] == '/';
}

/* 0: go on and write; else the errno this write fails with */
static int account(int fd, size_t len) {
    if (!watched(fd)) return 0;
    if (mode == 5 && sleep_us && __atomic_fetch_add(&writes, 1, __ATOMIC_SEQ_CST) < slow_writes)
        usleep(sleep_us);
    long long before = __atomic_fetch_add(&count, (long long)len, __ATOMIC_SEQ_CST);
    if (log_fd >= 0) {
        char buf[32];
        int n = snprintf(buf, sizeof buf, "%lld\n", before + (long long)len);
        if (pwrite(log_fd, buf, (size_t)n, 0) < 0) { /* the log is best effort */ }
    }
    if (at < 0 || before + (long long)len <= at) {
        if (!__atomic_load_n(&fired, __ATOMIC_SEQ_CST)) return 0;
    }
    int first = !__atomic_exchange_n(&fired, 1, __ATOMIC_SEQ_CST);
    switch (mode) {
    case 1: return EIO;
    case 2: return ENOSPC;
    case 3: if (first) kill(getpid(), SIGTERM); return 0;
    case 4: kill(getpid(), SIGKILL); return 0;
    default: return 0;
    }
}

ssize_t write(int fd, const void *buf, size_t len) {
    int e = account(fd, len);
    if (e) { errno = e; return -1; }
    return real_write(fd, buf, len);
}

ssize_t pwrite(int fd, const void *buf, size_t len, off_t off) {
    int e = account(fd, len);
    if (e) { errno = e; return -1; }
    return real_pwrite(fd, buf, len, off);
}

ssize_t pwrite64(int fd, const void *buf, size_t len, off_t off) {
    int e = account(fd, len);
    if (e) { errno = e; return -1; }
    return real_pwrite64(fd, buf, len, off);
}

static size_t iov_len(const struct iovec *iov, int n) {
    size_t t = 0;
    for (int i = 0; i < n; i++) t += iov[i].iov_len;
    return t;
}

ssize_t writev(int fd, const struct iovec *iov, int n) {
    int e = account(fd, iov_len(iov, n));
    if (e) { errno = e; return -1; }
    return real_writev(fd, iov, n);
}

ssize_t pwritev(int fd, const struct iovec *iov, int n, off_t off) {
    int e = account(fd, iov_len(iov, n));
    if (e) { errno = e; return -1; }
    return real_pwritev(fd, iov, n, off);
}

size_t fwrite(const void *buf, size_t size, size_t n, FILE *stream) {
    int e = account(fileno(stream), size * n);
    if (e) { errno = e; return 0; }
    return real_fwrite(buf, size, n, stream);
}

int fsync(int fd) {
    if ((mode == 1 || mode == 2) && __atomic_load_n(&fired, __ATOMIC_SEQ_CST) && watched(fd)) {
        errno = mode == 1 ? EIO : ENOSPC;
        return -1;
    }
    return real_fsync(fd);
}

int fdatasync(int fd) {
    if ((mode == 1 || mode == 2) && __atomic_load_n(&fired, __ATOMIC_SEQ_CST) && watched(fd)) {
        errno = mode == 1 ? EIO : ENOSPC;
        return -1;
    }
    return real_fdatasync(fd);
}
