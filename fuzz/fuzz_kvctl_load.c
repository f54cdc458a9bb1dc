/*
 * fuzz_kvctl_load.c - the JSON-lines reader of kvctl load (tu_jl_parse).
 *
 * The input is one line.  Laws: the parser never reads past it, reports an
 * offset inside it (or just past it) and a message when it refuses it, and
 * what it accepts has a key without NUL bytes and a value.  An accepted
 * record written back as kvctl dump writes it ("key" as a JSON string, or
 * "key_base64" when the key is not UTF-8, the value in base64) parses to
 * the same key and value.
 */
#include "config.h"

#include "fuzz.h"
#include "toolutil.h"

#include <string.h>

static void write_back(const tu_jrec *r)
{
    char *buf = NULL;
    size_t blen = 0;
    FILE *f = open_memstream(&buf, &blen);
    if (f == NULL)
        return;
    bool utf8 = tu_utf8_valid(r->key.p, r->key.len);
    if (utf8) {
        fputs("{\"key\": ", f);
        tu_json_str(f, r->key.p, r->key.len);
    } else {
        char *k64 = malloc(tu_b64_len(r->key.len) + 1);
        if (k64 == NULL) {
            fclose(f);
            free(buf);
            return;
        }
        tu_b64_encode(k64, r->key.p, r->key.len);
        fprintf(f, "{\"key_base64\": \"%s\"", k64);
        free(k64);
    }
    char *v64 = malloc(tu_b64_len(r->len) + 1);
    if (v64 == NULL) {
        fclose(f);
        free(buf);
        return;
    }
    tu_b64_encode(v64, r->val, r->len);
    fprintf(f, ", \"value\": \"%s\", \"token\": 7}\n", v64);
    free(v64);
    if (fclose(f) != 0) {
        free(buf);
        return;
    }
    tu_jrec again;
    memset(&again, 0, sizeof again);
    size_t at = 0;
    char err[160];
    int rc = tu_jl_parse(buf, blen, &again, &at, err, sizeof err);
    if (rc != 0)
        fprintf(stderr, "re-read failed at %zu: %s\n%s", at, err, buf);
    FUZZ_CHECK(rc == 0);
    FUZZ_CHECK(again.key.len == r->key.len &&
               memcmp(again.key.p, r->key.p, r->key.len) == 0);
    FUZZ_CHECK(again.len == r->len &&
               (r->len == 0 || memcmp(again.val, r->val, r->len) == 0));
    FUZZ_CHECK(again.has_tok);
    tu_jrec_free(&again);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (1u << 20))
        return 0;
    /* An exact-size heap copy: ASan sees any read past the line. */
    char *line = malloc(size ? size : 1);
    if (line == NULL)
        return 0;
    memcpy(line, data, size);
    tu_jrec r;
    memset(&r, 0, sizeof r);
    bool blank = tu_jl_blank(line, size);
    size_t at = (size_t)-1;
    char err[160] = "";
    int rc = tu_jl_parse(line, size, &r, &at, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (blank)
        FUZZ_CHECK(rc == -1); /* a blank line is no record */
    if (rc != 0) {
        FUZZ_CHECK(at <= size);
        FUZZ_CHECK(err[0] != '\0');
    } else {
        FUZZ_CHECK(r.has_key && r.has_val);
        FUZZ_CHECK(r.key.p != NULL && strlen(r.key.p) == r.key.len);
        FUZZ_CHECK(r.val != NULL || r.len == 0);
        write_back(&r);
    }
    tu_jrec_free(&r);
    free(line);
    return 0;
}
