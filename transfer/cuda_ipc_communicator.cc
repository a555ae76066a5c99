#include "transfer/cuda_ipc_communicator.h"

#include <cuda.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "transfer/cuda_status.h"

namespace eplb::transfer {
namespace {

constexpr uint32_t kRegionPiece = 1, kRelayPiece = 2;

// What a rank publishes at join: its device and its ready event.
struct RankBlob {
  int32_t device = 0;
  int32_t transport = 0;
  cudaIpcEventHandle_t ready{};
};
static_assert(sizeof(RankBlob) <= ShmGroup::kBlobBytes);
static_assert(sizeof(cudaIpcMemHandle_t) <= ShmRegion::kHandleBytes);

ShmGroupLayout LayoutFor(int32_t size, const CudaIpcOptions& options) {
  ShmGroupLayout layout;
  layout.size = size;
  layout.ring_entries = options.ring_entries;
  layout.max_regions =
      options.transport == CudaIpcOptions::Transport::kIpc ? options.max_regions : 1;
  layout.gather_bytes = 1024;
  if (options.transport == CudaIpcOptions::Transport::kHostRelay) {
    layout.relay_pieces = options.relay_pieces;
    layout.relay_piece_bytes = options.relay_piece_bytes;
  }
  return layout;
}

absl::Status CheckOptions(const CudaIpcOptions& options) {
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("timeout must be positive");
  }
  if (options.transport == CudaIpcOptions::Transport::kHostRelay &&
      (options.relay_pieces < 1 || options.relay_pieces > options.ring_entries)) {
    return absl::InvalidArgumentError(
        absl::StrCat("relay_pieces = ", options.relay_pieces,
                     " is out of range [1, ring_entries = ", options.ring_entries, "]"));
  }
  return absl::OkStatus();
}

// Whether `event` completed; INTERNAL naming `what` for an error.
absl::StatusOr<bool> EventDone(cudaEvent_t event, absl::string_view what) {
  const cudaError_t e = cudaEventQuery(event);
  if (e == cudaSuccess) return true;
  if (e == cudaErrorNotReady) return false;
  return CudaError(absl::StrCat("cudaEventQuery(", what, ")"), e);
}

}  // namespace

absl::StatusOr<std::string> CudaIpcCommunicator::NewGroupId(int32_t size,
                                                            const CudaIpcOptions& options) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  return ShmGroup::Create(LayoutFor(size, options));
}

absl::StatusOr<std::unique_ptr<CudaIpcCommunicator>> CudaIpcCommunicator::Create(
    const std::string& id, int32_t rank, int32_t size, int device, const CudaIpcOptions& options) {
  if (absl::Status s = CheckOptions(options); !s.ok()) return s;
  if (const cudaError_t e = cudaSetDevice(device); e != cudaSuccess) {
    return CudaError(absl::StrCat("cudaSetDevice(", device, ")"), e);
  }
  cudaStream_t stream = nullptr;
  cudaEvent_t ready = nullptr;
  const bool own_stream = options.stream == nullptr;
  const auto cleanup = [&] {
    if (ready != nullptr) cudaEventDestroy(ready);
    if (own_stream && stream != nullptr) cudaStreamDestroy(stream);
  };
  RankBlob blob;
  blob.device = device;
  blob.transport = static_cast<int32_t>(options.transport);
  cudaError_t e = cudaSuccess;
  if (own_stream) {
    e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  } else {
    stream = options.stream;
  }
  if (e == cudaSuccess) {
    e = cudaEventCreateWithFlags(&ready, cudaEventDisableTiming | cudaEventInterprocess);
  }
  if (e == cudaSuccess) e = cudaEventRecord(ready, stream);
  if (e == cudaSuccess) e = cudaIpcGetEventHandle(&blob.ready, ready);
  if (e != cudaSuccess) {
    cleanup();
    return CudaError("creating the stream and the ready event", e);
  }
  absl::StatusOr<std::unique_ptr<ShmGroup>> group = ShmGroup::Join(
      id, rank, size, {reinterpret_cast<const uint8_t*>(&blob), sizeof(blob)}, options.timeout);
  if (!group.ok()) {
    cleanup();
    return group.status();
  }
  auto comm = std::unique_ptr<CudaIpcCommunicator>(
      new CudaIpcCommunicator(*std::move(group), device, options));
  comm->stream_ = stream;
  comm->own_stream_ = own_stream;
  comm->ready_ = ready;
  if (absl::Status s = comm->Setup(); !s.ok()) return s;
  return comm;
}

