/*
 * httpload: the benchmark's HTTP/1.1 keep-alive load client (`make bench`, rows "http" and
 * "idle-http"). One thread, epoll, no library: the Python client would cost more CPU per
 * request than the C proxies it loads, and it shares its core with the backend.
 *
 *   get  : --connections keep-alive connections, one GET in flight on each; every complete
 *          response (status 200, body read to its Content-Length) is counted and timed and
 *          the next GET goes out on the same connection. A connection the server closes is
 *          reopened (counted in errors as "reconnect"). After --warmup seconds the window
 *          opens for --duration seconds: at its edges the CPU time (utime + stime from
 *          /proc/PID/stat) of every --watch NAME=PID[,PID] list and of this process is read.
 *   idle : opens --connections connections, --open-concurrency at a time, each sends one GET
 *          and reads its response, then stays open and idle; prints {"event": "ready", ...},
 *          holds until a line (or EOF) on stdin or --hold seconds, counts the connections the
 *          server has not closed, closes them all.
 *
 * Both modes are bounded in time (the get mode by --warmup + --duration, the idle mode by
 * --open-seconds + --hold). The result is one JSON object on stdout, in bench/loadgen.py's
 * shape (count, bytes, wall_seconds, cpu_seconds, errors, latency_us).
 * Build: cc -O2 -o httpload bench/httpload.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 8192
#define HBUCKETS 200000 /* 1 us buckets up to 200 ms; slower ones land in the last */
#define MAX_WATCH 8
#define MAX_PIDS 64
#define CONNECT_TIMEOUT 10.0

enum { C_CONNECTING, C_HEAD, C_BODY, C_IDLE, C_DEAD };

struct conn {
    int fd, state, closes;
    double sent;
    long body_left;
    int hlen;
    char head[HEAD_MAX];
};

struct watch { char name[32]; int npids; int pids[MAX_PIDS]; double start[2], end[2]; };

static int idle_mode, nconn = 64, concurrency = 200, port;
static double duration = 10, warmup = 1, hold = 120, open_seconds = 60;
static const char *host = "127.0.0.1", *path = "/";
static struct watch watches[MAX_WATCH];
static int nwatch;
static char request[1024];
static int request_len;
static int ep;
static int measuring;
static uint64_t count, bytes, opened_total;
static uint64_t hist[HBUCKETS + 1], hist_n;
static double lat_sum, lat_max;
/* error counters, reported by name */
static uint64_t e_connect, e_reset, e_status, e_head, e_reconnect, e_timeout, e_open_deadline;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void usage(void) {
    fprintf(stderr, "usage: httpload get|idle --port P [--host H] [--path /] [--connections N] "
                    "[--duration S] [--warmup S] [--hold S] [--open-seconds S] "
                    "[--open-concurrency N] [--watch NAME=PID[,PID]]\n");
    exit(2);
}

/* user and system CPU seconds of one process; zeros when it is gone */
static void proc_cpu(int pid, double out[2]) {
    char file[64], text[2048];
    snprintf(file, sizeof file, "/proc/%d/stat", pid);
    FILE *f = fopen(file, "r");
    out[0] = out[1] = 0;
    if (!f) return;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    char *p = strrchr(text, ')');
    if (!p) return;
    p += 2; /* fields from the state on: utime is the 12th, stime the 13th after it */
    unsigned long long utime = 0, stime = 0;
    for (int field = 0; field < 13 && *p; field++) {
        if (field == 11) utime = strtoull(p, NULL, 10);
        if (field == 12) stime = strtoull(p, NULL, 10);
        p = strchr(p, ' ');
        if (!p) break;
        p++;
    }
    double tick = (double)sysconf(_SC_CLK_TCK);
    out[0] = utime / tick;
    out[1] = stime / tick;
}

static void sample_cpu(int end) {
    for (int i = 0; i < nwatch; i++) {
        double *total = end ? watches[i].end : watches[i].start, one[2];
        total[0] = total[1] = 0;
        for (int j = 0; j < watches[i].npids; j++) {
            proc_cpu(watches[i].pids[j], one);
            total[0] += one[0];
            total[1] += one[1];
        }
    }
}

static double self_cpu(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec * 1e-6 + r.ru_stime.tv_sec + r.ru_stime.tv_usec * 1e-6;
}

