// Built against the installed package: uses the public headers and the library.
#include <gradcomm/gradcomm.h>

#include <cstdio>
#include <vector>

int main() {
  std::vector<float> values(10, 1.0f);
  auto view = gradcomm::TensorView::of(std::span<float>(values));
  if (view.nbytes() != 40) return 1;
  try {
    GRADCOMM_CHECK_ARG(false, "expected failure");
  } catch (const gradcomm::Error& e) {
    std::printf("consumer ok: %s (%s)\n", gradcomm::version(), e.what());
    return 0;
  }
  return 1;
}
