/* Minimal checking for the aarch64 C tests: count checks, print failures, exit 1 if any failed.
 * Tests print (C library code never does); output goes to stderr so make shows it. */
#ifndef ARM_CHECK_H
#define ARM_CHECK_H

#include <stdio.h>
#include <stdlib.h>

static int check_count, check_failures;

#define CHECK(cond, ...)                                                          \
    do {                                                                          \
        check_count++;                                                            \
        if (!(cond)) {                                                            \
            check_failures++;                                                     \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);       \
            fprintf(stderr, __VA_ARGS__);                                         \
            fputc('\n', stderr);                                                  \
        }                                                                         \
    } while (0)

/* Print the tally and return the process exit status. */
static int check_summary(const char *what) {
    fprintf(stderr, "%s: %d checks, %d failed\n", what, check_count, check_failures);
    return check_failures ? 1 : 0;
}

#endif /* ARM_CHECK_H */
