#include "core/json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <memory>
#include <system_error>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/check.h"
#include "rapidjson/error/error.h"
#include "rapidjson/reader.h"
#include "rapidjson/writer.h"

namespace eplb {

// ---- JsonValue ---------------------------------------------------------------------------------

static_assert(sizeof(JsonValue) == 16, "a JsonValue is a tag and an 8-byte payload");

JsonValue::JsonValue(const JsonValue& other) { *this = other; }

JsonValue& JsonValue::operator=(const JsonValue& other) {
  if (this == &other) return *this;
  switch (other.kind_) {
    case Kind::kString:
      *this = String(*other.payload_.string_value);
      break;
    case Kind::kArray:
      *this = MakeArray(*other.payload_.array_value);
      break;
    case Kind::kIntArray:
      *this = MakeIntArray(other.int_array_items());
      break;
    case Kind::kObject:
      *this = MakeObject(*other.payload_.object_value);
      break;
    default:
      if (OwnsHeap()) Release();
      kind_ = other.kind_;
      payload_ = other.payload_;
  }
  return *this;
}

void JsonValue::Release() {
  switch (kind_) {
    case Kind::kString:
      delete payload_.string_value;
      break;
    case Kind::kArray:
      delete payload_.array_value;
      break;
    case Kind::kIntArray:
      delete[] payload_.int_array_value;
      break;
    case Kind::kObject:
      delete payload_.object_value;
      break;
    default:
      break;
  }
  kind_ = Kind::kNull;
}

JsonValue JsonValue::String(std::string value) {
  JsonValue v(Kind::kString);
  v.payload_.string_value = new std::string(std::move(value));
  return v;
}

JsonValue JsonValue::MakeArray(Array items) {
  JsonValue v(Kind::kArray);
  v.payload_.array_value = new Array(std::move(items));
  return v;
}

JsonValue JsonValue::MakeIntArray(std::span<const int64_t> items) {
  EPLB_CHECK(!items.empty(), "a packed array has items");
  JsonValue v(Kind::kIntArray);
  // One allocation: the count, then the items.
  v.payload_.int_array_value = new int64_t[items.size() + 1];
  v.payload_.int_array_value[0] = static_cast<int64_t>(items.size());
  std::copy(items.begin(), items.end(), v.payload_.int_array_value + 1);
  return v;
}

JsonValue::Array& JsonValue::mutable_array_items() {
  if (kind_ == Kind::kIntArray) {
    Array items;
    items.reserve(array_size());
    for (const int64_t v : int_array_items()) items.push_back(Int(v));
    *this = MakeArray(std::move(items));
  }
  EPLB_CHECK(kind_ == Kind::kArray, TypeMismatch());
  return *payload_.array_value;
}

JsonValue JsonValue::item(size_t i) const {
  EPLB_CHECK(i < array_size(), "item ", i, " of an array of ", array_size());
  if (kind_ == Kind::kIntArray) return Int(int_array_items()[i]);
  return array_items()[i];
}

JsonValue JsonValue::MakeObject(Object members) {
  JsonValue v(Kind::kObject);
  v.payload_.object_value = new Object(std::move(members));
  return v;
}

JsonValue::Type JsonValue::type() const {
  switch (kind_) {
    case Kind::kNull:
      return Type::kNull;
    case Kind::kBool:
      return Type::kBool;
    case Kind::kInt:
    case Kind::kDouble:
      return Type::kNumber;
    case Kind::kString:
      return Type::kString;
    case Kind::kArray:
    case Kind::kIntArray:
      return Type::kArray;
    case Kind::kObject:
      return Type::kObject;
  }
  return Type::kNull;
}

std::string JsonValue::TypeMismatch() const {
  return absl::StrCat("the value is ",
                      kind_ == Kind::kInt        ? "an integer"
                      : kind_ == Kind::kDouble   ? "a non-integer number"
                      : kind_ == Kind::kIntArray ? "a packed array of integers"
                                                 : "of type ",
                      is_number() || kind_ == Kind::kIntArray ? "" : JsonTypeName(type()));
}

const JsonValue* JsonValue::Find(absl::string_view key) const {
  if (!is_object()) return nullptr;
  for (const Member& m : object_members()) {
    if (m.first == key) return &m.second;
  }
  return nullptr;
}

bool operator==(const JsonValue& a, const JsonValue& b) {
  if (a.type() != b.type()) return false;
  switch (a.type()) {
    case JsonValue::Type::kNull:
      return true;
    case JsonValue::Type::kBool:
      return a.bool_value() == b.bool_value();
    case JsonValue::Type::kNumber:
      if (a.is_integer() && b.is_integer()) return a.int_value() == b.int_value();
      return a.number_value() == b.number_value();
    case JsonValue::Type::kString:
      return a.string_value() == b.string_value();
    case JsonValue::Type::kArray: {
      if (a.is_int_array() && b.is_int_array()) {
        return std::ranges::equal(a.int_array_items(), b.int_array_items());
      }
      if (!a.is_int_array() && !b.is_int_array()) return a.array_items() == b.array_items();
      if (a.array_size() != b.array_size()) return false;
      for (size_t i = 0; i < a.array_size(); ++i) {
        if (!(a.item(i) == b.item(i))) return false;
      }
      return true;
    }
    case JsonValue::Type::kObject:
      return a.object_members() == b.object_members();
  }
  return false;
}

absl::string_view JsonTypeName(JsonValue::Type type) {
  switch (type) {
    case JsonValue::Type::kNull:
      return "null";
    case JsonValue::Type::kBool:
      return "boolean";
    case JsonValue::Type::kNumber:
      return "number";
    case JsonValue::Type::kString:
      return "string";
    case JsonValue::Type::kArray:
      return "array";
    case JsonValue::Type::kObject:
      return "object";
  }
  return "unknown";
}

// ---- Parser ------------------------------------------------------------------------------------
//
// RapidJSON's SAX reader checks the grammar, the escapes and the UTF-8 of strings and reports the
// byte offset of the first error; the handler below builds the JsonValue DOM and adds what
// RapidJSON leaves to the application: the nesting limit, duplicate keys, unpaired low surrogates
// and the conversion of numbers (which it hands over as text, see kMaxJsonBytes).

namespace {

constexpr unsigned kParseFlags = rapidjson::kParseInsituFlag | rapidjson::kParseValidateEncodingFlag |
                                 rapidjson::kParseNumbersAsStringsFlag;

// Zero bytes after the text: the reader stops at the first, and its UTF-8 check of a truncated
// sequence reads up to three bytes further.
constexpr size_t kPadding = 16;

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// A byte that can be part of a number or of true/false/null.
bool IsTokenChar(char c) {
  return IsDigit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '-' || c == '+' ||
         c == '.';
}

// Where an error found by the handler is reported.
enum class ErrorAt {
  kBeforeOffset,  // the byte before the reader's offset (an opening bracket)
  kOffset,        // the reader's offset (the start of a number)
  kStringStart,   // the opening quote of the string that ends just before the reader's offset
};

// Objects with more members than this detect duplicate keys with a hash set instead of a scan.
constexpr size_t kLinearKeyScanLimit = 16;

class DomBuilder : public rapidjson::BaseReaderHandler<rapidjson::UTF8<>, DomBuilder> {
 public:
  bool Null() { return Add(JsonValue::Null()); }
  bool Bool(bool b) { return Add(JsonValue::Bool(b)); }

