#include "server/report_wire.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "core/shape.h"

namespace eplb::server {
namespace {

using google::protobuf::internal::WireFormatLite;
using WireType = WireFormatLite::WireType;

constexpr WireType kVarint = WireFormatLite::WIRETYPE_VARINT;
constexpr WireType kFixed64 = WireFormatLite::WIRETYPE_FIXED64;
constexpr WireType kDelimited = WireFormatLite::WIRETYPE_LENGTH_DELIMITED;

// LoadReport's fields and their wire types (planner.proto).
bool KnownReportField(uint32_t number, WireType type) {
  switch (number) {
    case 1:  // deployment
    case 8:  // layers
      return type == kDelimited;
    case 2: case 3: case 4: case 5: case 6: case 7: case 10:  // NOLINT(whitespace/newline)
      return type == kVarint;
    case 9:  // session
      return type == kFixed64;
    default:
      return false;
  }
}

class Scanner {
 public:
  explicit Scanner(google::protobuf::io::CodedInputStream* in) : in_(in) {}

  // Fields until the end of the current limit.
  absl::Status Fields(bool in_layer) {
    while (const uint32_t tag = in_->ReadTag()) {
      const uint32_t number = WireFormatLite::GetTagFieldNumber(tag);
      const WireType type = WireFormatLite::GetTagWireType(tag);
      if (type == WireFormatLite::WIRETYPE_START_GROUP ||
          type == WireFormatLite::WIRETYPE_END_GROUP) {
        return absl::InvalidArgumentError(absl::StrCat("field ", number, " is a group"));
      }
      if (!in_layer && number == 8 && type == kDelimited) {
        if (++layers_ > ShapeLimits::kMaxLayers) {
          return absl::InvalidArgumentError(
              absl::StrCat("it has more than ", ShapeLimits::kMaxLayers, " layers entries"));
        }
        uint32_t length = 0;
        if (!in_->ReadVarint32(&length) || length > INT32_MAX) break;
        const auto limit = in_->PushLimit(static_cast<int>(length));
        if (absl::Status status = Fields(/*in_layer=*/true); !status.ok()) return status;
        in_->PopLimit(limit);
        continue;
      }
      // LayerCounts.counts: packed, or one double at a time.
      const bool known = in_layer ? number == 1 && (type == kDelimited || type == kFixed64)
                                  : KnownReportField(number, type);
      if (!known && ++unknown_ > kMaxUnknownFields) {
        return absl::InvalidArgumentError(
            absl::StrCat("it has more than ", kMaxUnknownFields, " fields of unknown numbers"));
      }
      if (!WireFormatLite::SkipField(in_, tag)) break;
    }
    if (!in_->ConsumedEntireMessage()) {
      return absl::InvalidArgumentError("it is not a well-formed protobuf message");
    }
    return absl::OkStatus();
  }

 private:
  google::protobuf::io::CodedInputStream* const in_;
  int layers_ = 0;
  int unknown_ = 0;
};

}  // namespace

absl::Status CheckLoadReportWire(google::protobuf::io::ZeroCopyInputStream* input) {
  google::protobuf::io::CodedInputStream in(input);
  return Scanner(&in).Fields(/*in_layer=*/false);
}

}  // namespace eplb::server
