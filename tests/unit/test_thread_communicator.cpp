// Every collective of ThreadCommunicator on 1 to 8 ranks (odd counts among them), sizes
// 0, 1, odd and large, every dtype: results checked against values computed here, in
// rank order, and bitwise identical on every rank. Then misuse: disagreeing calls, a rank
// that never calls (timeout), abort, and splits.
#include <gtest/gtest.h>

#include <atomic>
#include <bit>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "core/float16.h"
#include "gradcomm/thread_communicator.h"
#include "uneven_parts.h"

namespace gradcomm {
namespace {

constexpr DType kAllDtypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16,
                                DType::kInt32,   DType::kUInt32,  DType::kUInt8};
constexpr ReduceOp kAllOps[] = {ReduceOp::kSum, ReduceOp::kMax, ReduceOp::kMin};
const std::vector<std::size_t> kSizes = {0, 1, 7, 97, 1000};
constexpr std::size_t kLarge = 300007;

using Bytes = std::vector<std::byte>;

// Rank r's element i as raw bits of `dtype`: inexact floats (so the order of a sum shows
// in the last bits), integers that overflow when summed.
std::uint32_t raw_value(DType dtype, int rank, std::size_t i) {
  const float x = std::sin(static_cast<float>(i) * 0.37f + static_cast<float>(rank)) *
                  static_cast<float>(rank + 1);
  const std::uint32_t bits =
      static_cast<std::uint32_t>(i) * 2654435761u + static_cast<std::uint32_t>(rank) * 40503u;
  switch (dtype) {
    case DType::kFloat32:
      return std::bit_cast<std::uint32_t>(x);
    case DType::kFloat16:
      return float_to_half(x);
    case DType::kBFloat16:
      return float_to_bfloat16(x);
    case DType::kInt32:
    case DType::kUInt32:
      return bits;
    case DType::kUInt8:
      return bits >> 24;
  }
  return 0;
}

void store(DType dtype, Bytes& buffer, std::size_t i, std::uint32_t v) {
  std::memcpy(  // little-endian: the low bytes of v
      buffer.data() + i * dtype_size(dtype), &v, dtype_size(dtype));
}

Bytes values(DType dtype, int rank, std::size_t n) {
  Bytes b(n * dtype_size(dtype));
  for (std::size_t i = 0; i < n; ++i) store(dtype, b, i, raw_value(dtype, rank, i));
  return b;
}

TensorView view(Bytes& b, DType dtype) {
  return TensorView(b.data(), b.size() / dtype_size(dtype), dtype);
}

// The reference reduction step, written out per dtype (16-bit values rounded back after
// every step, integer sums wrapping).
float f32(std::uint32_t v) { return std::bit_cast<float>(v); }
float pick(float a, float b, ReduceOp op) {
  return op == ReduceOp::kSum ? a + b : op == ReduceOp::kMax ? std::max(a, b) : std::min(a, b);
}
std::uint32_t combine(DType dtype, ReduceOp op, std::uint32_t a, std::uint32_t b) {
  switch (dtype) {
    case DType::kFloat32:
      return std::bit_cast<std::uint32_t>(pick(f32(a), f32(b), op));
    case DType::kFloat16:
      return float_to_half(pick(half_to_float(static_cast<std::uint16_t>(a)),
                                half_to_float(static_cast<std::uint16_t>(b)), op));
    case DType::kBFloat16:
      return float_to_bfloat16(pick(bfloat16_to_float(static_cast<std::uint16_t>(a)),
                                    bfloat16_to_float(static_cast<std::uint16_t>(b)), op));
    case DType::kInt32: {
      const auto x = static_cast<std::int32_t>(a), y = static_cast<std::int32_t>(b);
      return op == ReduceOp::kSum ? a + b
                                  : static_cast<std::uint32_t>(
                                        op == ReduceOp::kMax ? std::max(x, y) : std::min(x, y));
    }
    case DType::kUInt32:
      return op == ReduceOp::kSum ? a + b : op == ReduceOp::kMax ? std::max(a, b) : std::min(a, b);
    case DType::kUInt8:
      return op == ReduceOp::kSum   ? (a + b) & 0xffu
             : op == ReduceOp::kMax ? std::max(a, b)
                                    : std::min(a, b);
  }
  return 0;
}

Bytes expected_reduction(DType dtype, ReduceOp op, int p, std::size_t n) {
  Bytes out(n * dtype_size(dtype));
  for (std::size_t i = 0; i < n; ++i) {
    std::uint32_t acc = raw_value(dtype, 0, i);
    for (int r = 1; r < p; ++r) acc = combine(dtype, op, acc, raw_value(dtype, r, i));
    store(dtype, out, i, acc);
  }
  return out;
}

// Runs body on p thread ranks; a failed assertion in a rank is reported with its rank.
void on_ranks(int p, const std::function<void(ThreadCommunicator&)>& body,
              ThreadCommunicatorOptions options = {}) {
  ThreadCommunicator::run(
      p,
      [&](ThreadCommunicator& comm) {
        SCOPED_TRACE("rank " + std::to_string(comm.rank()) + " of " + std::to_string(p));
        body(comm);
      },
      options);
}

TEST(ThreadCommunicator, RankSizeAndDescribe) {
  for (int p = 1; p <= 8; ++p) {
    auto ranks = ThreadCommunicator::create(p);
    ASSERT_EQ(ranks.size(), static_cast<std::size_t>(p));
    for (int r = 0; r < p; ++r) {
      EXPECT_EQ(ranks[r]->rank(), r);
      EXPECT_EQ(ranks[r]->size(), p);
      EXPECT_EQ(ranks[r]->device(), Device::kCpu);
      EXPECT_EQ(ranks[r]->stream(), nullptr);
      EXPECT_NE(ranks[r]->describe().find("rank " + std::to_string(r) + " of " + std::to_string(p)),
                std::string::npos);
    }
  }
  EXPECT_THROW(ThreadCommunicator::create(0), Error);
}

TEST(ThreadCommunicator, AllreduceEveryDtypeAndOpInRankOrder) {
  for (int p = 1; p <= 8; ++p) {
    for (DType dtype : kAllDtypes) {
      for (ReduceOp op : kAllOps) {
        for (std::size_t n : kSizes) {
          const Bytes expected = expected_reduction(dtype, op, p, n);
          std::vector<Bytes> out(static_cast<std::size_t>(p)),
              in_place(static_cast<std::size_t>(p));
          on_ranks(p, [&](ThreadCommunicator& comm) {
            Bytes send = values(dtype, comm.rank(), n);
            Bytes& recv = out[comm.rank()];
            recv.assign(send.size(), std::byte{0x5a});
            comm.allreduce(view(send, dtype), view(recv, dtype), op)->wait();
            Bytes& same = in_place[comm.rank()];
            same = values(dtype, comm.rank(), n);
            comm.allreduce(view(same, dtype), view(same, dtype), op)->wait();
          });
          for (int r = 0; r < p; ++r) {
            ASSERT_EQ(out[r], expected) << "p=" << p << " " << dtype_name(dtype) << " "
                                        << reduce_op_name(op) << " n=" << n << " rank " << r;
            ASSERT_EQ(in_place[r], expected)
                << "in place, p=" << p << " " << dtype_name(dtype) << " n=" << n;
          }
        }
      }
    }
  }
}

TEST(ThreadCommunicator, AllreduceLargeBuffers) {
  for (int p : {3, 8}) {
    for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16, DType::kInt32}) {
      const Bytes expected = expected_reduction(dtype, ReduceOp::kSum, p, kLarge);
      std::vector<Bytes> out(static_cast<std::size_t>(p));
      on_ranks(p, [&](ThreadCommunicator& comm) {
        out[comm.rank()] = values(dtype, comm.rank(), kLarge);
        comm.allreduce(view(out[comm.rank()], dtype), view(out[comm.rank()], dtype), ReduceOp::kSum)
            ->wait();
      });
      for (int r = 0; r < p; ++r)
        ASSERT_TRUE(out[r] == expected) << dtype_name(dtype) << " p=" << p << " rank " << r;
    }
  }
}

