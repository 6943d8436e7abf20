/* Tokenizer hot loop: pair merging over one word, for byte-level BPE and SentencePiece.
 *
 * A word is a byte string cut into initial symbols (one character each). Two
 * adjacent symbols may merge when the table holds their concatenation; the
 * merge with the lowest priority goes first, the leftmost on ties (BPE: the
 * merge rank; SentencePiece: minus the merged token's score). Symbols only
 * grow, so a queued pair is stale exactly when the byte length of the left
 * symbol plus its current right neighbour differs from the length it was
 * queued with.
 *
 * Table keys are (bytes, split): BPE merges are keyed by the concatenation and
 * the byte length of the left part (a merge list names the exact pair);
 * SentencePiece merges, and every token for the final id lookup, use split 0.
 *
 * Memory: 12 bytes per symbol plus the heap, which is rebuilt from the live
 * pairs whenever stale entries outnumber them, so it stays O(n) and the
 * merge O(n log n) even for one multi-megabyte word.
 */
#include <stdlib.h>
#include <string.h>

#include "edgekern.h"

typedef struct {
    uint64_t hash;      /* 0 marks an empty slot */
    int64_t offset;     /* key bytes in the table's blob */
    int32_t length;
    int32_t split;
    float priority;
    int32_t id;
} tok_entry;

struct ek_tok_table {
    tok_entry *slots;   /* (capacity) open addressing, linear probing */
    uint64_t capacity;  /* power of two, at least twice the entries */
    char *blob;         /* all key bytes, owned */
    int64_t n_entries;
};

static uint64_t hash_key(const char *bytes, int32_t length, int32_t split) {
    uint64_t h = 1469598103934665603ull ^ (uint64_t)(uint32_t)split * 0x9E3779B97F4A7C15ull;
    for (int32_t i = 0; i < length; i++) {
        h ^= (uint8_t)bytes[i];
        h *= 1099511628211ull;
    }
    h ^= h >> 29;
    return h ? h : 1;
}

static const tok_entry *table_find(const ek_tok_table *t, const char *bytes, int32_t length, int32_t split) {
    uint64_t h = hash_key(bytes, length, split);
    uint64_t mask = t->capacity - 1;
    for (uint64_t i = h & mask;; i = (i + 1) & mask) {
        const tok_entry *e = &t->slots[i];
        if (e->hash == 0) return NULL;
        if (e->hash == h && e->length == length && e->split == split &&
            memcmp(t->blob + e->offset, bytes, (size_t)length) == 0)
            return e;
    }
}

ek_status ek_tok_table_create(const char *blob, const int64_t *offsets, const int32_t *splits,
                              const float *priorities, const int32_t *ids, int64_t n,
                              ek_tok_table **out) {
    *out = NULL;
    ek_tok_table *t = calloc(1, sizeof *t);
    if (!t) return EK_ERR_NO_MEMORY;
    uint64_t capacity = 16;
    while (capacity < (uint64_t)n * 2) capacity <<= 1;
    int64_t blob_bytes = offsets[n];
    t->capacity = capacity;
    t->slots = calloc(capacity, sizeof *t->slots);
    t->blob = malloc(blob_bytes > 0 ? (size_t)blob_bytes : 1);
    if (!t->slots || !t->blob) {
        ek_tok_table_free(t);
        return EK_ERR_NO_MEMORY;
    }
    memcpy(t->blob, blob, (size_t)blob_bytes);
    uint64_t mask = capacity - 1;
    for (int64_t k = 0; k < n; k++) {
        const char *bytes = t->blob + offsets[k];
        int32_t length = (int32_t)(offsets[k + 1] - offsets[k]);
        uint64_t h = hash_key(bytes, length, splits[k]);
        uint64_t i = h & mask;
        for (;; i = (i + 1) & mask) {
            tok_entry *e = &t->slots[i];
            if (e->hash == 0) break;
            /* A key given twice keeps its first entry (a merge list's first rank wins). */
            if (e->hash == h && e->length == length && e->split == splits[k] &&
                memcmp(t->blob + e->offset, bytes, (size_t)length) == 0)
                goto next;
        }
        t->slots[i] = (tok_entry){h, offsets[k], length, splits[k], priorities[k], ids[k]};
        t->n_entries++;
    next:;
    }
    *out = t;
    return EK_OK;
}

void ek_tok_table_free(ek_tok_table *t) {
    if (!t) return;
    free(t->slots);
    free(t->blob);
    free(t);
}

typedef struct {
    float priority;
    int32_t left;   /* the pair is (left, next[left]) at the time it is popped */
    int32_t size;   /* byte length of the pair when queued */
} pair_entry;

