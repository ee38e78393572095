// Shared pieces of the libFuzzer targets: reading parameters from the input, mutating a
// valid payload with the rest of it, and telling a clean rejection from a bug.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <span>
#include <vector>

#include "gradcomm/compressor.h"
#include "gradcomm/error.h"

namespace gradcomm::fuzz {

// Reads the fuzz input front to back; past the end every read gives 0.
class Input {
 public:
  Input(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  std::uint8_t u8() { return at_ < size_ ? data_[at_++] : 0; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(u8() | (u8() << 8)); }
  std::size_t left() const { return size_ - at_; }
  std::span<const std::uint8_t> rest() {
    auto r = std::span<const std::uint8_t>(data_ + at_, size_ - at_);
    at_ = size_;
    return r;
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t at_ = 0;
};

// Damages `bytes` as the rest of the input says: an optional length change (truncation or
// zero extension), then (u16 position, u8 xor) pairs. Starting from a valid payload keeps
// most inputs close to valid, so the checks deep inside a decoder are reached too.
inline void mutate(std::vector<std::byte>& bytes, Input& in) {
  const std::uint8_t resize = in.u8();
  if (resize < 32 && !bytes.empty()) bytes.resize(bytes.size() - 1 - resize % bytes.size());
  else if (resize > 240) bytes.resize(bytes.size() + (resize - 240));
  while (in.left() >= 3 && !bytes.empty()) {
    const std::size_t pos = in.u16() % bytes.size();
    bytes[pos] ^= static_cast<std::byte>(in.u8());
  }
}

// Flips bits of a fixed-size buffer (what a collective delivers): a u8 count, then that
// many (u16 position, u8 xor) pairs.
inline void flip(std::span<std::byte> bytes, Input& in) {
  for (int pairs = in.u8() % 16; pairs > 0 && !bytes.empty(); --pairs) {
    const std::size_t pos = in.u16() % bytes.size();
    bytes[pos] ^= static_cast<std::byte>(in.u8());
  }
}

// Runs `body`: returning, or throwing a gradcomm::Error that reports bad data, is fine;
// any other exception or error code is a bug and aborts, so libFuzzer records the input.
template <typename Body>
void expect_clean(Body&& body, ErrorCode also_fine = ErrorCode::kCorruptPayload) {
  try {
    body();
  } catch (const Error& e) {
    if (e.code() == ErrorCode::kCorruptPayload || e.code() == ErrorCode::kSizeMismatch ||
        e.code() == also_fine) {
      return;
    }
    std::fprintf(stderr, "unexpected gradcomm::Error for bad data: %s\n", e.what());
    std::abort();
  }
}

// A deterministic gradient for rank `rank`, with values over several orders of magnitude.
inline void fill_gradient(std::vector<float>& g, int rank, std::uint32_t seed) {
  std::uint32_t x = seed * 2654435761u + static_cast<std::uint32_t>(rank) * 40503u + 1u;
  for (float& v : g) {
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    v = static_cast<float>(static_cast<std::int32_t>(x)) * 0x1p-31f * static_cast<float>(1u << (x % 8));
  }
}

// Encodes one gradient per rank with p compressors made by `make` (set up as ranks 0..p-1
// of one layer), forms what the collective would deliver to rank 0 (the sum for an
// allreduce wire, the payloads in rank order for an allgather), damages it as the input
// says, and decodes it on rank 0. Only a clean rejection or success is acceptable; the
// buffers are exactly sized, so ASan sees any read or write out of bounds.
template <typename Make>
void fuzz_decode(Input& in, Make&& make) {
  const int p = 1 + in.u8() % 6;
  const std::size_t n = in.u16() % 3000;
  const std::vector<LayerSpec> layers = {{"w", n, in.u8() % 4 == 0 ? 1 : 2}};
  const std::uint32_t seed = in.u8();
  const int steps = 1 + in.u8() % 3;
  std::vector<std::unique_ptr<Compressor>> ranks;
  for (int r = 0; r < p; ++r) {
    ranks.push_back(make());
    ranks.back()->setup(layers, p, r);
  }
  std::vector<float> grad(n), out(n);
  std::vector<std::byte> received, payload;
  LayerWire w;
  for (int step = 0; step < steps; ++step) {  // later steps carry error feedback
    w = ranks[0]->wire(0);
    const bool gather = w.collective == Collective::kAllgather;
    received.assign(gather ? p * w.bytes() : w.bytes(), std::byte{0});
    payload.resize(w.bytes());
    for (int r = 0; r < p; ++r) {
      ranks[r]->set_step(step);
      fill_gradient(grad, r, seed + static_cast<std::uint32_t>(step));
      ranks[r]->encode(0, TensorView::of(std::span<float>(grad)), TensorView(payload.data(), w.count, w.dtype));
      if (gather) {
        std::memcpy(received.data() + static_cast<std::size_t>(r) * w.bytes(), payload.data(), w.bytes());
      } else if (w.dtype == DType::kFloat32) {
        auto* sum = reinterpret_cast<float*>(received.data());
        const auto* mine = reinterpret_cast<const float*>(payload.data());
        for (std::size_t i = 0; i < w.count; ++i) sum[i] += mine[i];
      } else if (r == 0) {
        received = payload;
      }
    }
    if (step + 1 < steps) ranks[0]->decode(0, TensorView(received.data(), received.size() / dtype_size(w.dtype), w.dtype),
                                           TensorView::of(std::span<float>(out)));
  }
  mutate(received, in);
  expect_clean([&] {
    ranks[0]->decode(0, TensorView(received.data(), received.size() / dtype_size(w.dtype), w.dtype),
                     TensorView::of(std::span<float>(out)));
  });
}

}  // namespace gradcomm::fuzz