TEST(ThreadCommunicator, AllgatherAndAllgathervEveryDtype) {
  for (int p = 1; p <= 8; ++p) {
    for (DType dtype : kAllDtypes) {
      for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{97}, kLarge}) {
        if (n == kLarge && p != 5) continue;
        std::vector<Bytes> out(static_cast<std::size_t>(p));
        on_ranks(p, [&](ThreadCommunicator& comm) {
          Bytes send = values(dtype, comm.rank(), n);
          out[comm.rank()].assign(send.size() * p, std::byte{0});
          comm.allgather(view(send, dtype), view(out[comm.rank()], dtype))->wait();
        });
        for (int r = 0; r < p; ++r) {
          for (int s = 0; s < p; ++s) {
            ASSERT_TRUE(std::equal(out[r].begin() + s * n * dtype_size(dtype),
                                   out[r].begin() + (s + 1) * n * dtype_size(dtype),
                                   values(dtype, s, n).begin()))
                << dtype_name(dtype) << " p=" << p << " n=" << n << " rank " << r
                << " part of rank " << s;
          }
        }
      }
      // allgatherv: rank r sends (3r + 1) % 5 elements, so some send none.
      std::vector<std::size_t> counts(static_cast<std::size_t>(p));
      for (int r = 0; r < p; ++r) counts[r] = static_cast<std::size_t>((3 * r + 1) % 5);
      const std::size_t total = std::accumulate(counts.begin(), counts.end(), std::size_t{0});
      std::vector<Bytes> out(static_cast<std::size_t>(p));
      on_ranks(p, [&](ThreadCommunicator& comm) {
        Bytes send = values(dtype, comm.rank(), counts[comm.rank()]);
        out[comm.rank()].assign(total * dtype_size(dtype), std::byte{0});
        comm.allgatherv(view(send, dtype), view(out[comm.rank()], dtype), counts)->wait();
      });
      Bytes expected;
      for (int s = 0; s < p; ++s) {
        const Bytes part = values(dtype, s, counts[s]);
        expected.insert(expected.end(), part.begin(), part.end());
      }
      for (int r = 0; r < p; ++r)
        ASSERT_EQ(out[r], expected) << "allgatherv " << dtype_name(dtype) << " p=" << p;
    }
  }
}