static int pair_before(const pair_entry *a, const pair_entry *b) {
    return a->priority < b->priority || (a->priority == b->priority && a->left < b->left);
}

static void heap_push(pair_entry *heap, int64_t *n, pair_entry item) {
    int64_t i = (*n)++;
    while (i > 0) {
        int64_t parent = (i - 1) / 2;
        if (!pair_before(&item, &heap[parent])) break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = item;
}

static void sift_down(pair_entry *heap, int64_t n, int64_t i) {
    pair_entry item = heap[i];
    for (;;) {
        int64_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && pair_before(&heap[child + 1], &heap[child])) child++;
        if (!pair_before(&heap[child], &item)) break;
        heap[i] = heap[child];
        i = child;
    }
    heap[i] = item;
}

static pair_entry heap_pop(pair_entry *heap, int64_t *n) {
    pair_entry top = heap[0];
    heap[0] = heap[--(*n)];
    if (*n > 0) sift_down(heap, *n, 0);
    return top;
}

typedef struct {
    const ek_tok_table *table;
    const char *text;
    int32_t split_keys; /* 1: BPE (key split = left length), 0: SentencePiece */
    int32_t *start;     /* (n) byte offset of each symbol */
    int32_t *len;       /* (n) byte length; 0 once merged away */
    int32_t *prev, *next;
} merge_state;

/* Queue the pair (left, next[left]) if the table has it. */
static void try_pair(merge_state *s, pair_entry *heap, int64_t *n_heap, int32_t left) {
    if (left < 0) return;
    int32_t right = s->next[left];
    if (right < 0) return;
    int32_t size = s->len[left] + s->len[right];
    const tok_entry *e = table_find(s->table, s->text + s->start[left], size,
                                    s->split_keys ? s->len[left] : 0);
    if (e) heap_push(heap, n_heap, (pair_entry){e->priority, left, size});
}

ek_status ek_tok_merge(const ek_tok_table *table, int32_t split_keys, const char *text,
                       const int32_t *symbol_bytes, int32_t n, int32_t *out_ids,
                       int32_t *out_bytes, int32_t *n_out) {
    *n_out = 0;
    if (n <= 0) return EK_OK;
    merge_state s = {table, text, split_keys, NULL, NULL, NULL, NULL};
    s.start = malloc((size_t)n * 4 * sizeof(int32_t));
    int64_t heap_cap = 3 * (int64_t)n + 16;
    pair_entry *heap = malloc((size_t)heap_cap * sizeof *heap);
    if (!s.start || !heap) {
        free(s.start);
        free(heap);
        return EK_ERR_NO_MEMORY;
    }
    s.len = s.start + n;
    s.prev = s.len + n;
    s.next = s.prev + n;
    int32_t offset = 0;
    for (int32_t i = 0; i < n; i++) {
        s.start[i] = offset;
        s.len[i] = symbol_bytes[i];
        offset += symbol_bytes[i];
        s.prev[i] = i - 1;
        s.next[i] = i + 1 < n ? i + 1 : -1;
    }
    int64_t n_heap = 0;
    for (int32_t i = 0; i + 1 < n; i++) try_pair(&s, heap, &n_heap, i);
    int64_t n_live = n;
    while (n_heap > 0) {
        pair_entry top = heap_pop(heap, &n_heap);
        int32_t left = top.left;
        int32_t right = s.len[left] ? s.next[left] : -1;
        if (right < 0 || s.len[left] + s.len[right] != top.size) continue; /* stale */
        s.len[left] += s.len[right];
        s.len[right] = 0;
        s.next[left] = s.next[right];
        if (s.next[right] >= 0) s.prev[s.next[right]] = left;
        n_live--;
        try_pair(&s, heap, &n_heap, s.prev[left]);
        try_pair(&s, heap, &n_heap, left);
        if (n_heap + 2 >= heap_cap) {
            /* Too many stale entries: rebuild from the live pairs (at most n_live - 1). */
            n_heap = 0;
            for (int32_t i = 0; i >= 0 && i < n; i = s.next[i]) try_pair(&s, heap, &n_heap, i);
        }
    }
    int32_t k = 0;
    for (int32_t i = 0; i >= 0; i = s.next[i]) {
        const tok_entry *e = table_find(table, text + s.start[i], s.len[i], 0);
        out_ids[k] = e ? e->id : -1;
        out_bytes[k] = s.len[i];
        k++;
    }
    (void)n_live;
    *n_out = k;
    free(s.start);
    free(heap);
    return EK_OK;
}
