// libFuzzer target: the check a ReportLoad message passes before it is parsed
// (server/report_wire.h). Whatever the input:
// - a message protobuf parses is refused only for a bound (too many layers entries, too many
//   unknown fields, a group), never as not well-formed;
// - a message the check passes and protobuf parses takes, parsed, no more than twice its bytes
//   plus what its bounded entries cost: the figure the read budget reserves by.
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "core/check.h"
#include "eplb/v1/planner.pb.h"
#include "server/report_wire.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  google::protobuf::io::ArrayInputStream input(data, static_cast<int>(size));
  const absl::Status checked = eplb::server::CheckLoadReportWire(&input);
  eplb::v1::LoadReport report;
  const bool parses = report.ParseFromArray(data, static_cast<int>(size));
  if (parses) {
    EPLB_CHECK(checked.ok() || checked.message() != "it is not a well-formed protobuf message",
               "protobuf parses what the check calls not well-formed");
  }
  if (checked.ok() && parses) {
    // 4096 layers entries and 64 unknown fields at most: their objects, and the message itself.
    const size_t bound = 2 * size + 4096 * 64 + eplb::server::kMaxUnknownFields * 64 + 1024;
    EPLB_CHECK(report.SpaceUsedLong() <= bound, "a report of ", size, " bytes takes ",
               report.SpaceUsedLong(), " bytes parsed, more than ", bound);
  }
  return 0;
}