TEST(ThreadCommunicator, AlltoallAndUnevenAlltoallv) {
  for (int p = 1; p <= 8; ++p) {
    for (std::size_t chunk : {std::size_t{0}, std::size_t{1}, std::size_t{13}, std::size_t{4099}}) {
      std::vector<std::vector<std::uint32_t>> out(static_cast<std::size_t>(p));
      on_ranks(p, [&](ThreadCommunicator& comm) {
        std::vector<std::uint32_t> send(chunk * p);
        for (int d = 0; d < p; ++d)
          for (std::size_t i = 0; i < chunk; ++i)
            send[d * chunk + i] = static_cast<std::uint32_t>(comm.rank() * 100000 + d * 10000 + i);
        out[comm.rank()].assign(chunk * p, 0xffffffffu);
        comm.alltoall(TensorView::of(std::span<std::uint32_t>(send)),
                      TensorView::of(std::span<std::uint32_t>(out[comm.rank()])))
            ->wait();
      });
      for (int r = 0; r < p; ++r)
        for (int s = 0; s < p; ++s)
          for (std::size_t i = 0; i < chunk; ++i)
            ASSERT_EQ(out[r][s * chunk + i], static_cast<std::uint32_t>(s * 100000 + r * 10000 + i))
                << "p=" << p;
    }
    // Uneven parts, some empty (tests/uneven_parts.h).
    std::vector<std::vector<std::int32_t>> got(static_cast<std::size_t>(p));
    on_ranks(p, [&](ThreadCommunicator& comm) {
      testing::UnevenParts parts(comm.rank(), p);
      std::vector<std::int32_t>& recv = got[comm.rank()];
      recv.assign(parts.received(), -1);
      comm.reset_traffic();
      comm.alltoallv(TensorView::of(std::span<std::int32_t>(parts.send)), parts.send_counts,
                     TensorView::of(std::span<std::int32_t>(recv)), parts.recv_counts)
          ->wait();
      EXPECT_EQ(recv, parts.expected) << "p=" << p;
      EXPECT_EQ(comm.traffic().bytes_sent, parts.bytes_to_others);
    });
  }
}