static void record(double seconds) {
    long us = (long)(seconds * 1e6);
    if (us < 0) us = 0;
    if (us > HBUCKETS) us = HBUCKETS;
    hist[us]++;
    hist_n++;
    lat_sum += seconds;
    if (seconds > lat_max) lat_max = seconds;
}

static double pct(double q) {
    uint64_t target = (uint64_t)(q * hist_n), seen = 0;
    if (target >= hist_n) target = hist_n - 1;
    for (long i = 0; i <= HBUCKETS; i++) {
        seen += hist[i];
        if (seen > target) return (double)i;
    }
    return HBUCKETS;
}

static void close_conn(struct conn *c) {
    if (c->fd >= 0) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = C_DEAD;
}

static void open_conn(struct conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    c->hlen = 0;
    c->body_left = 0;
    if (c->fd < 0) { e_connect++; c->state = C_DEAD; return; }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
    inet_pton(AF_INET, host, &addr.sin_addr);
    c->state = C_CONNECTING;
    c->sent = now();
    opened_total++;
    if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0 && errno != EINPROGRESS) {
        e_connect++;
        close(c->fd);
        c->fd = -1;
        c->state = C_DEAD;
        return;
    }
    struct epoll_event e = { .events = EPOLLOUT, .data.ptr = c };
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &e);
}

static int send_request(struct conn *c) {
    ssize_t n = send(c->fd, request, request_len, MSG_NOSIGNAL);
    if (n != request_len) return -1; /* a 100-byte request into an empty socket buffer */
    c->sent = now();
    c->state = C_HEAD;
    c->hlen = 0;
    return 0;
}

/* Parse the head in c->head[0..hlen); returns bytes of head, 0 if incomplete, -1 if bad. */
static int parse_head(struct conn *c, long *content_length, int *closes) {
    char *end = memmem(c->head, c->hlen, "\r\n\r\n", 4);
    if (!end) return c->hlen >= HEAD_MAX ? -1 : 0;
    *end = 0;
    if (strncmp(c->head, "HTTP/1.1 200 ", 13) != 0) { e_status++; return -1; }
    *content_length = -1;
    *closes = 0;
    for (char *line = strstr(c->head, "\r\n"); line; line = strstr(line, "\r\n")) {
        line += 2;
        if (!strncasecmp(line, "content-length:", 15))
            *content_length = strtol(line + 15, NULL, 10);
        else if (!strncasecmp(line, "connection:", 11) && strcasestr(line, "close"))
            *closes = 1;
    }
    if (*content_length < 0) { e_head++; return -1; }
    return (int)(end - c->head) + 4;
}

/* One response completed on c: count it, then send the next request (get mode). */
static void completed(struct conn *c, int closes) {
    double t = now();
    if (measuring) {
        count++;
        record(t - c->sent);
    }
    if (closes) {
        close_conn(c);
        if (!idle_mode) { e_reconnect++; open_conn(c); }
        return;
    }
    if (idle_mode) { c->state = C_IDLE; return; }
    if (send_request(c) < 0) { e_reset++; close_conn(c); open_conn(c); }
}

static void on_readable(struct conn *c) {
    char buf[16384];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            /* closed while idle between requests: the server's keep-alive ended; else reset */
            if (c->state == C_HEAD && c->hlen == 0) e_reconnect++;
            else if (c->state != C_IDLE) e_reset++;
            close_conn(c);
            if (!idle_mode) open_conn(c);
            return;
        }
        if (n < 0) return;
        if (measuring) bytes += n;
        int drained = n < (ssize_t)sizeof buf; /* level-triggered: no EAGAIN read needed */
        char *p = buf;
        while (n > 0) {
            if (c->state == C_HEAD) {
                long room = HEAD_MAX - c->hlen, take = n < room ? n : room;
                memcpy(c->head + c->hlen, p, take);
                int before = c->hlen;
                c->hlen += take;
                long length;
                int closes, used = parse_head(c, &length, &closes);
                if (used < 0) { close_conn(c); if (!idle_mode) open_conn(c); return; }
                if (used == 0) { p += take; n -= take; continue; }
                long consumed = used - before; /* bytes of this read that were head */
                p += consumed;
                n -= consumed;
                c->body_left = length;
                c->state = C_BODY;
                c->closes = closes;
            }
            if (c->state == C_BODY) {
                long take = n < c->body_left ? n : c->body_left;
                c->body_left -= take;
                p += take;
                n -= take;
                if (c->body_left == 0) {
                    completed(c, c->closes);
                    if (c->state == C_DEAD || c->fd < 0) return;
                }
            } else if (n > 0) { /* bytes nobody asked for */
                e_head++;
                close_conn(c);
                if (!idle_mode) open_conn(c);
                return;
            }
        }
        if (drained) return;
    }
}

