/*
 * A server that accepts only through io_uring (liburing 2.3), and is its own
 * client: tests/tests/io_uring.rs checks sockq's accept counts and waits against it.
 *
 *   uring_server MODE ADDR:PORT N DELAY_MS [hold]
 *
 * MODE single: single-shot IORING_OP_ACCEPT; even connections are queued before the
 *   accept is submitted (it completes inline), odd ones after (it completes from the
 *   poll wake-up).
 * MODE multi: one multishot accept; the first N/2 connections are queued before it
 *   is submitted (they complete inline), the rest after.
 * MODE direct: single-shot accepts into direct descriptors (fixed-file slots).
 *
 * Each connection is accepted DELAY_MS after its handshake completed: the ring is set
 * up with IORING_SETUP_DEFER_TASKRUN, so a woken accept runs only when the server
 * next waits for completions. With "hold", once the first connection (the first N/2
 * for multi) is queued it prints "queued" and waits for a line on its standard input
 * before going on. Prints "done mode=M accepted=A pid=P tid=T", then keeps the
 * listener and the connections open until its standard input closes.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 256

static void die(const char *what, int err)
{
	fprintf(stderr, "uring_server: %s: %s\n", what, strerror(err));
	exit(1);
}

static struct sockaddr_in parse_addr(const char *arg)
{
	struct sockaddr_in sin = { .sin_family = AF_INET };
	char host[64];
	const char *colon = strrchr(arg, ':');

	if (!colon || colon - arg >= (long)sizeof(host))
		die("address must be IPv4:PORT", EINVAL);
	memcpy(host, arg, colon - arg);
	host[colon - arg] = '\0';
	if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
		die("address must be IPv4:PORT", EINVAL);
	sin.sin_port = htons(atoi(colon + 1));
	return sin;
}

static int listen_on(const struct sockaddr_in *sin)
{
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		die("socket", errno);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)sin, sizeof(*sin)) < 0)
		die("bind", errno);
	if (listen(fd, 64) < 0)
		die("listen", errno);
	return fd;
}

/* A client connection; connect() returns once the handshake completed. */
static int connect_to(const struct sockaddr_in *sin)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		die("client socket", errno);
	if (connect(fd, (const struct sockaddr *)sin, sizeof(*sin)) < 0)
		die("connect", errno);
	return fd;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void submit_accept(struct io_uring *ring, int lfd, int mode)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
	int ret;

	if (!sqe)
		die("io_uring_get_sqe", EBUSY);
	if (mode == 'm')
		io_uring_prep_multishot_accept(sqe, lfd, NULL, NULL, 0);
	else if (mode == 'd')
		/* liburing stores index + 1; 2.3 does not special-case ALLOC itself. */
		io_uring_prep_accept_direct(sqe, lfd, NULL, NULL, 0, IORING_FILE_INDEX_ALLOC - 1);
	else
		io_uring_prep_accept(sqe, lfd, NULL, NULL, 0);
	io_uring_sqe_set_data64(sqe, 0x5eed);
	ret = io_uring_submit(ring);
	if (ret != 1)
		die("io_uring_submit", ret < 0 ? -ret : EIO);
}

/* Waits for one accept's completion; returns 1 if it accepted a connection. */
static int reap(struct io_uring *ring)
{
	struct io_uring_cqe *cqe;
	int ret = io_uring_wait_cqe(ring, &cqe);

	if (ret < 0)
		die("io_uring_wait_cqe", -ret);
	if (cqe->user_data != 0x5eed)
		die("unexpected completion", EPROTO);
	if (cqe->res < 0)
		die("accept completion", -cqe->res);
	io_uring_cqe_seen(ring, cqe);
	return 1;
}

/* With hold: says the first connections are queued, waits for a line on stdin. */
static void hold_here(int hold)
{
	char line[16];

	if (!hold)
		return;
	printf("queued\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		die("reading stdin", EPIPE);
}

static int run(struct io_uring *ring, int mode, int lfd, const struct sockaddr_in *sin,
	       int n, int delay_ms, int hold)
{
	int accepted = 0;
	int first_batch = n / 2;

	if (mode == 'm') {
		for (int i = 0; i < first_batch; i++)
			connect_to(sin);
		hold_here(hold);
		sleep_ms(delay_ms);
		submit_accept(ring, lfd, mode);
		for (int i = 0; i < first_batch; i++)
			accepted += reap(ring);
		for (int i = first_batch; i < n; i++) {
			connect_to(sin);
			sleep_ms(delay_ms);
			accepted += reap(ring);
		}
		return accepted;
	}
	for (int i = 0; i < n; i++) {
		if (i % 2 == 0 || mode == 'd') {
			connect_to(sin);
			hold_here(hold && i == 0);
			sleep_ms(delay_ms);
			submit_accept(ring, lfd, mode);
		} else {
			submit_accept(ring, lfd, mode);
			connect_to(sin);
			sleep_ms(delay_ms);
		}
		accepted += reap(ring);
	}
	return accepted;
}

int main(int argc, char **argv)
{
	struct io_uring ring;
	struct sockaddr_in sin;
	int mode, n, delay_ms, lfd, ret, accepted;
	char buf[64];

	if (argc < 5 || argc > 6 || (argc == 6 && strcmp(argv[5], "hold")) ||
	    (strcmp(argv[1], "single") && strcmp(argv[1], "multi") &&
	     strcmp(argv[1], "direct"))) {
		fprintf(stderr,
			"usage: uring_server single|multi|direct ADDR:PORT N DELAY_MS [hold]\n");
		return 2;
	}
	mode = argv[1][0];
	sin = parse_addr(argv[2]);
	n = atoi(argv[3]);
	delay_ms = atoi(argv[4]);
	if (n < 1 || n > MAX_CONNS)
		die("N must be 1 to 256", EINVAL);
	lfd = listen_on(&sin);
	ret = io_uring_queue_init(8, &ring,
				  IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN);
	if (ret < 0)
		die("io_uring_queue_init", -ret);
	if (mode == 'd') {
		ret = io_uring_register_files_sparse(&ring, n);
		if (ret < 0)
			die("io_uring_register_files_sparse", -ret);
	}
	accepted = run(&ring, mode, lfd, &sin, n, delay_ms, argc == 6);
	printf("done mode=%s accepted=%d pid=%d tid=%ld\n", argv[1], accepted, getpid(),
	       (long)syscall(SYS_gettid));
	fflush(stdout);
	while (read(0, buf, sizeof(buf)) > 0)
		;
	io_uring_queue_exit(&ring);
	return 0;
}
