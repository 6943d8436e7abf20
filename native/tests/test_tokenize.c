/* The tokenizer's merge loop (native/src/tokenize.c) on its own, no Python:
 * exact merges on a tiny SentencePiece-style and BPE-style table, then random
 * words up to 2 MB whose output must cover the input exactly. Built for the host
 * (with ASan+UBSan) and for aarch64 under qemu by tests/test_tokenizer_c.py.
 * Prints "all tokenize tests passed" on success. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "edgekern.h"

static int failures = 0;

#define CHECK(cond, ...)                                   \
    do {                                                   \
        if (!(cond)) {                                     \
            printf("FAIL %s:%d: ", __FILE__, __LINE__);    \
            printf(__VA_ARGS__);                           \
            printf("\n");                                  \
            failures++;                                    \
        }                                                  \
    } while (0)

static ek_tok_table *make_table(const char **keys, const int32_t *splits, const float *priorities,
                                const int32_t *ids, int n) {
    int64_t offsets[32];
    char blob[256];
    int64_t off = 0;
    for (int i = 0; i < n; i++) {
        offsets[i] = off;
        size_t len = strlen(keys[i]);
        memcpy(blob + off, keys[i], len);
        off += (int64_t)len;
    }
    offsets[n] = off;
    ek_tok_table *table = NULL;
    ek_status status = ek_tok_table_create(blob, offsets, splits, priorities, ids, n, &table);
    CHECK(status == EK_OK && table != NULL, "table create failed: %d", (int)status);
    return table;
}

/* Merge an ASCII word (one symbol per byte); returns the number of output symbols. */
static int32_t merge_ascii(const ek_tok_table *table, int split_keys, const char *word, int32_t *ids,
                           int32_t *bytes) {
    int32_t n = (int32_t)strlen(word);
    int32_t symbol_bytes[64];
    for (int32_t i = 0; i < n; i++) symbol_bytes[i] = 1;
    int32_t n_out = -1;
    CHECK(ek_tok_merge(table, split_keys, word, symbol_bytes, n, ids, bytes, &n_out) == EK_OK, "merge failed");
    return n_out;
}

static void test_score_order_and_leftmost_ties(void) {
    /* SentencePiece style: priority = -score; "ab" scores higher than "bc". */
    const char *keys[] = {"a", "b", "c", "ab", "bc", "abc"};
    int32_t splits[] = {0, 0, 0, 0, 0, 0};
    float priorities[] = {0, 0, 0, -2.0f, -1.0f, -0.5f};
    int32_t ids[] = {10, 11, 12, 13, 14, 15};
    ek_tok_table *table = make_table(keys, splits, priorities, ids, 6);
    int32_t out[64], bytes[64];
    int32_t n = merge_ascii(table, 0, "abc", out, bytes);
    /* ab (-2) first, then ab+c = abc (-0.5). */
    CHECK(n == 1 && out[0] == 15, "abc -> [15], got n=%d first=%d", n, out[0]);
    n = merge_ascii(table, 0, "bcab", out, bytes);
    /* ab at 2 (-2) before bc at 0 (-1); then "bc","ab" -> no "bcab": [14, 13]. */
    CHECK(n == 2 && out[0] == 14 && out[1] == 13, "bcab -> [14, 13], got n=%d", n);
    n = merge_ascii(table, 0, "abab", out, bytes);
    CHECK(n == 2 && out[0] == 13 && out[1] == 13, "abab -> [13, 13], got n=%d", n);
    n = merge_ascii(table, 0, "ddd", out, bytes);
    CHECK(n == 3 && out[0] == -1 && bytes[0] == 1, "unknown symbols stay single with id -1");
    ek_tok_table_free(table);
}

static void test_bpe_merges_name_the_exact_pair(void) {
    /* BPE style: merge "a"+"bc" has rank 0, but "ab"+"c" is not a listed merge. */
    const char *keys[] = {"a", "b", "c", "bc", "abc", "bc"};
    int32_t splits[] = {0, 0, 0, 0, 0, 1};
    float priorities[] = {0, 0, 0, 0, 0, 1.0f};
    int32_t ids[] = {0, 1, 2, 3, 4, 3};
    /* Tokens (split 0): a b c bc abc; merges: (b,c) rank 1 keyed "bc" split 1. */
    ek_tok_table *table = make_table(keys, splits, priorities, ids, 6);
    int32_t out[64], bytes[64];
    int32_t n = merge_ascii(table, 1, "abc", out, bytes);
    CHECK(n == 2 && out[0] == 0 && out[1] == 3, "abc -> [a, bc] without the merge a+bc, got n=%d", n);
    ek_tok_table_free(table);
    const char *keys2[] = {"a", "b", "c", "bc", "abc", "bc", "abc"};
    int32_t splits2[] = {0, 0, 0, 0, 0, 1, 1};
    float priorities2[] = {0, 0, 0, 0, 0, 1.0f, 2.0f};
    int32_t ids2[] = {0, 1, 2, 3, 4, 3, 4};
    table = make_table(keys2, splits2, priorities2, ids2, 7);
    n = merge_ascii(table, 1, "abc", out, bytes);
    CHECK(n == 1 && out[0] == 4, "abc -> [abc] with the merge a+bc, got n=%d", n);
    ek_tok_table_free(table);
}

static void test_long_random_words_cover_the_input(void) {
    const char *keys[] = {"a", "b", "ab", "aab", "ba", "bab", "abab", "aa"};
    int32_t splits[] = {0, 0, 0, 0, 0, 0, 0, 0};
    float priorities[] = {0, 0, -1.0f, -3.0f, -2.0f, -2.5f, -4.0f, -1.0f};
    int32_t ids[] = {0, 1, 2, 3, 4, 5, 6, 7};
    ek_tok_table *table = make_table(keys, splits, priorities, ids, 8);
    uint32_t seed = 12345;
    for (int trial = 0; trial < 300; trial++) {
        seed = seed * 1664525u + 1013904223u;
        int32_t len = 1 + (int32_t)(seed >> 8) % (trial < 295 ? 300 : 2000000);
        char *text = malloc((size_t)len);
        int32_t *symbol_bytes = malloc((size_t)len * sizeof(int32_t));
        int32_t *out = malloc((size_t)len * sizeof(int32_t));
        int32_t *bytes = malloc((size_t)len * sizeof(int32_t));
        CHECK(text && symbol_bytes && out && bytes, "allocation");
        if (!text || !symbol_bytes || !out || !bytes) return;
        for (int32_t i = 0; i < len; i++) {
            seed = seed * 1664525u + 1013904223u;
            text[i] = (seed >> 16) % 3 ? 'a' : 'b';
            symbol_bytes[i] = 1;
        }
        int32_t n_out = -1;
        CHECK(ek_tok_merge(table, 0, text, symbol_bytes, len, out, bytes, &n_out) == EK_OK, "merge");
        int64_t total = 0;
        int known = 1;
        for (int32_t i = 0; i < n_out; i++) {
            total += bytes[i];
            known &= out[i] >= 0;
        }
        CHECK(total == len, "output covers %lld of %d bytes", (long long)total, (int)len);
        CHECK(known, "every final symbol is a token here");
        free(text);
        free(symbol_bytes);
        free(out);
        free(bytes);
    }
    ek_tok_table_free(table);
}

int main(void) {
    test_score_order_and_leftmost_ties();
    test_bpe_merges_name_the_exact_pair();
    test_long_random_words_cover_the_input();
    if (failures) {
        printf("%d tokenize test failures\n", failures);
        return 1;
    }
    printf("all tokenize tests passed\n");
    return 0;
}