  bool RawNumber(const char* str, rapidjson::SizeType length, bool /*copy*/) {
    // The reader has checked the syntax: an optional '-', digits, then maybe a fraction and an
    // exponent.
    const char* end = str + length;
    const bool negative = *str == '-';
    const char* p = str + (negative ? 1 : 0);
    if (end - p <= 18) {  // up to 18 digits fit in int64
      uint64_t v = 0;
      while (p < end && IsDigit(*p)) v = v * 10 + static_cast<uint64_t>(*p++ - '0');
      if (p == end) return AddInt(negative ? -static_cast<int64_t>(v) : static_cast<int64_t>(v));
    } else {
      int64_t v = 0;
      const auto [ptr, ec] = std::from_chars(str, end, v);
      if (ec == std::errc() && ptr == end) return AddInt(v);
      // Beyond int64 (or not an integer literal): a double.
    }
    double d = 0;
    const auto [ptr, ec] = std::from_chars(str, end, d, std::chars_format::general);
    if (ec != std::errc() || ptr != end) {
      return Fail(ErrorAt::kOffset, "number out of the range of a double");
    }
    return Add(JsonValue::Double(d));
  }

  bool String(const char* str, rapidjson::SizeType length, bool /*copy*/) {
    if (!CheckSurrogates(str, length)) return false;
    return Add(JsonValue::String(std::string(str, length)));
  }

