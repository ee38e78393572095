#include "comm/reduce_buffers.h"

#include "comm/reduce_element.h"

namespace gradcomm::detail {
namespace {

template <typename T, typename Combine>
void combine_all(void* acc, const void* src, std::size_t n, Combine combine) {
  auto* a = static_cast<T*>(acc);
  const auto* b = static_cast<const T*>(src);
  for (std::size_t i = 0; i < n; ++i) a[i] = combine(a[i], b[i]);
}

}  // namespace

void combine_buffers(DType dtype, ReduceOp op, void* acc, const void* src, std::size_t n) {
  switch (dtype) {
    case DType::kFloat32:
      return combine_all<float>(acc, src, n,
                                [op](float a, float b) { return combine_float(a, b, op); });
    case DType::kFloat16:
      return combine_all<std::uint16_t>(
          acc, src, n, [op](std::uint16_t a, std::uint16_t b) { return combine_half(a, b, op); });
    case DType::kBFloat16:
      return combine_all<std::uint16_t>(acc, src, n, [op](std::uint16_t a, std::uint16_t b) {
        return combine_bfloat16(a, b, op);
      });
    case DType::kInt32:
      return combine_all<std::int32_t>(acc, src, n, [op](std::int32_t a, std::int32_t b) {
        return combine_integer<std::int32_t, std::uint32_t>(a, b, op);
      });
    case DType::kUInt32:
      return combine_all<std::uint32_t>(acc, src, n, [op](std::uint32_t a, std::uint32_t b) {
        return combine_integer<std::uint32_t, std::uint32_t>(a, b, op);
      });
    case DType::kUInt8:
      return combine_all<std::uint8_t>(acc, src, n, [op](std::uint8_t a, std::uint8_t b) {
        return combine_integer<std::uint8_t, std::uint8_t>(a, b, op);
      });
  }
}

}  // namespace gradcomm::detail
