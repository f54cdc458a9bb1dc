/*
 * slots.c - hash slots for the Redis backend: CRC16, the slot tags (a
 * number per slot that hashes to it, for the {tag} of every key), the slot
 * of a record, and the slot map (CLUSTER SLOTS, MOVED targets, refresh).
 */
#include "backend/redis/redis_int.h"
#include "util/time.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* CRC16 (XMODEM), the hash of Redis Cluster's key slots. */
static uint16_t crc16(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint16_t crc = 0;
    for (size_t i = 0; i < n; i++) {
        crc ^= (uint16_t)(b[i] << 8);
        for (int k = 0; k < 8; k++)
            crc = (crc & 0x8000) ? (uint16_t)((crc << 1) ^ 0x1021)
                                 : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned redis__slot_of(const void *p, size_t n)
{
    return crc16(p, n) & (NSLOTS - 1);
}

/* slot_tag[s]: the smallest number whose decimal form hashes to slot s. */
static uint32_t slot_tag[NSLOTS];
static pthread_once_t slot_tag_once = PTHREAD_ONCE_INIT;

static void slot_tag_init(void)
{
    size_t left = NSLOTS;
    static bool seen[NSLOTS];
    for (uint32_t v = 0; left > 0; v++) {
        char b[16];
        int n = snprintf(b, sizeof b, "%u", v);
        unsigned s = redis__slot_of(b, (size_t)n);
        if (!seen[s]) {
            seen[s] = true;
            slot_tag[s] = v;
            left--;
        }
    }
}

void redis__slot_tags_init(void)
{
    pthread_once(&slot_tag_once, slot_tag_init);
}

uint32_t redis__slot_tag(unsigned slot)
{
    return slot_tag[slot];
}

/* ------------------------------------------------------------------------ */
/* Keys and slots                                                           */
/* ------------------------------------------------------------------------ */

unsigned redis__key_slot(const rstore *st, const kv_key *key, const kv_buf *enc)
{
    if (!st->keymode)
        return st->store_slot;
    const char *id = kv_key_id(key);
    const char *o = strchr(id, '{');
    if (o != NULL) {
        const char *c = strchr(o + 1, '}');
        if (c != NULL && c > o + 1)
            return redis__slot_of(o + 1, (size_t)(c - o - 1));
    }
    return redis__slot_of(enc->data, enc->len);
}

rnode *redis__redirect_node(rstore *st, const char *s, int *slot)
{
    const char *sp = strchr(s, ' ');
    if (sp == NULL)
        return NULL;
    *slot = atoi(sp + 1);
    sp = strchr(sp + 1, ' ');
    if (sp == NULL)
        return NULL;
    const char *colon = strrchr(sp + 1, ':');
    if (colon == NULL || colon - (sp + 1) >= HOST_LEN)
        return NULL;
    char ip[HOST_LEN];
    memcpy(ip, sp + 1, (size_t)(colon - (sp + 1)));
    ip[colon - (sp + 1)] = '\0';
    return redis__node_get(st, ip, atoi(colon + 1));
}

/* ------------------------------------------------------------------------ */
/* The slot map                                                             */
/* ------------------------------------------------------------------------ */

int redis__apply_slots(rstore *st, const redisReply *r, const char *seed_ip)
{
    if (r->type != REDIS_REPLY_ARRAY)
        return KV_EBACKEND;
    for (size_t i = 0; i < r->elements; i++) {
        const redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER ||
            e->element[2]->type != REDIS_REPLY_ARRAY ||
            e->element[2]->elements < 2 ||
            e->element[2]->element[0]->type != REDIS_REPLY_STRING ||
            e->element[2]->element[1]->type != REDIS_REPLY_INTEGER)
            return KV_EBACKEND;
        long long a = e->element[0]->integer, b = e->element[1]->integer;
        const char *ip = e->element[2]->element[0]->str;
        if (ip[0] == '\0')
            ip = seed_ip;
        if (strcmp(ip, "?") == 0)
            continue; /* an endpoint the node does not know (Redis 7) */
        long long port = e->element[2]->element[1]->integer;
        if (port <= 0 || port > 65535 || !redis__addr_ok(ip, (int)port))
            return KV_EBACKEND;
        rnode *n = redis__node_get(st, ip, (int)port);
        if (n == NULL)
            return KV_ENOMEM;
        for (long long s = a; s <= b && s < NSLOTS; s++)
            if (s >= 0)
                st->slots[s] = n;
    }
    return KV_OK;
}

static void refresh_cb(rcmd *c, redisReply *r, int err, const char *msg)
{
    (void)msg;
    rstore *st = c->node->st;
    st->refreshing = false;
    if (err == KV_OK && r->type == REDIS_REPLY_ARRAY)
        (void)redis__apply_slots(st, r, c->node->host);
    if (st->refresh_again && !st->closing) {
        st->refresh_again = false;
        redis__refresh_map(st);
    }
}

void redis__refresh_map(rstore *st)
{
    if (!st->cluster || st->closing)
        return;
    if (st->refreshing) {
        st->refresh_again = true;
        return;
    }
    rnode *pick = NULL;
    uint64_t now = kv__now_ms();
    for (rnode *n = st->nodes; n != NULL; n = n->next) {
        if (n->state == N_UP) {
            pick = n;
            break;
        }
        if (pick == NULL && n->state == N_DOWN && now >= n->retry_at)
            pick = n;
    }
    if (pick == NULL)
        return;
    rcmd *c = kv__calloc(1, sizeof *c);
    if (c == NULL)
        return;
    c->slot = -1;
    c->script = -1;
    c->node = pick;
    c->nargs = 2;
    c->cb = refresh_cb;
    if (redis__args(&c->tail, "CLUSTER") != KV_OK ||
        redis__args(&c->tail, "SLOTS") != KV_OK) {
        redis__cmd_free(c);
        return;
    }
    st->refreshing = true;
    redis__node_send(pick, c);
}