  bool StartArray() { return Open(/*array=*/true); }
  bool StartObject() { return Open(/*array=*/false); }

  bool Key(const char* str, rapidjson::SizeType length, bool /*copy*/) {
    if (!CheckSurrogates(str, length)) return false;
    Frame& frame = frames_.back();
    const absl::string_view key(str, length);
    const size_t num_members = keys_.size() - frame.key_base;
    bool duplicate = false;
    if (frame.key_set != nullptr) {
      duplicate = !frame.key_set->emplace(key).second;
    } else {
      for (size_t i = frame.key_base; i < keys_.size() && !duplicate; ++i) duplicate = keys_[i] == key;
      if (!duplicate && num_members + 1 > kLinearKeyScanLimit) {
        frame.key_set = std::make_unique<absl::flat_hash_set<std::string>>(
            keys_.begin() + static_cast<ptrdiff_t>(frame.key_base), keys_.end());
        frame.key_set->emplace(key);
      }
    }
    if (duplicate) {
      std::string message = "duplicate object key ";
      AppendJsonString(&message, key);
      return Fail(ErrorAt::kStringStart, std::move(message));
    }
    keys_.emplace_back(key);
    return true;
  }

  bool EndArray(rapidjson::SizeType count) {
    const Frame& frame = frames_.back();
    JsonValue array;
    if (frame.packed && count > 0) {
      array = JsonValue::MakeIntArray(std::span<const int64_t>(ints_).subspan(frame.int_base));
      ints_.resize(frame.int_base);
    } else {
      const auto first = values_.end() - static_cast<ptrdiff_t>(count);
      array = JsonValue::MakeArray(JsonValue::Array(std::make_move_iterator(first),
                                                    std::make_move_iterator(values_.end())));
      values_.erase(first, values_.end());
    }
    frames_.pop_back();
    return Add(std::move(array));
  }

  bool EndObject(rapidjson::SizeType count) {
    JsonValue::Object members;
    members.reserve(count);
    const size_t key_base = keys_.size() - count;
    const size_t value_base = values_.size() - count;
    for (size_t i = 0; i < count; ++i) {
      members.emplace_back(std::move(keys_[key_base + i]), std::move(values_[value_base + i]));
    }
    keys_.resize(key_base);
    values_.resize(value_base);
    frames_.pop_back();
    return Add(JsonValue::MakeObject(std::move(members)));
  }

  JsonValue TakeRoot() { return std::move(root_); }
  const std::string& error() const { return error_; }
  ErrorAt error_at() const { return error_at_; }

 private:
  struct Frame {
    // An array whose items so far are all integers: they wait in ints_[int_base, end).
    bool packed = false;
    size_t int_base = 0;
    size_t key_base = 0;  // the keys of an object are keys_[key_base, end)
    std::unique_ptr<absl::flat_hash_set<std::string>> key_set;  // beyond kLinearKeyScanLimit
  };

  bool Fail(ErrorAt at, std::string message) {
    error_at_ = at;
    error_ = std::move(message);
    return false;
  }

  bool AddInt(int64_t value) {
    if (!frames_.empty() && frames_.back().packed) {
      ints_.push_back(value);
      return true;
    }
    return Add(JsonValue::Int(value));
  }

