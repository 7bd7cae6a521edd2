#pragma once
// Include Eigen through this header, from .cpp files only (Eigen stays out of public headers).
// GCC 12's avx512fintrin.h (inlined through Eigen's packet math) trips -W(maybe-)uninitialized
// on its own undefined-vector idiom (`__m512 __Y = __Y;`). The warnings are reported where templates are instantiated,
// so the pragma must stay in force for the rest of the translation unit.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include <Eigen/Core>
