/*
 * token_client.c - fetch the Adobe Pass access token (or the request headers) from pass-agent.
 *
 * Plain POSIX C99, one file, no dependencies. Shows a player developer how little it takes:
 * connect to the agent's Unix socket, send one JSON-RPC line, read one line back, pull out the
 * strings. The JSON "parser" below only handles what the agent sends (flat string members);
 * link a real JSON library in a product.
 *
 *   cc -std=c99 -O2 -Wall -o token_client token_client.c
 *   ./token_client [-s /run/pass-agent/agent.sock] [-a APP] [-H] [-m MIN_TTL] [-w WAIT]
 *
 *   default  prints the access token on one line
 *   -H       prints the three request headers ("Name: value" lines, ready for curl -H)
 *   -m N     token must stay valid at least N more seconds (the agent refreshes if needed)
 *   -w N     wait up to N seconds for a first token instead of failing at once; the same N seconds
 *            cover an agent that is still starting (no socket yet, or nobody listening on it)
 *   -a APP   the registered application ([[app]] name); needed when this user may use several
 *
 * Exit status: 0 success, 1 the agent answered with an error (message on stderr),
 * 2 usage, 3 cannot reach the agent.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE (256 * 1024)

/* Find "key": in json and copy its string value (JSON escapes decoded, \uXXXX kept ASCII-only). */
static int json_string(const char *json, const char *key, char *out, size_t outsz)
{
    char pat[128];
    const char *p;
    size_t n = 0;

    snprintf(pat, sizeof pat, "\"%s\":", key);
    p = strstr(json, pat);
    if (!p)
        return -1;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    if (*p++ != '"')
        return -1;
    while (*p && *p != '"') {
        char c = *p++;
        if (c == '\\') {
            c = *p++;
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': /* the agent's tokens and headers are ASCII; keep the escape as is */
                if (n + 6 >= outsz)
                    return -1;
                out[n++] = '\\';
                c = 'u';
                break;
            case '\0': return -1;
            default: break; /* \" \\ \/ */
            }
        }
        if (n + 1 >= outsz)
            return -1;
        out[n++] = c;
    }
    if (*p != '"')
        return -1;
    out[n] = '\0';
    return 0;
}

static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

static void usage(const char *prog)
{
    fprintf(stderr, "usage: %s [-s SOCKET] [-a APP] [-H] [-m MIN_TTL] [-w WAIT]\n", prog);
}

/* A number of seconds from 0 to max, the whole argument (the agent refuses anything else); -1 if not. */
static double seconds_arg(const char *s, double max)
{
    char *end;
    double v = strtod(s, &end);
    return (end != s && *end == '\0' && v >= 0 && v <= max) ? v : -1;  /* NaN fails v >= 0 */
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Connect to the agent's socket. ENOENT (no socket yet) and ECONNREFUSED (nobody listening: the
 * agent is starting or restarting) are retried every 50 ms until `until` (now_s() time; 0: no
 * retry), so a player started at boot with -w does not race the agent. Returns the fd, or -1 with
 * errno set. A fresh socket each try: after a failed connect a socket's state is unspecified. */
static int connect_agent(const struct sockaddr_un *addr, double until)
{
    for (;;) {
        int fd = socket(AF_UNIX, SOCK_STREAM, 0), err;
        if (fd < 0)
            return -1;
        if (connect(fd, (const struct sockaddr *)addr, sizeof *addr) == 0)
            return fd;
        err = errno;
        close(fd);
        if (err == EINTR)
            continue;
        if ((err != ENOENT && err != ECONNREFUSED) || now_s() >= until) {
            errno = err;
            return -1;
        }
        {
            struct timespec pause = {0, 50 * 1000 * 1000};
            nanosleep(&pause, NULL);
        }
    }
}