  bool Add(JsonValue value) {
    if (frames_.empty()) {
      root_ = std::move(value);
      return true;
    }
    Frame& frame = frames_.back();
    if (frame.packed) {  // the array holds something other than an integer: unpack it
      for (size_t i = frame.int_base; i < ints_.size(); ++i) {
        values_.push_back(JsonValue::Int(ints_[i]));
      }
      ints_.resize(frame.int_base);
      frame.packed = false;
    }
    values_.push_back(std::move(value));
    return true;
  }

  bool Open(bool array) {
    if (frames_.size() >= static_cast<size_t>(kMaxJsonDepth)) {
      return Fail(ErrorAt::kBeforeOffset, absl::StrCat("arrays and objects nested deeper than ",
                                                       kMaxJsonDepth, " levels"));
    }
    frames_.push_back(Frame{.packed = array, .int_base = ints_.size(), .key_base = keys_.size()});
    return true;
  }

  // The input is valid UTF-8 (the reader checks it), so UTF-8 surrogates (ED A0..BF ..) in a
  // decoded string come from a \u escape: a low surrogate without a high one before it (the
  // reader refuses a high surrogate without a low one).
  bool CheckSurrogates(const char* str, size_t length) {
    const char* end = str + length;
    for (const char* p = static_cast<const char*>(std::memchr(str, '\xED', length)); p != nullptr;
         p = static_cast<const char*>(std::memchr(p + 1, '\xED', static_cast<size_t>(end - p - 1)))) {
      if (p + 1 < end && static_cast<unsigned char>(p[1]) >= 0xA0) {
        return Fail(ErrorAt::kStringStart, "invalid \\u escape: unpaired low surrogate");
      }
    }
    return true;
  }

