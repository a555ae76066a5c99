// What an encoded LoadReport may hold before it is parsed, so that parsing it takes no more memory
// than about twice its size: at most ShapeLimits::kMaxLayers `layers` entries (an empty entry is
// two bytes on the wire and an object of tens of bytes parsed), at most kMaxUnknownFields fields
// the schema does not know (kept by the parser, each an object), no groups.
#ifndef EPLB_SERVER_REPORT_WIRE_H_
#define EPLB_SERVER_REPORT_WIRE_H_

#include <google/protobuf/io/zero_copy_stream.h>

#include "absl/status/status.h"

namespace eplb::server {

inline constexpr int kMaxUnknownFields = 64;

// OK, or INVALID_ARGUMENT saying what is wrong: the bytes do not parse, or they break a bound
// above. Reads `input` to its end.
absl::Status CheckLoadReportWire(google::protobuf::io::ZeroCopyInputStream* input);

}  // namespace eplb::server

#endif  // EPLB_SERVER_REPORT_WIRE_H_