TEST(ThreadCommunicator, BroadcastFromEveryRoot) {
  for (int p = 1; p <= 8; ++p) {
    for (DType dtype : kAllDtypes) {
      for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{37}, kLarge}) {
        if (n == kLarge && dtype != DType::kFloat32) continue;
        for (int root = 0; root < p; ++root) {
          std::vector<Bytes> out(static_cast<std::size_t>(p));
          on_ranks(p, [&](ThreadCommunicator& comm) {
            out[comm.rank()] = comm.rank() == root ? values(dtype, root, n)
                                                   : Bytes(n * dtype_size(dtype), std::byte{0});
            comm.broadcast(view(out[comm.rank()], dtype), root)->wait();
          });
          for (int r = 0; r < p; ++r)
            ASSERT_EQ(out[r], values(dtype, root, n)) << "p=" << p << " root " << root;
        }
      }
    }
  }
}

// A collective completes only when every rank has called it; until then the callers'
// calls have returned and test() says false.
TEST(ThreadCommunicator, CollectivesAreNonBlocking) {
  std::atomic<bool> rank0_tested{false};
  on_ranks(3, [&](ThreadCommunicator& comm) {
    std::vector<float> a(1000, 1.0f + comm.rank()), b(10, 2.0f);
    if (comm.rank() == 2) {
      while (!rank0_tested.load()) std::this_thread::yield();
    }
    WorkHandle wa = comm.allreduce(TensorView::of(std::span<float>(a)),
                                   TensorView::of(std::span<float>(a)), ReduceOp::kSum);
    WorkHandle wb = comm.barrier();
    WorkHandle wc = comm.allreduce(TensorView::of(std::span<float>(b)),
                                   TensorView::of(std::span<float>(b)), ReduceOp::kMax);
    if (comm.rank() == 0) {
      EXPECT_FALSE(wa->test());  // rank 2 has not called it
      EXPECT_FALSE(wb->test());
      rank0_tested.store(true);
    }
    wc->wait();  // waited out of order
    wb->wait();
    while (!wa->test()) {
    }
    EXPECT_EQ(a[999], 6.0f);
    EXPECT_EQ(b[0], 2.0f);
    EXPECT_TRUE(wa->test());  // stays complete
  });
}

TEST(ThreadCommunicator, ManyCollectivesInFlightAndDroppedHandles) {
  on_ranks(5, [&](ThreadCommunicator& comm) {
    std::vector<std::vector<float>> bufs(40,
                                         std::vector<float>(33, static_cast<float>(comm.rank())));
    std::vector<WorkHandle> works;
    for (auto& b : bufs)
      works.push_back(comm.allreduce(TensorView::of(std::span<float>(b)),
                                     TensorView::of(std::span<float>(b)), ReduceOp::kSum));
    for (std::size_t i = works.size(); i-- > 0;) works[i]->wait();
    for (auto& b : bufs) ASSERT_EQ(b[32], 10.0f);
    // A handle dropped without wait() completes before the buffer is given back.
    std::vector<float> dropped(100, 1.0f);
    comm.allreduce(TensorView::of(std::span<float>(dropped)),
                   TensorView::of(std::span<float>(dropped)), ReduceOp::kSum);
    EXPECT_EQ(dropped[99], 5.0f);
  });
}

TEST(ThreadCommunicator, TrafficFollowsTheAlgorithmModel) {
  on_ranks(4, [&](ThreadCommunicator& comm) {
    std::vector<float> data(1000), all(4000);
    comm.reset_traffic();
    comm.allreduce(TensorView::of(std::span<float>(data)), TensorView::of(std::span<float>(data)),
                   ReduceOp::kSum)
        ->wait();
    EXPECT_EQ(comm.traffic().bytes_sent, allreduce_wire_bytes(4000, 4));
    comm.allgather(TensorView::of(std::span<float>(data)), TensorView::of(std::span<float>(all)))
        ->wait();
    EXPECT_EQ(comm.traffic().bytes_sent,
              allreduce_wire_bytes(4000, 4) + allgather_wire_bytes(4000, 4));
    comm.broadcast(TensorView::of(std::span<float>(data)), 1)->wait();
    EXPECT_EQ(comm.traffic().collectives, comm.rank() == 1 ? 3u : 2u);
  });
}