  JsonValue root_;
  // Items of the open arrays and objects, innermost last; each container is allocated once, at its
  // final size, when it closes.
  std::vector<JsonValue> values_;
  std::vector<int64_t> ints_;  // items of packed arrays
  std::vector<std::string> keys_;
  std::vector<Frame> frames_;
  std::string error_;
  ErrorAt error_at_ = ErrorAt::kOffset;
};

// The offset of the opening quote of the string whose closing quote is at `close`: the nearest
// quote before it that is not escaped (preceded by an even number of backslashes).
size_t StringStart(absl::string_view text, size_t close) {
  for (size_t i = close; i-- > 0;) {
    if (text[i] != '"') continue;
    size_t backslashes = 0;
    while (backslashes < i && text[i - 1 - backslashes] == '\\') ++backslashes;
    if (backslashes % 2 == 0) return i;
  }
  return 0;
}

// The start of the number or literal that contains the byte before `offset`, or `offset`.
size_t TokenStart(absl::string_view text, size_t offset) {
  while (offset > 0 && IsTokenChar(text[offset - 1])) --offset;
  return offset;
}

// "line L, column C: message" for the byte at `offset` (1-based; columns count bytes).
absl::Status ErrorAtOffset(absl::string_view text, size_t offset, absl::string_view message) {
  offset = std::min(offset, text.size());
  int64_t line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("line ", line, ", column ", offset - line_start + 1, ": ", message));
}

// Our wording and position for an error the reader found at `offset`.
absl::Status ReaderError(absl::string_view text, rapidjson::ParseErrorCode code, size_t offset) {
  const char at = offset < text.size() ? text[offset] : '\0';
  switch (code) {
    case rapidjson::kParseErrorDocumentEmpty:
      return ErrorAtOffset(text, offset, "expected a value");
    case rapidjson::kParseErrorValueInvalid: {
      const size_t start = TokenStart(text, offset);
      const bool minus = start < text.size() && text[start] == '-';
      return ErrorAtOffset(text, start, minus ? "invalid number" : "expected a value");
    }
    case rapidjson::kParseErrorDocumentRootNotSingular:
    case rapidjson::kParseErrorObjectMissCommaOrCurlyBracket:
    case rapidjson::kParseErrorArrayMissCommaOrSquareBracket: {
      // "01": the reader reads the number 0 and stops before the 1.
      const size_t start = TokenStart(text, offset);
      const absl::string_view token = text.substr(start, offset - start);
      if (IsDigit(at) && (token == "0" || token == "-0")) {
        return ErrorAtOffset(text, start, "invalid number: leading zero");
      }
      if (code == rapidjson::kParseErrorDocumentRootNotSingular) {
        return ErrorAtOffset(text, offset, "unexpected characters after the JSON value");
      }
      return ErrorAtOffset(text, offset,
                           code == rapidjson::kParseErrorArrayMissCommaOrSquareBracket
                               ? "expected ',' or ']'"
                               : "expected ',' or '}'");
    }
    case rapidjson::kParseErrorObjectMissName:
      return ErrorAtOffset(text, offset, "expected an object key (a string)");
    case rapidjson::kParseErrorObjectMissColon:
      return ErrorAtOffset(text, offset, "expected ':'");
    case rapidjson::kParseErrorStringUnicodeEscapeInvalidHex:
      return ErrorAtOffset(text, offset, "invalid \\u escape: expected 4 hex digits");
    case rapidjson::kParseErrorStringUnicodeSurrogateInvalid:
      return ErrorAtOffset(text, offset,
                           "invalid \\u escape: high surrogate not followed by a low surrogate");
    case rapidjson::kParseErrorStringEscapeInvalid:
      if (at == '\\' && offset + 1 == text.size()) {
        return ErrorAtOffset(text, StringStart(text, offset), "unterminated string");
      }
      // The reader reports unescaped control characters as invalid escapes.
      if (static_cast<unsigned char>(at) < 0x20) {
        return ErrorAtOffset(
            text, offset,
            absl::StrFormat("unescaped control character U+%04X in a string",
                            static_cast<unsigned char>(at)));
      }
      return ErrorAtOffset(text, offset, "invalid escape sequence in a string");
    case rapidjson::kParseErrorStringMissQuotationMark:
      // The reader stops at a zero byte, which is the end of the text or a raw U+0000.
      if (offset < text.size()) {
        return ErrorAtOffset(text, offset, "unescaped control character U+0000 in a string");
      }
      return ErrorAtOffset(text, StringStart(text, offset), "unterminated string");
    case rapidjson::kParseErrorStringInvalidEncoding:
      return ErrorAtOffset(text, offset, "invalid UTF-8 in a string");
    case rapidjson::kParseErrorNumberTooBig:
      return ErrorAtOffset(text, offset, "number out of the range of a double");
    case rapidjson::kParseErrorNumberMissFraction:
      return ErrorAtOffset(text, TokenStart(text, offset), "invalid number: no digit after '.'");
    case rapidjson::kParseErrorNumberMissExponent:
      return ErrorAtOffset(text, TokenStart(text, offset), "invalid number: no digit in exponent");
    default:
      return ErrorAtOffset(text, offset, "invalid JSON");
  }
}

}  // namespace

absl::StatusOr<JsonValue> ParseJson(absl::string_view text) {
  if (text.size() > kMaxJsonBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the JSON text is ", text.size(),
                                                   " bytes; at most ", kMaxJsonBytes, " are read"));
  }
  // The reader decodes strings in place (insitu) and stops at the first zero byte.
  std::string buffer;
  buffer.reserve(text.size() + kPadding);
  buffer.append(text.data(), text.size());
  buffer.append(kPadding, '\0');
  rapidjson::InsituStringStream stream(buffer.data());
  rapidjson::Reader reader;
  DomBuilder builder;
  const rapidjson::ParseResult result = reader.Parse<kParseFlags>(stream, builder);
  if (result.IsError()) {
    const size_t offset = result.Offset();
    if (result.Code() != rapidjson::kParseErrorTermination) {
      return ReaderError(text, result.Code(), offset);
    }
    switch (builder.error_at()) {
      case ErrorAt::kBeforeOffset:
        return ErrorAtOffset(text, offset == 0 ? 0 : offset - 1, builder.error());
      case ErrorAt::kOffset:
        return ErrorAtOffset(text, offset, builder.error());
      case ErrorAt::kStringStart:
        return ErrorAtOffset(text, StringStart(text, offset == 0 ? 0 : offset - 1),
                             builder.error());
    }
  }
  // The reader stops at a zero byte: one before the end of the text is a trailing character.
  if (stream.Tell() != text.size()) {
    return ErrorAtOffset(text, stream.Tell(), "unexpected characters after the JSON value");
  }
  return builder.TakeRoot();
}