CudaIpcCommunicator::CudaIpcCommunicator(std::unique_ptr<ShmGroup> group, int device,
                                         CudaIpcOptions options)
    : group_(std::move(group)),
      device_(device),
      options_(options),
      peers_(group_->size()),
      consumed_(group_->size(), 0),
      received_transfers_(group_->size(), 0) {}

absl::Status CudaIpcCommunicator::Setup() {
  for (int32_t r = 0; r < size(); ++r) {
    RankBlob blob;
    const auto bytes = group_->blob(r);
    if (bytes.size() != sizeof(blob)) {
      return group_->Fail(absl::FailedPreconditionError(
          absl::StrCat("rank ", r, " published ", bytes.size(), " bytes, not a CUDA IPC rank")));
    }
    std::memcpy(&blob, bytes.data(), sizeof(blob));
    if (blob.transport != static_cast<int32_t>(options_.transport)) {
      return group_->Fail(absl::FailedPreconditionError(
          absl::StrCat("rank ", r, " uses transport ", blob.transport, ", rank ", rank(), " uses ",
                       static_cast<int32_t>(options_.transport))));
    }
  }
  if (options_.transport == CudaIpcOptions::Transport::kHostRelay) {
    const std::span<uint8_t> relay = group_->RelayMemory();
    if (const cudaError_t e =
            cudaHostRegister(relay.data(), relay.size(), cudaHostRegisterPortable);
        e != cudaSuccess) {
      return Fail(CudaError("cudaHostRegister(relay memory)", e));
    }
    relay_registered_ = true;
  }
  return absl::OkStatus();
}

CudaIpcCommunicator::~CudaIpcCommunicator() {
  cudaSetDevice(device_);
  if (stream_ != nullptr) cudaStreamSynchronize(stream_);
  CloseHandles();
  if (relay_registered_) cudaHostUnregister(group_->RelayMemory().data());
  for (cudaEvent_t e : event_pool_) cudaEventDestroy(e);
  if (ready_ != nullptr) cudaEventDestroy(ready_);
  if (own_stream_ && stream_ != nullptr) cudaStreamDestroy(stream_);
}

void CudaIpcCommunicator::CloseHandles() {
  for (PeerState& peer : peers_) {
    for (const auto& [index, region] : peer.opened) cudaIpcCloseMemHandle(region.base);
    peer.opened.clear();
    if (peer.ready != nullptr) cudaEventDestroy(peer.ready);
    peer.ready = nullptr;
  }
}

absl::Status CudaIpcCommunicator::Fail(absl::Status status) {
  if (failed_.ok()) {
    failed_ = group_->Fail(status);
    cudaStreamSynchronize(stream_);  // no copy of ours still reads a peer's memory
    CloseHandles();
  }
  return failed_;
}

const CudaIpcCommunicator::Region* CudaIpcCommunicator::FindRegion(uintptr_t begin,
                                                                   size_t bytes) const {
  const auto it = std::upper_bound(regions_.begin(), regions_.end(), begin,
                                   [](uintptr_t p, const Region& r) { return p < r.base; });
  if (it == regions_.begin() || begin + bytes > std::prev(it)->base + std::prev(it)->bytes) {
    return nullptr;
  }
  return &*std::prev(it);
}