static void on_event(struct conn *c, uint32_t events) {
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) { e_connect++; close_conn(c); return; }
        struct epoll_event e = { .events = EPOLLIN, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
        if (send_request(c) < 0) { e_reset++; close_conn(c); }
        return;
    }
    on_readable(c);
}

static void print_result(double wall, double loadgen_cpu, const char *extra) {
    printf("{\"count\": %llu, \"bytes\": %llu, \"wall_seconds\": %.6f, \"cpu_seconds\": {",
           (unsigned long long)count, (unsigned long long)bytes, wall);
    for (int i = 0; i < nwatch; i++) {
        struct watch *w = &watches[i];
        printf("\"%s\": %.4f, \"%s_system\": %.4f, ", w->name,
               (w->end[0] + w->end[1]) - (w->start[0] + w->start[1]), w->name, w->end[1] - w->start[1]);
    }
    printf("\"loadgen\": %.4f}, \"errors\": {", loadgen_cpu);
    const char *names[] = {"connect", "reset", "status", "bad_head", "reconnect", "timeout", "open_deadline"};
    uint64_t values[] = {e_connect, e_reset, e_status, e_head, e_reconnect, e_timeout, e_open_deadline};
    int first = 1;
    for (int i = 0; i < 7; i++)
        if (values[i]) { printf("%s\"%s\": %llu", first ? "" : ", ", names[i], (unsigned long long)values[i]); first = 0; }
    printf("}");
    if (hist_n)
        printf(", \"latency_us\": {\"p50\": %.1f, \"p90\": %.1f, \"p99\": %.1f, \"max\": %.1f, \"mean\": %.1f, "
               "\"samples\": %llu}", pct(0.50), pct(0.90), pct(0.99), lat_max * 1e6, lat_sum / hist_n * 1e6,
               (unsigned long long)hist_n);
    printf(", \"mode\": \"%s\", \"url\": \"http://%s:%d%s\", \"connections\": %d, \"size\": 0, \"window\": 1, "
           "\"opened\": %llu%s}\n", idle_mode ? "idle-http" : "http", host, port, path, nconn,
           (unsigned long long)opened_total, extra);
    fflush(stdout);
}

static void run_get(struct conn *conns) {
    struct epoll_event events[256];
    for (int i = 0; i < nconn; i++) open_conn(&conns[i]);
    double start = now(), window_open = start + warmup, window_close = window_open + duration;
    double opened_at = 0, closed_at = 0, cpu_start = 0, cpu_end = 0;
    for (;;) {
        double t = now();
        if (!measuring && opened_at == 0 && t >= window_open) {
            sample_cpu(0);
            cpu_start = self_cpu();
            opened_at = now();
            measuring = 1;
        }
        if (measuring && t >= window_close) {
            measuring = 0;
            closed_at = now();
            sample_cpu(1);
            cpu_end = self_cpu();
            break;
        }
        int n = epoll_wait(ep, events, 256, 5);
        for (int i = 0; i < n; i++) on_event(events[i].data.ptr, events[i].events);
        for (int i = 0; i < nconn; i++) /* a failed connect is retried, bounded by the run's end */
            if (conns[i].state == C_DEAD) open_conn(&conns[i]);
            else if (conns[i].state == C_CONNECTING && t - conns[i].sent > CONNECT_TIMEOUT) {
                e_timeout++;
                close_conn(&conns[i]);
            }
    }
    print_result(closed_at - opened_at, cpu_end - cpu_start, "");
}

