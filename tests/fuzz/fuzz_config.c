/* fuzz_config.c - libFuzzer target: hostile config files through cfg_load
 * (and, when one loads, rules_lint over the table it built).
 *
 * cfg_load only reads files, so each input is written to one file in a
 * private temp dir made once per process. That dir also holds a dealers.d
 * link to conf/dealers.d, so the seeds' @include lines of dealers.d files
 * reach real included files. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "leadrouter/config.h"
#include "leadrouter/table.h"

#define FUZZ_MAX_INPUT 65536

#ifndef LR_FUZZ_DEALERS_DIR
#error "LR_FUZZ_DEALERS_DIR must name conf/dealers.d (see tests/fuzz/CMakeLists.txt)"
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char fuzz_dir[] = "/tmp/lr-fuzz-config.XXXXXX";
static char fuzz_path[sizeof fuzz_dir + 32];
static char fuzz_link[sizeof fuzz_dir + 32];
static volatile size_t fuzz_sink;

static void fuzz_die(const char *what)
{
    fprintf(stderr, "fuzz_config: %s: %s\n", what, strerror(errno));
    abort();
}

static void fuzz_cleanup(void)
{
    unlink(fuzz_path);
    unlink(fuzz_link);
    rmdir(fuzz_dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    if (mkdtemp(fuzz_dir) == NULL)
        fuzz_die("mkdtemp");
    snprintf(fuzz_path, sizeof fuzz_path, "%s/leadrouter.conf", fuzz_dir);
    snprintf(fuzz_link, sizeof fuzz_link, "%s/dealers.d", fuzz_dir);
    if (symlink(LR_FUZZ_DEALERS_DIR, fuzz_link) != 0)
        fuzz_die("symlink dealers.d");
    atexit(fuzz_cleanup);
    return 0;
}

/* True when an @include line could leave the temp dir (an absolute path or
 * ".."): glob("/proc/k*") and the like would read, or block on, whatever the
 * host holds, which says nothing about cfg_load and makes runs differ from
 * machine to machine. Errs on the side of skipping. */
static int include_escapes(const uint8_t *data, size_t size)
{
    for (size_t i = 0; i + 8 <= size; i++) {
        if (memcmp(data + i, "@include", 8) != 0)
            continue;
        size_t j = i + 8;
        while (j < size && (data[j] == ' ' || data[j] == '\t' || data[j] == '"' || data[j] == '\\'))
            j++;
        if (j < size && data[j] == '/')
            return 1;
        for (; j < size && data[j] != '\n'; j++)
            if (data[j] == '.' && j + 1 < size && data[j + 1] == '.')
                return 1;
    }
    return 0;
}

static void write_input(const uint8_t *data, size_t size)
{
    int fd = open(fuzz_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        fuzz_die("open");
    size_t off = 0;
    while (off < size) {
        ssize_t w = write(fd, data + off, size - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            fuzz_die("write");
        off += (size_t)w;
    }
    if (close(fd) != 0)
        fuzz_die("close");
}

static void lint_warn(void *ctx, const char *msg)
{
    (void)ctx;
    fuzz_sink += strlen(msg); /* read the whole message: ASan checks it */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > FUZZ_MAX_INPUT || include_escapes(data, size))
        return -1; /* not added to the corpus */
    write_input(data, size);

    struct cfg *c = NULL;
    char err[1024] = "";
    if (cfg_load(fuzz_path, &c, err, sizeof err) < 0) {
        /* config.h promises "FILE:LINE: message" on every failure. */
        if (err[0] == '\0') {
            fprintf(stderr, "fuzz_config: cfg_load failed without a reason\n");
            abort();
        }
        return 0;
    }
    fuzz_sink += (size_t)rules_lint(c->rules, lint_warn, NULL);
    cfg_free(c);
    return 0;
}