absl::Status CudaIpcCommunicator::RegisterSendBuffers(std::span<const MemoryRange> ranges) {
  if (absl::Status s = CheckMemoryRanges(ranges); !s.ok()) return s;
  if (!failed_.ok()) return failed_;
  if (options_.transport != CudaIpcOptions::Transport::kIpc) return absl::OkStatus();
  cudaSetDevice(device_);
  for (size_t i = 0; i < ranges.size(); ++i) {
    const auto begin = reinterpret_cast<uintptr_t>(ranges[i].data);
    if (FindRegion(begin, ranges[i].bytes) != nullptr) continue;  // exported before
    const auto refuse = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat("RegisterSendBuffers on rank ", rank(),
                                                     ": range ", i, " (", ranges[i].bytes,
                                                     " bytes at ", absl::Hex(begin), ") ", why));
    };
    CUdeviceptr base = 0;
    size_t bytes = 0;
    if (cuMemGetAddressRange(&base, &bytes, static_cast<CUdeviceptr>(begin)) != CUDA_SUCCESS) {
      return refuse("is not device memory");
    }
    if (begin + ranges[i].bytes > base + bytes) return refuse("spans more than one allocation");
    cudaPointerAttributes attributes{};
    if (cudaPointerGetAttributes(&attributes, ranges[i].data) != cudaSuccess ||
        attributes.type != cudaMemoryTypeDevice || attributes.device != device_) {
      cudaGetLastError();
      return refuse(absl::StrCat("is not device memory of device ", device_));
    }
    ShmRegion region;
    cudaIpcMemHandle_t handle;
    if (const cudaError_t e = cudaIpcGetMemHandle(&handle, reinterpret_cast<void*>(base));
        e != cudaSuccess) {
      cudaGetLastError();
      return refuse(absl::StrCat("cannot be exported: CUDA error ", static_cast<int>(e), " (",
                                 cudaGetErrorString(e),
                                 "); CUDA IPC needs memory from cudaMalloc"));
    }
    std::memcpy(region.handle, &handle, sizeof(handle));
    region.base = base;
    region.bytes = bytes;
    absl::StatusOr<uint32_t> index = group_->AddRegion(region);
    if (!index.ok()) return index.status();
    const Region mine{static_cast<uintptr_t>(base), bytes, *index};
    regions_.insert(std::upper_bound(regions_.begin(), regions_.end(), mine.base,
                                     [](uintptr_t p, const Region& r) { return p < r.base; }),
                    mine);
  }
  return absl::OkStatus();
}

absl::StatusOr<const uint8_t*> CudaIpcCommunicator::PeerAddress(int32_t peer, uint32_t index,
                                                                uint64_t offset, uint64_t bytes) {
  OpenedRegion region;
  if (auto it = peers_[peer].opened.find(index); it != peers_[peer].opened.end()) {
    region = it->second;
  } else {
    absl::StatusOr<ShmRegion> published = group_->GetRegion(peer, index);
    if (!published.ok()) return published.status();
    region.bytes = published->bytes;
    if (peer == rank()) {
      region.base = reinterpret_cast<void*>(published->base);  // our own allocation
    } else {
      cudaIpcMemHandle_t handle;
      std::memcpy(&handle, published->handle, sizeof(handle));
      if (const cudaError_t e =
              cudaIpcOpenMemHandle(&region.base, handle, cudaIpcMemLazyEnablePeerAccess);
          e != cudaSuccess) {
        return CudaError(absl::StrCat("cudaIpcOpenMemHandle(rank ", peer, " region ", index, ")"),
                         e);
      }
      peers_[peer].opened.emplace(index, region);
    }
  }
  if (offset > region.bytes || bytes > region.bytes - offset) {
    return absl::InternalError(absl::StrCat("rank ", peer, " names bytes [", offset, ", ",
                                            offset + bytes, ") of its region ", index,
                                            ", which has ", region.bytes));
  }
  return static_cast<const uint8_t*>(region.base) + offset;
}

absl::StatusOr<bool> CudaIpcCommunicator::PeerReady(int32_t peer) {
  cudaEvent_t event = ready_;
  if (peer != rank()) {
    PeerState& state = peers_[peer];
    if (state.ready == nullptr) {
      RankBlob blob;
      std::memcpy(&blob, group_->blob(peer).data(), sizeof(blob));
      if (const cudaError_t e = cudaIpcOpenEventHandle(&state.ready, blob.ready);
          e != cudaSuccess) {
        state.ready = nullptr;
        return CudaError(absl::StrCat("cudaIpcOpenEventHandle(rank ", peer, ")"), e);
      }
    }
    event = state.ready;
  }
  return EventDone(event, absl::StrCat("ready event of rank ", peer));
}

