/*
 * Preloaded into tritonserver by nemo-trt (nemo_trt/serve/http_backpressure.py says why and how).
 *
 * Triton's HTTP frontend hands each response of a request to the HTTP worker thread that owns the
 * client's connection with libevhtp's evthr_defer() and ignores its result (server
 * src/http_server.cc: GenerateRequestClass::InferResponseComplete, InferRequestClass::
 * InferResponseComplete). evthr_defer() (third_party libevhtp/thread.c) writes one 17-byte
 * command to a non-blocking AF_UNIX stream socketpair; once about 278 commands are unread (the
 * default 212,992-byte socket buffer), send() fails with EAGAIN and that response is lost for
 * good: the client never gets its status line, a chunk, or the end of its stream.
 *
 * In tritonserver only, this wraps send(): when a 17-byte send on a non-blocking AF_UNIX stream
 * socket fails with EAGAIN, it waits until the worker has room and sends again, so the thread
 * that produced the response waits (backpressure) instead of the response being dropped. Every
 * other send() returns exactly what libc returns. The HTTP worker never waits on those
 * producers (it only enqueues requests), so waiting cannot deadlock; the wait is still bounded
 * (NEMO_TRT_HTTP_BACKPRESSURE_MAX_WAIT_S, default 60) and reported if it ever runs out.
 *
 * NEMO_TRT_HTTP_BACKPRESSURE=count keeps Triton's behaviour and only reports each drop (the
 * tests use it to show the defect); NEMO_TRT_HTTP_BACKPRESSURE_SNDBUF shrinks the worker sockets
 * so the tests reach the limit in seconds instead of once in a dozen minute-long runs.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define EVTHR_CMD_SIZE 17 /* struct evthr_cmd: uint8_t stop, void *args, evthr_cb cb; packed */

enum mode { OFF, WAIT, COUNT };

static ssize_t (*real_send)(int, const void *, size_t, int);
static int (*real_socketpair)(int, int, int, int[2]);
static enum mode mode = OFF;
static double max_wait_s = 60.0;
static int test_sndbuf = 0;
static atomic_long dropped, waited;

static void say(const char *message, long count) {
    char line[256];
    int n = snprintf(line, sizeof line, "nemo-trt http-backpressure: %s (%ld so far, pid %d)\n", message, count,
                     (int)getpid());
    if (n > 0) {
        ssize_t ignored = write(STDERR_FILENO, line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
        (void)ignored;
    }
}

static int is_tritonserver(void) {
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return 0;
    exe[n] = '\0';
    const char *base = strrchr(exe, '/');
    return strcmp(base ? base + 1 : exe, "tritonserver") == 0;
}

__attribute__((constructor)) static void init(void) {
    real_send = (ssize_t(*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
    real_socketpair = (int (*)(int, int, int, int[2]))dlsym(RTLD_NEXT, "socketpair");
    /* The python backend's stubs inherit LD_PRELOAD: there (and anywhere else) this stays inert. */
    if (!is_tritonserver()) return;
    const char *setting = getenv("NEMO_TRT_HTTP_BACKPRESSURE");
    mode = setting && strcmp(setting, "count") == 0 ? COUNT : setting && strcmp(setting, "off") == 0 ? OFF : WAIT;
    const char *wait = getenv("NEMO_TRT_HTTP_BACKPRESSURE_MAX_WAIT_S");
    if (wait && atof(wait) > 0) max_wait_s = atof(wait);
    const char *sndbuf = getenv("NEMO_TRT_HTTP_BACKPRESSURE_SNDBUF");
    if (sndbuf) test_sndbuf = atoi(sndbuf);
    if (mode != OFF) say(mode == WAIT ? "active: full HTTP worker queues make responses wait, not vanish"
                                      : "counting only: responses to full HTTP worker queues are dropped",
                         0);
}

int socketpair(int domain, int type, int protocol, int sv[2]) {
    if (!real_socketpair) real_socketpair = (int (*)(int, int, int, int[2]))dlsym(RTLD_NEXT, "socketpair");
    int result = real_socketpair(domain, type, protocol, sv);
    if (result == 0 && mode != OFF && test_sndbuf > 0 && domain == AF_UNIX) {
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &test_sndbuf, sizeof test_sndbuf);
        setsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &test_sndbuf, sizeof test_sndbuf);
    }
    return result;
}

/* A command to an HTTP worker: 17 bytes, no flags, on an AF_UNIX stream socket. */
static int is_worker_command(int fd, size_t len, int flags) {
    if (len != EVTHR_CMD_SIZE || flags != 0) return 0;
    struct sockaddr_storage address;
    socklen_t address_len = sizeof address;
    int type = 0;
    socklen_t type_len = sizeof type;
    return getsockname(fd, (struct sockaddr *)&address, &address_len) == 0 && address.ss_family == AF_UNIX &&
           getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) == 0 && type == SOCK_STREAM;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

ssize_t send(int fd, const void *buf, size_t len, int flags) {
    if (!real_send) real_send = (ssize_t(*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
    ssize_t sent = real_send(fd, buf, len, flags);
    if (sent >= 0 || mode == OFF || (errno != EAGAIN && errno != EWOULDBLOCK)) return sent;
    int saved = errno;
    if (!is_worker_command(fd, len, flags)) {
        errno = saved;
        return sent;
    }
    if (mode == COUNT) {
        say("an HTTP worker's queue is full: Triton drops this response", atomic_fetch_add(&dropped, 1) + 1);
        errno = saved;
        return sent;
    }
    long count = atomic_fetch_add(&waited, 1) + 1;
    if ((count & (count - 1)) == 0) /* 1, 2, 4, 8, ...: visible in the log, never a flood */
        say("an HTTP worker's queue is full: the response waits for room", count);
    double deadline = now_s() + max_wait_s;
    struct pollfd room = {.fd = fd, .events = POLLOUT, .revents = 0};
    while (now_s() < deadline) {
        poll(&room, 1, 100);
        sent = real_send(fd, buf, len, flags);
        if (sent >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) return sent;
    }
    say("an HTTP worker took no command for NEMO_TRT_HTTP_BACKPRESSURE_MAX_WAIT_S: response dropped",
        atomic_fetch_add(&dropped, 1) + 1);
    errno = EAGAIN;
    return sent;
}
