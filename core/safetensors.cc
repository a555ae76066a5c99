#include "core/safetensors.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/json.h"
#include "core/status_macros.h"

namespace eplb {
namespace {

// The reference reader's limit on the header (decimal, not MiB).
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

absl::Status Invalid(std::string message) { return absl::InvalidArgumentError(std::move(message)); }

// Bytes per element, 0 for a dtype not in the format.
int DtypeSize(absl::string_view dtype) {
  struct Entry {
    absl::string_view name;
    int size;
  };
  static constexpr Entry kDtypes[] = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8},
  };
  for (const Entry& e : kDtypes) {
    if (e.name == dtype) return e.size;
  }
  return 0;
}

uint64_t LittleEndian(const char* p, int size) {
  uint64_t value = 0;
  for (int i = size - 1; i >= 0; --i) value = (value << 8) | static_cast<unsigned char>(p[i]);
  return value;
}

// A non-negative integer member of a tensor's entry, or INVALID_ARGUMENT naming it.
absl::StatusOr<uint64_t> ReadCount(const JsonValue& v, const std::string& name) {
  if (!v.is_integer() || v.int_value() < 0) {
    return Invalid(absl::StrCat(name, " is not a non-negative integer"));
  }
  return static_cast<uint64_t>(v.int_value());
}

struct Entry {
  SafetensorsTensor tensor;
  uint64_t begin = 0;
  uint64_t end = 0;
};

}  // namespace