int main(int argc, char **argv)
{
    const char *path = "/run/pass-agent/agent.sock";
    const char *min_ttl = NULL, *wait = NULL, *app = NULL;
    int headers = 0, opt, fd;
    double started = now_s(), waited, min_ttl_s = 0, wait_s = 0;
    struct sockaddr_un addr;
    char req[512], params[200] = "", val[16384];
    size_t n = 0;
    char *line;
    size_t have = 0;

    while ((opt = getopt(argc, argv, "s:a:Hm:w:h")) != -1) {
        switch (opt) {
        case 's': path = optarg; break;
        case 'H': headers = 1; break;
        case 'm': min_ttl = optarg; break;
        case 'w': wait = optarg; break;
        case 'a': app = optarg; break;
        default: usage(argv[0]); return 2;
        }
    }
    if (min_ttl && (min_ttl_s = seconds_arg(min_ttl, 604800)) < 0) {
        fprintf(stderr, "token_client: -m %s: a number of seconds from 0 to 604800 (7 days)\n", min_ttl);
        return 2;
    }
    if (wait && (wait_s = seconds_arg(wait, 300)) < 0) {
        fprintf(stderr, "token_client: -w %s: a number of seconds from 0 to 300 (the agent's longest wait)\n", wait);
        return 2;
    }
    /* Application names are 1-32 of [a-z0-9_-] (the agent's configuration allows no other): checked
     * here, so the name can be pasted into the JSON without escaping. */
    if (app && (strlen(app) == 0 || strlen(app) > 32 || strspn(app, "abcdefghijklmnopqrstuvwxyz0123456789-_") != strlen(app))) {
        fprintf(stderr, "token_client: -a %s: an application name is 1-32 lower-case letters, digits, '-' or '_'\n", app);
        return 2;
    }
    if (strlen(path) >= sizeof addr.sun_path) {
        fprintf(stderr, "token_client: socket path too long: %s\n", path);
        return 2;
    }
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    fd = connect_agent(&addr, wait ? started + wait_s : 0.0);
    if (fd < 0) {
        fprintf(stderr, "token_client: cannot connect to pass-agent at %s: %s (is the agent running?)\n",
                path, strerror(errno));
        return 3;
    }
    waited = now_s() - started;
    /* Numbers are parsed and re-printed, never pasted: no JSON injection. The agent answers a
     * wait when a token arrives or the wait ends, so no client-side timeout is needed. */
    if (min_ttl || wait || app) {
        n += snprintf(params + n, sizeof params - n, ",\"params\":{");
        if (min_ttl)
            n += snprintf(params + n, sizeof params - n, "\"min_ttl\":%.3f,", min_ttl_s);
        if (wait)
            n += snprintf(params + n, sizeof params - n, "\"wait\":%.3f,",  /* what is left of it */
                          wait_s > waited ? wait_s - waited : 0.0);
        if (app)
            n += snprintf(params + n, sizeof params - n, "\"app\":\"%s\",", app);
        params[n - 1] = '}'; /* the last comma */
    }
    snprintf(req, sizeof req, "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"%s\"%s}\n",
             headers ? "headers.get" : "token.get", params);

    if (write_all(fd, req, strlen(req)) < 0) {
        fprintf(stderr, "token_client: write to %s failed: %s\n", path, strerror(errno));
        return 3;
    }
    line = malloc(MAX_LINE + 1);
    if (!line)
        return 3;
    for (;;) { /* read exactly one line */
        ssize_t r = read(fd, line + have, MAX_LINE - have);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            fprintf(stderr, "token_client: pass-agent at %s closed the connection without an answer\n", path);
            return 3;
        }
        have += (size_t)r;
        line[have] = '\0';
        if (memchr(line, '\n', have) || have == MAX_LINE)
            break;
    }
    close(fd);

    if (strstr(line, "\"error\":")) {
        char kind[32] = "?";
        json_string(line, "kind", kind, sizeof kind);
        if (json_string(line, "message", val, sizeof val) < 0)
            strcpy(val, "unreadable error answer");
        fprintf(stderr, "token_client: pass-agent: %s [kind %s]\n", val, kind);
        return 1;
    }
    if (!headers) {
        if (json_string(line, "access_token", val, sizeof val) < 0) {
            fprintf(stderr, "token_client: no access_token in the answer\n");
            return 1;
        }
        printf("%s\n", val);
        return 0;
    }
    {
        static const char *names[] = {"Authorization", "X-Device-Info", "AP-Device-Identifier"};
        size_t i;
        for (i = 0; i < 3; i++) {
            if (json_string(line, names[i], val, sizeof val) < 0) {
                fprintf(stderr, "token_client: no %s header in the answer\n", names[i]);
                return 1;
            }
            printf("%s: %s\n", names[i], val);
        }
    }
    return 0;
}
