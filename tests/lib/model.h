/*
 * model.h - the model backend (model.c): an in-memory reference backend
 * for the conformance suite, written against the backend contract.
 */
#ifndef KV_TEST_MODEL_H
#define KV_TEST_MODEL_H

#include <stdbool.h>

#include "kvstore.h"

/* Open an empty model store on loop and pool.  atomic: whether the backend
 * declares atomic batches (false: the store layer's fallback for backends
 * without them runs). */
int tu_model_open(kv_store **out, kv_loop *loop, kv_pool *pool, unsigned flags,
                  bool atomic);

#endif