TEST(ThreadCommunicator, LocalErrorsAreCaughtOnTheCallingRank) {
  auto ranks = ThreadCommunicator::create(2);
  ThreadCommunicator& comm = *ranks[0];
  std::vector<float> a(10), b(11);
  EXPECT_THROW(comm.allreduce(TensorView::of(std::span<float>(a)),
                              TensorView::of(std::span<float>(b)), ReduceOp::kSum),
               Error);
  EXPECT_THROW(comm.broadcast(TensorView::of(std::span<float>(a)), 2), Error);
  EXPECT_THROW(
      comm.alltoall(TensorView::of(std::span<float>(b)), TensorView::of(std::span<float>(b))),
      Error);
  EXPECT_THROW(comm.split(-2, 0), Error);
  float device_value = 0;
  EXPECT_THROW(
      comm.allreduce(TensorView(&device_value, 1, DType::kFloat32, Device::kCuda),
                     TensorView(&device_value, 1, DType::kFloat32, Device::kCuda), ReduceOp::kSum),
      Error);
}

// What MpiCommunicatorOptions::verify_sizes costs a collective is free here: ranks that
// disagree get kSizeMismatch on every rank, naming both, and the group goes on working.
TEST(ThreadCommunicator, DisagreeingCallsFailOnEveryRankNamingThem) {
  std::vector<std::string> messages(3);
  on_ranks(3, [&](ThreadCommunicator& comm) {
    std::vector<float> x(comm.rank() == 2 ? 11 : 10, 1.0f);
    try {
      comm.allreduce(TensorView::of(std::span<float>(x)), TensorView::of(std::span<float>(x)),
                     ReduceOp::kSum)
          ->wait();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kSizeMismatch);
      messages[comm.rank()] = e.message();
    }
    std::vector<float> root_differs(4, 1.0f);
    EXPECT_THROW(
        comm.broadcast(TensorView::of(std::span<float>(root_differs)), comm.rank() == 0 ? 1 : 0)
            ->wait(),
        Error);
    // Another collective on one rank than on the others.
    try {
      if (comm.rank() == 1) {
        comm.barrier()->wait();
      } else {
        comm.allreduce(TensorView::of(std::span<float>(root_differs)),
                       TensorView::of(std::span<float>(root_differs)), ReduceOp::kSum)
            ->wait();
      }
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(e.message().find("same collectives in the same order"), std::string::npos)
          << e.what();
    }
    std::vector<float> ok(4, 1.0f);
    comm.allreduce(TensorView::of(std::span<float>(ok)), TensorView::of(std::span<float>(ok)),
                   ReduceOp::kSum)
        ->wait();
    EXPECT_EQ(ok[0], 3.0f);
  });
  for (int r = 0; r < 3; ++r) {
    EXPECT_NE(messages[r].find(
                  "rank 0 passes float32[10] on cpu sum, rank 2 passes float32[11] on cpu sum"),
              std::string::npos)
        << messages[r];
    EXPECT_NE(messages[r].find("on rank " + std::to_string(r)), std::string::npos) << messages[r];
  }
}

TEST(ThreadCommunicator, AlltoallvCountsThatDisagreeNameTheRanks) {
  on_ranks(2, [&](ThreadCommunicator& comm) {
    // Rank 0 sends rank 1 two elements; rank 1 expects three.
    const std::vector<std::size_t> send_counts =
        comm.rank() == 0 ? std::vector<std::size_t>{1, 2} : std::vector<std::size_t>{2, 1};
    const std::vector<std::size_t> recv_counts =
        comm.rank() == 0 ? std::vector<std::size_t>{1, 2} : std::vector<std::size_t>{3, 1};
    std::vector<float> send(3), recv(4);
    try {
      comm.alltoallv(TensorView::of(std::span<float>(send)), send_counts,
                     TensorView::of(std::span<float>(recv).first(recv_counts[0] + recv_counts[1])),
                     recv_counts)
          ->wait();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kSizeMismatch);
      EXPECT_NE(e.message().find("rank 0 sends 2 float32 elements to rank 1, which expects 3"),
                std::string::npos)
          << e.what();
    }
  });
}

