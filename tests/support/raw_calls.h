// Calls by method path with raw message bytes (grpc::GenericStub), for tests and fuzz targets that
// send what a typed stub cannot: any bytes to any method. No gtest: fuzz targets use it too.
#ifndef EPLB_TESTS_SUPPORT_RAW_CALLS_H_
#define EPLB_TESTS_SUPPORT_RAW_CALLS_H_

#include <grpcpp/generic/generic_stub.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace eplb::testing {

inline std::chrono::system_clock::time_point DeadlineIn(absl::Duration timeout) {
  return std::chrono::system_clock::now() +
         std::chrono::microseconds(absl::ToInt64Microseconds(timeout));
}

inline grpc::ByteBuffer ToByteBuffer(absl::string_view bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

// A unary call of `method` ("/package.Service/Method"); blocks until it ends.
inline grpc::Status RawUnaryCall(grpc::GenericStub& stub, const std::string& method,
                                 absl::string_view request,
                                 absl::Duration timeout = absl::Seconds(30)) {
  grpc::ClientContext context;
  context.set_deadline(DeadlineIn(timeout));
  const grpc::ByteBuffer outgoing = ToByteBuffer(request);
  grpc::ByteBuffer response;
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&context, method, grpc::StubOptions(), &outgoing, &response, [&](grpc::Status s) {
    status = std::move(s);
    done.Notify();
  });
  done.WaitForNotification();
  return status;
}

// A streaming call of `method`, driven one operation at a time on its own completion queue. Each
// operation returns false once the stream is over (Finish() then says why). Destroying it
// cancels the call if it was not finished.
class RawStream {
 public:
  RawStream(grpc::GenericStub& stub, const std::string& method,
            absl::Duration timeout = absl::Seconds(30)) {
    context_.set_deadline(DeadlineIn(timeout));
    call_ = stub.PrepareCall(&context_, method, &queue_);
    call_->StartCall(nullptr);
    started_ = Step();
  }
  ~RawStream() {
    if (!finished_) {
      context_.TryCancel();
      Finish().IgnoreError();
    }
    queue_.Shutdown();
    void* tag = nullptr;
    bool ok = false;
    while (queue_.Next(&tag, &ok)) {
    }
  }
  RawStream(const RawStream&) = delete;
  RawStream& operator=(const RawStream&) = delete;

  bool started() const { return started_; }
  bool Write(absl::string_view bytes) { return Write(ToByteBuffer(bytes)); }
  // Without a copy: a buffer over a static slice can be written on many streams.
  bool Write(const grpc::ByteBuffer& bytes) {
    call_->Write(bytes, nullptr);
    return Step();
  }
  bool WritesDone() {
    call_->WritesDone(nullptr);
    return Step();
  }
  // The next message's bytes, or nothing once the stream is over.
  std::optional<std::string> Read() {
    grpc::ByteBuffer incoming;
    call_->Read(&incoming, nullptr);
    if (!Step()) return std::nullopt;
    std::vector<grpc::Slice> slices;
    if (!incoming.Dump(&slices).ok()) return std::nullopt;
    std::string bytes;
    for (const grpc::Slice& piece : slices) {
      bytes.append(reinterpret_cast<const char*>(piece.begin()), piece.size());
    }
    return bytes;
  }
  // The call's status. Call once.
  grpc::Status Finish() {
    grpc::Status status;
    call_->Finish(&status, nullptr);
    Step();
    finished_ = true;
    return status;
  }

 private:
  bool Step() {
    void* tag = nullptr;
    bool ok = false;
    return queue_.Next(&tag, &ok) && ok;
  }

  grpc::CompletionQueue queue_;
  grpc::ClientContext context_;
  std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call_;
  bool started_ = false;
  bool finished_ = false;
};

}  // namespace eplb::testing

#endif  // EPLB_TESTS_SUPPORT_RAW_CALLS_H_