static void run_idle(struct conn *conns) {
    struct epoll_event events[256];
    double start = now(), deadline = start + open_seconds;
    int next = 0, ready = 0, failed = 0;
    measuring = 0;
    while (ready + failed < nconn && now() < deadline) {
        int inflight = 0;
        ready = failed = 0;
        for (int i = 0; i < next; i++) {
            if (conns[i].state == C_IDLE) ready++;
            else if (conns[i].state == C_DEAD) failed++;
            else inflight++;
        }
        while (next < nconn && inflight < concurrency) { open_conn(&conns[next++]); inflight++; }
        int n = epoll_wait(ep, events, 256, 5);
        for (int i = 0; i < n; i++) on_event(events[i].data.ptr, events[i].events);
    }
    ready = failed = 0;
    for (int i = 0; i < next; i++) ready += conns[i].state == C_IDLE, failed += conns[i].state == C_DEAD;
    if (ready + failed < nconn) e_open_deadline += nconn - ready - failed;
    /* Every idle connection keeps EPOLLIN registered: a close by the server is seen at the end. */
    printf("{\"event\": \"ready\", \"open\": %d, \"open_seconds\": %.3f, \"errors\": {", ready,
           now() - start);
    if (failed) printf("\"failed\": %d", failed);
    printf("}}\n");
    fflush(stdout);
    struct pollfd in = { .fd = 0, .events = POLLIN };
    poll(&in, 1, (int)(hold * 1000));
    if (!(in.revents & (POLLIN | POLLHUP))) e_timeout++;
    int alive = 0;
    for (int i = 0; i < nconn; i++) {
        if (conns[i].state != C_IDLE) continue;
        char byte;
        ssize_t n = recv(conns[i].fd, &byte, 1, MSG_DONTWAIT | MSG_PEEK);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) alive++;
    }
    for (int i = 0; i < nconn; i++) close_conn(&conns[i]);
    count = alive;
    char extra[64];
    snprintf(extra, sizeof extra, ", \"ready\": %d", ready);
    print_result(0, self_cpu(), extra);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    if (!strcmp(argv[1], "idle")) idle_mode = 1;
    else if (strcmp(argv[1], "get")) usage();
    for (int i = 2; i < argc; i++) {
        const char *arg = argv[i], *value = i + 1 < argc ? argv[i + 1] : NULL;
        if (!value) usage();
        i++;
        if (!strcmp(arg, "--host")) host = value;
        else if (!strcmp(arg, "--port")) port = atoi(value);
        else if (!strcmp(arg, "--path")) path = value;
        else if (!strcmp(arg, "--connections")) nconn = atoi(value);
        else if (!strcmp(arg, "--duration")) duration = atof(value);
        else if (!strcmp(arg, "--warmup")) warmup = atof(value);
        else if (!strcmp(arg, "--hold")) hold = atof(value);
        else if (!strcmp(arg, "--open-seconds")) open_seconds = atof(value);
        else if (!strcmp(arg, "--open-concurrency")) concurrency = atoi(value);
        else if (!strcmp(arg, "--watch")) {
            if (nwatch == MAX_WATCH) usage();
            struct watch *w = &watches[nwatch++];
            const char *eq = strchr(value, '=');
            if (!eq || eq - value >= (long)sizeof w->name) usage();
            memcpy(w->name, value, eq - value);
            for (const char *p = eq + 1; *p && w->npids < MAX_PIDS;) {
                w->pids[w->npids++] = atoi(p);
                p = strchr(p, ',');
                if (!p) break;
                p++;
            }
        } else usage();
    }
    if (port <= 0 || nconn < 1 || duration <= 0 || duration > 600 || warmup < 0 || hold > 600 ||
        open_seconds > 600 || concurrency < 1) {
        fprintf(stderr, "httpload: need --port, --connections >= 1, --duration in (0, 600], "
                        "--hold and --open-seconds at most 600\n");
        return 2;
    }
    struct rlimit nofile;
    getrlimit(RLIMIT_NOFILE, &nofile);
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
    request_len = snprintf(request, sizeof request,
                           "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: wslb-bench-httpload\r\n"
                           "Accept: */*\r\n\r\n", path, host, port);
    ep = epoll_create1(0);
    struct conn *conns = calloc(nconn, sizeof *conns);
    if (!conns) { perror("calloc"); return 1; }
    for (int i = 0; i < nconn; i++) conns[i].fd = -1, conns[i].state = C_DEAD;
    if (idle_mode) run_idle(conns);
    else run_get(conns);
    return 0;
}