// A rank that never calls: the others' wait gives up after the timeout, naming it.
TEST(ThreadCommunicator, TimeoutNamesTheRanksThatDidNotCall) {
  const auto start = std::chrono::steady_clock::now();
  std::vector<std::string> messages(3);
  on_ranks(3,
           [&](ThreadCommunicator& comm) {
             std::vector<float> x(5, 1.0f);
             comm.allreduce(TensorView::of(std::span<float>(x)),
                            TensorView::of(std::span<float>(x)), ReduceOp::kSum)
                 ->wait();
             if (comm.rank() == 2) return;  // stops calling collectives
             try {
               comm.allreduce(TensorView::of(std::span<float>(x)),
                              TensorView::of(std::span<float>(x)), ReduceOp::kSum)
                   ->wait();
               ADD_FAILURE() << "no timeout";
             } catch (const Error& e) {
               EXPECT_EQ(e.code(), ErrorCode::kCommunication);
               messages[comm.rank()] = e.message();
             }
           },
           {.collective_timeout = std::chrono::milliseconds(200)});
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  for (int r = 0; r < 2; ++r) {
    EXPECT_NE(messages[r].find("allreduce of 5 elements on rank " + std::to_string(r) +
                               " did not complete within"),
              std::string::npos)
        << messages[r];
    EXPECT_NE(messages[r].find("rank(s) 2 have not called it (it is collective #1"),
              std::string::npos)
        << messages[r];
    EXPECT_NE(messages[r].find("rank 2 has called 1"), std::string::npos) << messages[r];
  }
}

TEST(ThreadCommunicator, AbortEndsPendingAndLaterCollectivesOnEveryRank) {
  std::atomic<int> waiting{0};
  std::vector<std::string> messages(4);
  on_ranks(4, [&](ThreadCommunicator& comm) {
    std::vector<float> x(5, 1.0f);
    if (comm.rank() == 3) {
      while (waiting.load() < 3) std::this_thread::yield();
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let them block in wait()
      comm.abort("a test gives up");
      EXPECT_THROW(comm.barrier(), Error);
      return;
    }
    WorkHandle w = comm.allreduce(TensorView::of(std::span<float>(x)),
                                  TensorView::of(std::span<float>(x)), ReduceOp::kSum);
    waiting.fetch_add(1);
    try {
      w->wait();
      ADD_FAILURE() << "no error after the abort";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kCommunication);
      messages[comm.rank()] = e.message();
    }
    EXPECT_THROW(comm.barrier(), Error);
  });
  for (int r = 0; r < 3; ++r)
    EXPECT_NE(messages[r].find("rank 3 aborted: a test gives up"), std::string::npos)
        << messages[r];
}

// ThreadCommunicator::run: a rank that throws ends the others (they would wait for it
// forever otherwise) and its exception comes out of run().
TEST(ThreadCommunicator, RunRethrowsTheFirstFailureAndEndsTheOthers) {
  try {
    ThreadCommunicator::run(4, [](ThreadCommunicator& comm) {
      std::vector<float> x(5, 1.0f);
      if (comm.rank() == 1) GRADCOMM_THROW(ErrorCode::kInvalidArgument, "rank 1 fails on purpose");
      comm.allreduce(TensorView::of(std::span<float>(x)), TensorView::of(std::span<float>(x)),
                     ReduceOp::kSum)
          ->wait();
    });
    FAIL() << "run did not rethrow";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    EXPECT_EQ(e.message(), "rank 1 fails on purpose");
  }
}