absl::Status CudaIpcCommunicator::SendRecvGroup(std::span<const PeerTransfer> sends,
                                                std::span<const PeerTransfer> receives) {
  if (absl::Status s = CheckPeerTransfers(rank(), size(), sends, receives); !s.ok()) return s;
  if (!failed_.ok()) return failed_;
  if (absl::Status f = group_->failure(); !f.ok()) return Fail(f);
  cudaSetDevice(device_);
  const bool relay = options_.transport == CudaIpcOptions::Transport::kHostRelay;
  const uint64_t piece = relay ? options_.relay_piece_bytes : std::numeric_limits<uint64_t>::max();
  const int32_t n = size();

  // Outgoing pieces per peer (kIpc: one descriptor per transfer, naming the region).
  struct Out {
    ShmDescriptor d;
    const uint8_t* src = nullptr;
  };
  std::vector<std::deque<Out>> outgoing(n);
  std::vector<uint64_t> send_target(n, 0);
  for (size_t i = 0; i < sends.size(); ++i) {
    const PeerTransfer& t = sends[i];
    const auto* src = static_cast<const uint8_t*>(t.data);
    uint32_t region = 0;
    uint64_t offset = 0;
    if (!relay && t.bytes > 0) {
      const auto p = reinterpret_cast<uintptr_t>(t.data);
      const Region* found = FindRegion(p, t.bytes);
      if (found == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            "SendRecvGroup on rank ", rank(), ": send ", i, " reads ", t.bytes, " bytes at ",
            absl::Hex(p), ", outside every range given to RegisterSendBuffers"));
      }
      region = found->index;
      offset = p - found->base;
    }
    uint64_t done = 0;
    do {
      const uint64_t bytes = std::min<uint64_t>(piece, t.bytes - done);
      Out out;
      out.d = {t.bytes, done, bytes, offset + done, region, relay ? kRelayPiece : kRegionPiece};
      out.src = src + done;
      outgoing[t.peer].push_back(out);
      done += bytes;
    } while (done < t.bytes);
  }
  for (int32_t p = 0; p < n; ++p) send_target[p] = group_->posted_to(p) + outgoing[p].size();

  // Expected pieces per peer.
  struct In {
    uint8_t* dst = nullptr;
    uint64_t transfer_bytes = 0, piece_offset = 0, piece_bytes = 0;
    uint64_t transfer_number = 0;  // over the pair's life, for messages
  };
  std::vector<std::deque<In>> incoming(n);
  {
    std::vector<uint64_t> numbers = received_transfers_;
    for (const PeerTransfer& t : receives) {
      uint64_t done = 0;
      do {
        const uint64_t bytes = std::min<uint64_t>(piece, t.bytes - done);
        incoming[t.peer].push_back(
            {static_cast<uint8_t*>(t.data) + done, t.bytes, done, bytes, numbers[t.peer]});
        done += bytes;
      } while (done < t.bytes);
      numbers[t.peer]++;
    }
  }
  for (const PeerTransfer& t : receives) received_transfers_[t.peer]++;

  if (!relay) {
    if (const cudaError_t e = cudaEventRecord(ready_, stream_); e != cudaSuccess) {
      return Fail(CudaError("cudaEventRecord(ready)", e));
    }
  }
  struct Staged {  // relay: a piece copied into the relay memory, posted once `event` completed
    int32_t peer;
    ShmDescriptor d;
    cudaEvent_t event;
  };
  std::deque<Staged> staged;
  std::vector<uint64_t> staged_count(n, 0);
  struct Batch {  // copies of received pieces, completed once `event` completed
    cudaEvent_t event;
    std::vector<std::pair<int32_t, uint64_t>> completes;  // (peer, consumed count)
  };
  std::deque<Batch> batches;
  // An event from the pool (or a new one), recorded on the stream now.
  const auto record_event = [&]() -> absl::StatusOr<cudaEvent_t> {
    cudaEvent_t e = nullptr;
    if (!event_pool_.empty()) {
      e = event_pool_.back();
      event_pool_.pop_back();
    } else if (const cudaError_t r = cudaEventCreateWithFlags(&e, cudaEventDisableTiming);
               r != cudaSuccess) {
      return CudaError("cudaEventCreate", r);
    }
    if (const cudaError_t r = cudaEventRecord(e, stream_); r != cudaSuccess) {
      event_pool_.push_back(e);
      return CudaError("cudaEventRecord", r);
    }
    return e;
  };
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<size_t> sizes;

  // Whether anything with `p` is still to do: pieces to post or take, sends not completed.
  const auto pending = [&](int32_t p) {
    return !outgoing[p].empty() || !incoming[p].empty() || group_->completed_by(p) < send_target[p];
  };
  absl::Status error;
  const auto progress = [&]() -> bool {
    const auto fail = [&](absl::Status s) {
      error = std::move(s);
      return true;
    };
    // 1. Sends: post (kIpc) or copy into the relay and post once copied (kHostRelay).
    for (int32_t p = 0; p < n; ++p) {
      while (!outgoing[p].empty()) {
        Out& out = outgoing[p].front();
        if (!relay) {
          if (!group_->TryPost(p, out.d)) break;
        } else {
          const uint64_t seq = group_->posted_to(p) + staged_count[p];
          if (seq - group_->completed_by(p) >= static_cast<uint64_t>(options_.relay_pieces)) break;
          out.d.region = static_cast<uint32_t>(seq % options_.relay_pieces);
          uint8_t* slot = group_->RelayPiece(rank(), p, out.d.region);
          if (out.d.piece_bytes > 0) {
            if (const cudaError_t e =
                    cudaMemcpyAsync(slot, out.src, out.d.piece_bytes, cudaMemcpyDefault, stream_);
                e != cudaSuccess) {
              return fail(CudaError("cudaMemcpyAsync(to the relay)", e));
            }
          }
          absl::StatusOr<cudaEvent_t> event = record_event();
          if (!event.ok()) return fail(event.status());
          staged.push_back({p, out.d, *event});
          staged_count[p]++;
        }
        outgoing[p].pop_front();
      }
    }
    while (!staged.empty()) {
      absl::StatusOr<bool> done = EventDone(staged.front().event, "a relay copy");
      if (!done.ok()) return fail(done.status());
      if (!*done) break;
      // The ring has room: at most relay_pieces ≤ ring_entries pieces are unconsumed.
      if (!group_->TryPost(staged.front().peer, staged.front().d)) break;
      staged_count[staged.front().peer]--;
      event_pool_.push_back(staged.front().event);
      staged.pop_front();
    }
    // 2. Receives: take what peers posted, in order, and copy it on the stream.
    dsts.clear();
    srcs.clear();
    sizes.clear();
    Batch batch;
    for (int32_t p = 0; p < n; ++p) {
      if (incoming[p].empty()) continue;
      const uint64_t posted = group_->posted_from(p);
      if (posted == consumed_[p]) continue;
      if (!relay) {
        absl::StatusOr<bool> ready = PeerReady(p);
        if (!ready.ok()) return fail(ready.status());
        if (!*ready) continue;
      }
      while (!incoming[p].empty() && consumed_[p] < posted) {
        const ShmDescriptor d = group_->Peek(p, consumed_[p]);
        const In& in = incoming[p].front();
        if (d.kind != (relay ? kRelayPiece : kRegionPiece) ||
            d.transfer_bytes != in.transfer_bytes || d.piece_offset != in.piece_offset ||
            d.piece_bytes != in.piece_bytes) {
          return fail(absl::InternalError(absl::StrCat(
              "SendRecvGroup size mismatch on transfer #", in.transfer_number, " from rank ", p,
              " to rank ", rank(), ": rank ", p, " sends ", d.transfer_bytes, " bytes, rank ",
              rank(), " receives ", in.transfer_bytes, " bytes")));
        }
        if (d.piece_bytes > 0) {
          const uint8_t* src = nullptr;
          if (relay) {
            if (d.region >= static_cast<uint32_t>(options_.relay_pieces)) {
              return fail(
                  absl::InternalError(absl::StrCat("rank ", p, " names relay piece ", d.region)));
            }
            src = group_->RelayPiece(p, rank(), d.region);
          } else {
            absl::StatusOr<const uint8_t*> address =
                PeerAddress(p, d.region, d.src_offset, d.piece_bytes);
            if (!address.ok()) return fail(address.status());
            src = *address;
          }
          dsts.push_back(in.dst);
          srcs.push_back(src);
          sizes.push_back(d.piece_bytes);
        }
        consumed_[p]++;
        incoming[p].pop_front();
      }
      if (!relay) group_->Consume(p, consumed_[p]);  // relay entries are freed on completion
      batch.completes.emplace_back(p, consumed_[p]);
    }
    if (!batch.completes.empty()) {
      if (!sizes.empty()) {
#if CUDART_VERSION >= 13000
        cudaMemcpyAttributes attributes{};
        attributes.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
        attributes.flags = cudaMemcpyFlagPreferOverlapWithCompute;
        size_t attribute_index = 0;
        if (const cudaError_t e =
                cudaMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), sizes.size(),
                                     &attributes, &attribute_index, 1, stream_);
            e != cudaSuccess) {
          return fail(CudaError("cudaMemcpyBatchAsync", e));
        }
#else
        for (size_t i = 0; i < sizes.size(); ++i) {
          if (const cudaError_t e =
                  cudaMemcpyAsync(dsts[i], srcs[i], sizes[i], cudaMemcpyDefault, stream_);
              e != cudaSuccess) {
            return fail(CudaError("cudaMemcpyAsync", e));
          }
        }
#endif
      }
      absl::StatusOr<cudaEvent_t> event = record_event();
      if (!event.ok()) return fail(event.status());
      batch.event = *event;
      batches.push_back(std::move(batch));
    }
    while (!batches.empty()) {
      absl::StatusOr<bool> done = EventDone(batches.front().event, "received copies");
      if (!done.ok()) return fail(done.status());
      if (!*done) break;
      for (const auto& [p, count] : batches.front().completes) {
        if (relay) group_->Consume(p, count);
        group_->Complete(p, count);
      }
      event_pool_.push_back(batches.front().event);
      batches.pop_front();
    }
    // 3. Done when every piece went out and came back completed, and every receive is copied.
    if (!staged.empty() || !batches.empty()) return false;
    for (int32_t p = 0; p < n; ++p) {
      if (pending(p)) return false;
    }
    return true;
  };
  const auto waiting_for = [&] {
    std::vector<int32_t> out;
    for (int32_t p = 0; p < n; ++p) {
      if (pending(p)) out.push_back(p);
    }
    return out;
  };
  absl::Status status = group_->WaitUntil("SendRecvGroup", progress, waiting_for);
  if (status.ok()) status = error;
  if (!status.ok()) {
    for (const Staged& s : staged) event_pool_.push_back(s.event);
    for (const Batch& b : batches) event_pool_.push_back(b.event);
    return Fail(status);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<uint8_t>>> CudaIpcCommunicator::AllGather(
    std::span<const uint8_t> bytes) {
  if (!failed_.ok()) return failed_;
  absl::StatusOr<std::vector<std::vector<uint8_t>>> out = group_->AllGather(bytes);
  if (!out.ok() && out.status().code() != absl::StatusCode::kInvalidArgument) {
    return Fail(out.status());
  }
  return out;
}

absl::StatusOr<int64_t> CudaIpcCommunicator::AllReduceMin(int64_t value) {
  uint8_t bytes[sizeof(value)];
  std::memcpy(bytes, &value, sizeof(value));
  absl::StatusOr<std::vector<std::vector<uint8_t>>> all = AllGather(bytes);
  if (!all.ok()) return all.status();
  int64_t min = value;
  for (const auto& contribution : *all) {
    int64_t v = 0;
    std::memcpy(&v, contribution.data(), sizeof(v));
    min = std::min(min, v);
  }
  return min;
}

}  // namespace eplb::transfer
