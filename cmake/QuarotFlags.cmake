# Compiler flags shared by every quarot target, applied through the quarot_flags interface target.
add_library(quarot_flags INTERFACE)
target_compile_options(quarot_flags INTERFACE -Wall -Wextra -Wpedantic -Wshadow -Wconversion
                       -Wno-sign-conversion)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  # GCC 12 reports false -Wrestrict positives inside libstdc++'s std::string operator+ at -O3
  # (GCC bug 105329); the warning never concerns our code.
  target_compile_options(quarot_flags INTERFACE -Wno-restrict)
endif()
if(QUAROT_WERROR)
  target_compile_options(quarot_flags INTERFACE -Werror)
endif()
if(QUAROT_SANITIZE)
  # Abort on the first UB report so that a sanitizer finding fails the test that hit it.
  target_compile_options(quarot_flags INTERFACE -fsanitize=address,undefined
                         -fno-sanitize-recover=all -fno-omit-frame-pointer)
  target_link_options(quarot_flags INTERFACE -fsanitize=address,undefined)
endif()
if(QUAROT_NATIVE)
  # Like llama.cpp's GGML_NATIVE: quarot is built where it runs, and Eigen picks its SIMD width
  # at compile time. Kernels with run-time dispatch (later: INT4) do not depend on this.
  target_compile_options(quarot_flags INTERFACE -march=native)
endif()