TEST(ThreadCommunicator, SplitByColorKeyAndHost) {
  // 6 ranks on 3 emulated hosts of 2.
  std::vector<int> shared_rank(6), shared_size(6), split_rank(6, -9), split_size(6), cross_rank(6),
      cross_size(6);
  std::vector<float> shared_sum(6), split_sum(6), cross_sum(6);
  on_ranks(6,
           [&](ThreadCommunicator& comm) {
             const int me = comm.rank();
             std::unique_ptr<Communicator> host = comm.split_shared();
             shared_rank[me] = host->rank();
             shared_size[me] = host->size();
             float x = static_cast<float>(me);
             host->allreduce(TensorView(&x, 1, DType::kFloat32),
                             TensorView(&shared_sum[me], 1, DType::kFloat32), ReduceOp::kSum)
                 ->wait();
             // Colors 0, 1, 2 by rank % 3, ranked by descending rank; rank 5 joins none.
             std::unique_ptr<Communicator> part =
                 comm.split(me == 5 ? Communicator::kNoColor : me % 3, -me);
             if (me == 5) {
               EXPECT_EQ(part, nullptr);
             } else {
               split_rank[me] = part->rank();
               split_size[me] = part->size();
               part->allreduce(TensorView(&x, 1, DType::kFloat32),
                               TensorView(&split_sum[me], 1, DType::kFloat32), ReduceOp::kSum)
                   ->wait();
             }
             // The same local rank across hosts, then the hosts of that (one rank each).
             std::unique_ptr<Communicator> cross = comm.split(host->rank(), me);
             cross_rank[me] = cross->rank();
             cross_size[me] = cross->size();
             cross
                 ->allreduce(TensorView(&x, 1, DType::kFloat32),
                             TensorView(&cross_sum[me], 1, DType::kFloat32), ReduceOp::kSum)
                 ->wait();
             EXPECT_EQ(cross->split_shared()->size(), 1);
           },
           {.ranks_per_host = 2});
  for (int r = 0; r < 6; ++r) {
    EXPECT_EQ(shared_size[r], 2);
    EXPECT_EQ(shared_rank[r], r % 2);
    EXPECT_EQ(shared_sum[r], static_cast<float>(r / 2 * 4 + 1));  // 0+1, 2+3, 4+5
    EXPECT_EQ(cross_size[r], 3);
    EXPECT_EQ(cross_rank[r], r / 2);
    EXPECT_EQ(cross_sum[r], r % 2 == 0 ? 6.0f : 9.0f);
  }
  // Colors: {0, 3}, {1, 4}, {2}; descending rank order.
  EXPECT_EQ(split_size[0], 2);
  EXPECT_EQ(split_rank[3], 0);
  EXPECT_EQ(split_rank[0], 1);
  EXPECT_EQ(split_rank[4], 0);
  EXPECT_EQ(split_rank[1], 1);
  EXPECT_EQ(split_size[2], 1);
  EXPECT_EQ(split_sum[0], 3.0f);
  EXPECT_EQ(split_sum[4], 5.0f);
  EXPECT_EQ(split_sum[2], 2.0f);
  EXPECT_EQ(split_rank[5], -9);
}

TEST(ThreadCommunicator, AbortOfAParentEndsItsSplits) {
  std::atomic<int> split_done{0};
  on_ranks(4, [&](ThreadCommunicator& comm) {
    std::unique_ptr<Communicator> half = comm.split(comm.rank() / 2, 0);
    split_done.fetch_add(1);
    if (comm.rank() == 0) {
      while (split_done.load() < 4) std::this_thread::yield();
      comm.abort("parent aborted");
      return;
    }
    try {
      half->barrier()->wait();
      if (comm.rank() == 1) ADD_FAILURE() << "rank 1's half waits for rank 0, which aborted";
      half->barrier()->wait();
      half->barrier()->wait();
    } catch (const Error& e) {
      EXPECT_NE(e.message().find("rank 0 aborted: parent aborted"), std::string::npos) << e.what();
    }
  });
}

#if !defined(GRADCOMM_HAVE_CUDA)
TEST(ThreadCommunicator, CudaBuffersNeedACudaBuild) {
  EXPECT_THROW(ThreadCommunicator::create(2, {.device = Device::kCuda}), Error);
}
#endif

}  // namespace
}  // namespace gradcomm
