// Minimal assertion helpers for the torch-free C++ tests (run by ctest).
#pragma once
#include <cstdio>

static int g_failures = 0;

#define CHECK(cond)                                                       \
  do {                                                                    \
    if (!(cond)) {                                                        \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                       \
    }                                                                     \
  } while (0)

#define TEST_MAIN_RESULT() (g_failures == 0 ? (std::puts("ok"), 0) : 1)
