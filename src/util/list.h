/*
 * util/list.h - an intrusive, circular, doubly linked list.
 *
 * Embed a kv__list node in a struct; a list is a kv__list head that is its
 * own neighbour when empty.  A node that is in no list points at itself
 * (after kv__list_init or kv__list_remove), so kv__list_linked tells whether
 * it is in one.  No allocation, no locking: the owner of the list guards it.
 */
#ifndef KV_UTIL_LIST_H
#define KV_UTIL_LIST_H

#include "util/util.h"

typedef struct kv__list {
    struct kv__list *next, *prev;
} kv__list;

/* An empty list, or a node in no list. */
static inline void kv__list_init(kv__list *l)
{
    l->next = l->prev = l;
}

static inline bool kv__list_empty(const kv__list *head)
{
    return head->next == head;
}

/* True if node is in a list (it was initialised and not removed since). */
static inline bool kv__list_linked(const kv__list *node)
{
    return node->next != node;
}

/* Link node after pos (pos may be the head: then node becomes first). */
static inline void kv__list_insert_after(kv__list *pos, kv__list *node)
{
    node->prev = pos;
    node->next = pos->next;
    pos->next->prev = node;
    pos->next = node;
}

static inline void kv__list_push_back(kv__list *head, kv__list *node)
{
    kv__list_insert_after(head->prev, node);
}

static inline void kv__list_push_front(kv__list *head, kv__list *node)
{
    kv__list_insert_after(head, node);
}

/* Unlink node from its list and leave it in none (safe to call again). */
static inline void kv__list_remove(kv__list *node)
{
    node->prev->next = node->next;
    node->next->prev = node->prev;
    node->next = node->prev = node;
}

/* The first node, or NULL when the list is empty. */
static inline kv__list *kv__list_first(const kv__list *head)
{
    return head->next == head ? NULL : head->next;
}

/* Remove and return the first node, or NULL when the list is empty. */
static inline kv__list *kv__list_pop_front(kv__list *head)
{
    kv__list *n = kv__list_first(head);
    if (n != NULL)
        kv__list_remove(n);
    return n;
}

/* Move every node of from to the end of to; from is left empty. */
static inline void kv__list_splice_back(kv__list *to, kv__list *from)
{
    if (kv__list_empty(from))
        return;
    from->next->prev = to->prev;
    to->prev->next = from->next;
    from->prev->next = to;
    to->prev = from->prev;
    kv__list_init(from);
}

/* The struct that holds node as its member. */
#define KV__LIST_ENTRY(node, type, member) KV__CONTAINER_OF(node, type, member)

/* Walk head's nodes; pos may not be removed during the walk. */
#define KV__LIST_FOREACH(pos, head) \
    for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)

/* Walk head's nodes; pos may be removed (tmp holds its successor). */
#define KV__LIST_FOREACH_SAFE(pos, tmp, head)                       \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head); \
         (pos) = (tmp), (tmp) = (pos)->next)

#endif /* KV_UTIL_LIST_H */
