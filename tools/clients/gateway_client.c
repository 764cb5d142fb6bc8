/*
 * gateway_client.c: a one-file POSIX C player of the pass-agent REST API v2 gateway (docs/GATEWAY.md).
 *
 * Sends one REST API v2 request over the gateway's Unix socket, without any credentials (the agent adds
 * its token, AP-Device-Identifier and X-Device-Info), and prints Adobe's answer body on stdout.
 *
 *   cc -O2 -Wall -o gateway_client tools/clients/gateway_client.c
 *   ./gateway_client /run/pass-agent/api.sock /api/v2/REF30/configuration
 *   ./gateway_client -d '{"resources":["REF30"]}' -t application/json \
 *       /run/pass-agent/api.sock /api/v2/REF30/decisions/authorize/Cablevision
 *
 * Options: -d BODY (POST it), -t CONTENT_TYPE (default application/x-www-form-urlencoded with -d),
 * -a APP (X-Pass-App: the registered application, when this user may use several).
 * Exit status: 0 for a 2xx answer, 22 for any other status (like curl -f; the status line goes to
 * stderr), 1 when the socket cannot be used, 2 for bad arguments.
 *
 * The request is HTTP/1.0 with Connection: close, so the answer ends when the gateway closes: no
 * chunked decoding needed here. With libcurl the same call is CURLOPT_UNIX_SOCKET_PATH plus the URL
 * http://localhost/api/v2/... (docs/GATEWAY.md has the snippet).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int plain(const char *s) {
    /* Header values and the path are pasted into the request: no CR, LF or other control bytes. */
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return 0;
    return 1;
}

static int send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *body = NULL, *ctype = NULL, *app = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "d:t:a:")) != -1) {
        if (opt == 'd') body = optarg;
        else if (opt == 't') ctype = optarg;
        else if (opt == 'a') app = optarg;
        else return 2;
    }
    if (argc - optind != 2) {
        fprintf(stderr, "usage: %s [-d BODY] [-t CONTENT_TYPE] [-a APP] SOCKET /api/v2/PATH\n", argv[0]);
        return 2;
    }
    const char *sock_path = argv[optind], *path = argv[optind + 1];
    if (!plain(path) || (ctype && !plain(ctype)) || (app && !plain(app)) || strchr(path, ' ')) {
        fprintf(stderr, "gateway_client: the path, -t and -a must not hold spaces or control characters\n");
        return 2;
    }
    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    if (strlen(sock_path) >= sizeof addr.sun_path) {
        fprintf(stderr, "gateway_client: socket path too long: %s\n", sock_path);
        return 2;
    }
    strcpy(addr.sun_path, sock_path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        fprintf(stderr, "gateway_client: cannot connect to %s: %s (is [gateway] enabled?)\n", sock_path,
                strerror(errno));
        return 1;
    }
    size_t blen = body ? strlen(body) : 0;
    size_t cap = strlen(path) + (ctype ? strlen(ctype) : 64) + (app ? strlen(app) : 0) + 256;
    char *req = malloc(cap);
    if (!req) return 1;
    int n = snprintf(req, cap, "%s %s HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n", body ? "POST" : "GET",
                     path);
    if (app) n += snprintf(req + n, cap - (size_t)n, "X-Pass-App: %s\r\n", app);
    if (body)
        n += snprintf(req + n, cap - (size_t)n, "Content-Type: %s\r\nContent-Length: %zu\r\n",
                      ctype ? ctype : "application/x-www-form-urlencoded", blen);
    n += snprintf(req + n, cap - (size_t)n, "\r\n");
    if (send_all(fd, req, (size_t)n) != 0 || (body && send_all(fd, body, blen) != 0)) {
        fprintf(stderr, "gateway_client: cannot send: %s\n", strerror(errno));
        return 1;
    }
    free(req);
    size_t len = 0, size = 65536;
    char *buf = malloc(size + 1);
    if (!buf) return 1;
    for (;;) {
        if (len == size) {
            size *= 2;
            char *more = realloc(buf, size + 1);
            if (!more) return 1;
            buf = more;
        }
        ssize_t r = read(fd, buf + len, size - len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = '\0';
    char *end = strstr(buf, "\r\n\r\n");
    int status = 0;
    if (!end || sscanf(buf, "HTTP/1.%*d %d", &status) != 1) {
        fprintf(stderr, "gateway_client: not an HTTP answer\n");
        return 1;
    }
    fwrite(end + 4, 1, len - (size_t)(end + 4 - buf), stdout);
    if (status < 200 || status > 299) {
        char *eol = strstr(buf, "\r\n");
        fprintf(stderr, "gateway_client: %.*s\n", (int)(eol - buf), buf);
        return 22;
    }
    return 0;
}
