/* placeholder suite, being written */
#include "testutil.h"
START_TEST(test_placeholder) { ck_assert_int_eq(kv_err_is(KV_ENOTFOUND, KV_EBACKEND), 1); }
END_TEST
int main(void) { Suite *s = suite_create("fs"); TCase *tc = tcase_create("x"); tcase_add_test(tc, test_placeholder); suite_add_tcase(s, tc); return tu_run(s); }
