// The per-rank state blobs of save_state() / load_state() (compressors, OneBitAdam):
// plain values appended in order, read back in the same order with every read checked
// against the end, so a truncated or damaged blob is kCorruptPayload naming the reader
// and the field instead of a read past the buffer.
#pragma once

#include <cstddef>
#include <cstring>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "gradcomm/error.h"

namespace gradcomm::detail {

class StateBlobWriter {
 public:
  explicit StateBlobWriter(std::vector<std::byte>& out) : out_(out) {}

  void bytes(const void* data, std::size_t n) {
    const std::size_t at = out_.size();
    out_.resize(at + n);
    if (n) std::memcpy(out_.data() + at, data, n);  // data may be null when n == 0
  }
  template <typename T>
  void value(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>);
    bytes(&v, sizeof v);
  }

 private:
  std::vector<std::byte>& out_;
};

class StateBlobReader {
 public:
  // `owner` starts every message, e.g. "DgcCompressor::load_state on rank 2".
  StateBlobReader(std::span<const std::byte> in, std::string owner) : in_(in), owner_(std::move(owner)) {}

  void bytes(void* data, std::size_t n, const char* what) {
    const std::span<const std::byte> from = view(n, what);
    if (n) std::memcpy(data, from.data(), n);
  }
  template <typename T>
  T value(const char* what) {
    static_assert(std::is_trivially_copyable_v<T>);
    T v{};
    bytes(&v, sizeof v, what);
    return v;
  }
  // The next n bytes, in place (a nested blob, or an array copied later).
  std::span<const std::byte> view(std::size_t n, const char* what) {
    GRADCOMM_CHECK(n <= left(), ErrorCode::kCorruptPayload, owner_, ": blob of ", in_.size(), " bytes ends at ",
                   at_, " while reading ", what, " (", n, " bytes)");
    const std::span<const std::byte> out = in_.subspan(at_, n);
    at_ += n;
    return out;
  }
  std::size_t left() const noexcept { return in_.size() - at_; }
  // Every byte must have been read: anything after the last field is damage.
  void finish() const {
    GRADCOMM_CHECK(left() == 0, ErrorCode::kCorruptPayload, owner_, ": ", left(), " trailing bytes");
  }

 private:
  std::span<const std::byte> in_;
  std::string owner_;
  std::size_t at_ = 0;
};

}  // namespace gradcomm::detail