absl::StatusOr<std::vector<SafetensorsTensor>> ParseSafetensors(absl::string_view bytes) {
  if (bytes.size() < 8) {
    return Invalid(absl::StrCat("the file is ", bytes.size(),
                                " bytes, shorter than the 8-byte header length"));
  }
  const uint64_t header_bytes = LittleEndian(bytes.data(), 8);
  if (header_bytes > kMaxHeaderBytes) {
    return Invalid(absl::StrCat("the header length ", header_bytes, " is more than ",
                                kMaxHeaderBytes, " bytes"));
  }
  if (header_bytes > bytes.size() - 8) {
    return Invalid(absl::StrCat("the header length ", header_bytes, " runs past the end of the ",
                                bytes.size(), "-byte file"));
  }
  absl::StatusOr<JsonValue> header = ParseJson(bytes.substr(8, header_bytes));
  if (!header.ok()) return Invalid(absl::StrCat("header: ", header.status().message()));
  if (!header->is_object()) return Invalid("header: expected a JSON object");
  const absl::string_view buffer = bytes.substr(8 + header_bytes);

  std::vector<Entry> entries;
  for (const JsonValue::Member& member : header->object_members()) {
    const std::string& name = member.first;
    const JsonValue& info = member.second;
    if (name == "__metadata__") {
      if (!info.is_object()) return Invalid("header: __metadata__ is not an object");
      for (const JsonValue::Member& item : info.object_members()) {
        if (!item.second.is_string()) {
          return Invalid(absl::StrCat("header: __metadata__.", item.first, " is not a string"));
        }
      }
      continue;
    }
    const std::string tensor = absl::StrCat("tensor \"", name, "\"");
    if (!info.is_object()) return Invalid(absl::StrCat(tensor, ": not an object"));
    const JsonValue* dtype = info.Find("dtype");
    const JsonValue* shape = info.Find("shape");
    const JsonValue* offsets = info.Find("data_offsets");
    if (dtype == nullptr || shape == nullptr || offsets == nullptr) {
      return Invalid(absl::StrCat(tensor, ": needs dtype, shape and data_offsets"));
    }
    Entry e;
    e.tensor.name = name;
    if (!dtype->is_string() || DtypeSize(dtype->string_value()) == 0) {
      return Invalid(absl::StrCat(tensor,
                                  ": dtype is not one of the format's (BOOL, U8, I8, "
                                  "F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, "
                                  "I64, U64)"));
    }
    e.tensor.dtype = dtype->string_value();
    if (!shape->is_array()) return Invalid(absl::StrCat(tensor, ": shape is not a list"));
    // The size in bytes, checked against overflow: it must fit in the buffer anyway.
    uint64_t size = static_cast<uint64_t>(DtypeSize(e.tensor.dtype));
    for (size_t i = 0; i < shape->array_size(); ++i) {
      ASSIGN_OR_RETURN(const uint64_t d, ReadCount(shape->item(i), tensor + ": a shape entry"));
      e.tensor.shape.push_back(static_cast<int64_t>(d));
      if (d != 0 && size > buffer.size() / d)
        size = buffer.size() + 1;  // too large either way
      else
        size *= d;
    }
    if (!offsets->is_array() || offsets->array_size() != 2) {
      return Invalid(absl::StrCat(tensor, ": data_offsets is not [begin, end]"));
    }
    ASSIGN_OR_RETURN(e.begin, ReadCount(offsets->item(0), tensor + ": data_offsets[0]"));
    ASSIGN_OR_RETURN(e.end, ReadCount(offsets->item(1), tensor + ": data_offsets[1]"));
    if (e.end < e.begin || e.end > buffer.size()) {
      return Invalid(absl::StrCat(tensor, ": data_offsets [", e.begin, ", ", e.end,
                                  "] are not within the ", buffer.size(), " bytes of data"));
    }
    if (e.end - e.begin != size) {
      return Invalid(absl::StrCat(
          tensor, ": data_offsets [", e.begin, ", ", e.end, "] hold ", e.end - e.begin,
          " bytes, but its dtype and shape need ",
          size > buffer.size() ? std::string("more than the file has") : absl::StrCat(size)));
    }
    e.tensor.data = buffer.substr(e.begin, e.end - e.begin);
    entries.push_back(std::move(e));
  }
  // The data is indexed whole: tensors follow each other from 0 to the end, no gap, no overlap.
  std::stable_sort(entries.begin(), entries.end(),
                   [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  uint64_t next = 0;
  for (const Entry& e : entries) {
    if (e.begin != next) {
      return Invalid(absl::StrCat("tensor \"", e.tensor.name, "\": data_offsets start at ", e.begin,
                                  ", expected ", next,
                                  " (tensors must follow each other without gaps or overlaps)"));
    }
    next = e.end;
  }
  if (next != buffer.size()) {
    return Invalid(absl::StrCat("the tensors end at byte ", next, " of the data, which has ",
                                buffer.size(), " bytes"));
  }
  std::vector<SafetensorsTensor> tensors;
  tensors.reserve(entries.size());
  for (Entry& e : entries) tensors.push_back(std::move(e.tensor));
  return tensors;
}

absl::StatusOr<std::vector<int64_t>> SafetensorsIntegers(const SafetensorsTensor& tensor) {
  const absl::string_view d = tensor.dtype;
  const bool is_signed = d == "I8" || d == "I16" || d == "I32" || d == "I64";
  const bool is_unsigned = d == "U8" || d == "U16" || d == "U32" || d == "U64" || d == "BOOL";
  if (!is_signed && !is_unsigned) {
    return Invalid(
        absl::StrCat("tensor \"", tensor.name, "\" has dtype ", d, ", expected an integer dtype"));
  }
  const int size = DtypeSize(d);
  std::vector<int64_t> values(tensor.data.size() / size);
  for (size_t i = 0; i < values.size(); ++i) {
    const uint64_t raw = LittleEndian(tensor.data.data() + i * size, size);
    if (is_signed) {
      const int bits = 8 * size;
      values[i] = bits == 64 ? static_cast<int64_t>(raw)
                             : static_cast<int64_t>(raw << (64 - bits)) >> (64 - bits);
    } else {
      if (raw > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return Invalid(absl::StrCat("tensor \"", tensor.name, "\"[", i, "] = ", raw,
                                    " is beyond the int64 range"));
      }
      values[i] = static_cast<int64_t>(raw);
    }
  }
  return values;
}

}  // namespace eplb