// ---- Writer ------------------------------------------------------------------------------------

namespace {

// RapidJSON's output stream interface over an std::string.
class StringSink {
 public:
  using Ch = char;
  explicit StringSink(std::string* out) : out_(out) {}
  void Put(char c) { out_->push_back(c); }
  void Flush() {}

 private:
  std::string* out_;
};

// Strings only: a Writer keeps a stack for arrays and objects, whose first use in RapidJSON 1.1.0
// offsets a null pointer (undefined behaviour, which the sanitizer build refuses).
using SinkWriter = rapidjson::Writer<StringSink>;

void AppendJsonValue(std::string* out, const JsonValue& value) {
  switch (value.type()) {
    case JsonValue::Type::kNull:
      out->append("null");
      return;
    case JsonValue::Type::kBool:
      out->append(value.bool_value() ? "true" : "false");
      return;
    case JsonValue::Type::kNumber:
      if (value.is_integer()) {
        AppendJsonInt(out, value.int_value());
      } else {
        AppendJsonNumber(out, value.number_value());
      }
      return;
    case JsonValue::Type::kString:
      AppendJsonString(out, value.string_value());
      return;
    case JsonValue::Type::kArray:
      out->push_back('[');
      for (size_t i = 0; i < value.array_size(); ++i) {
        if (i > 0) out->push_back(',');
        if (value.is_int_array()) {
          AppendJsonInt(out, value.int_array_items()[i]);
        } else {
          AppendJsonValue(out, value.array_items()[i]);
        }
      }
      out->push_back(']');
      return;
    case JsonValue::Type::kObject:
      out->push_back('{');
      for (const auto& [key, member] : value.object_members()) {
        if (&key != &value.object_members().front().first) out->push_back(',');
        AppendJsonString(out, key);
        out->push_back(':');
        AppendJsonValue(out, member);
      }
      out->push_back('}');
      return;
  }
}

}  // namespace

void AppendJsonString(std::string* out, absl::string_view s) {
  EPLB_CHECK(s.size() <= std::numeric_limits<rapidjson::SizeType>::max(), "a string of ",
             s.size(), " bytes");
  StringSink sink(out);
  SinkWriter writer(sink);
  writer.String(s.data(), static_cast<rapidjson::SizeType>(s.size()));
}

void AppendJsonNumber(std::string* out, double value) {
  EPLB_CHECK(std::isfinite(value), "JSON has no representation for ", value);
  if (value == 0 && std::signbit(value)) {  // "-0" would read back as the integer 0
    out->append("-0.0");
    return;
  }
  char buf[32];
  const auto result = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, result.ptr);
}

void AppendJsonInt(std::string* out, int64_t value) {
  char buf[24];
  const auto result = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, result.ptr);
}

void AppendJsonIntArray(std::string* out, std::span<const int32_t> values,
                        absl::string_view separator) {
  EPLB_CHECK(separator.size() <= 2, separator.size());
  constexpr size_t kMaxChars = 11 + 2;  // "-2147483648" and the separator
  const size_t old_size = out->size();
  out->resize(old_size + 2 + values.size() * kMaxChars);
  char* p = out->data() + old_size;
  *p++ = '[';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) p = std::copy(separator.begin(), separator.end(), p);
    p = std::to_chars(p, p + 11, values[i]).ptr;
  }
  *p++ = ']';
  out->resize(static_cast<size_t>(p - out->data()));
}

std::string WriteJson(const JsonValue& value) {
  std::string out;
  AppendJsonValue(&out, value);
  return out;
}

}  // namespace eplb
