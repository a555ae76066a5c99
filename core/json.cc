#include "core/json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <functional>
#include <iterator>
#include <limits>
#include <system_error>
#include <unordered_set>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/check.h"

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
      return Type::kArray;
    case Kind::kObject:
      return Type::kObject;
  }
  return Type::kNull;
}

std::string JsonValue::TypeMismatch() const {
  return absl::StrCat("the value is ",
                      kind_ == Kind::kInt      ? "an integer"
                      : kind_ == Kind::kDouble ? "a non-integer number"
                                               : "of type ",
                      is_number() ? "" : JsonTypeName(type()));
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
    case JsonValue::Type::kArray:
      return a.array_items() == b.array_items();
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

namespace {

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

void AppendUtf8(std::string* out, uint32_t cp) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Length of the well-formed UTF-8 sequence starting at p (whose first byte is ≥ 0x80), or 0 if it
// is not well formed (overlong forms, surrogates and code points above U+10FFFF are refused).
int Utf8SequenceLength(const char* p, const char* end) {
  const auto byte = [&](int i) { return static_cast<unsigned char>(p[i]); };
  const auto cont = [&](int i, unsigned lo = 0x80, unsigned hi = 0xBF) {
    return p + i < end && byte(i) >= lo && byte(i) <= hi;
  };
  const unsigned c = byte(0);
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c == 0xE0) return cont(1, 0xA0) && cont(2) ? 3 : 0;
  if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) return cont(1) && cont(2) ? 3 : 0;
  if (c == 0xED) return cont(1, 0x80, 0x9F) && cont(2) ? 3 : 0;
  if (c == 0xF0) return cont(1, 0x90) && cont(2) && cont(3) ? 4 : 0;
  if (c >= 0xF1 && c <= 0xF3) return cont(1) && cont(2) && cont(3) ? 4 : 0;
  if (c == 0xF4) return cont(1, 0x80, 0x8F) && cont(2) && cont(3) ? 4 : 0;
  return 0;
}

// Hashes object members by key through their index, so that the index stays valid while the member
// vector grows.
struct MemberKeyHash {
  const JsonValue::Object* members;
  size_t operator()(size_t i) const { return std::hash<std::string>()((*members)[i].first); }
};
struct MemberKeyEq {
  const JsonValue::Object* members;
  bool operator()(size_t a, size_t b) const { return (*members)[a].first == (*members)[b].first; }
};

// Objects with more members than this detect duplicate keys with a hash set instead of a scan.
constexpr size_t kLinearKeyScanLimit = 16;

class Parser {
 public:
  explicit Parser(absl::string_view text)
      : begin_(text.data()), p_(text.data()), end_(text.data() + text.size()) {}

  absl::StatusOr<JsonValue> Parse() {
    JsonValue value;
    if (!ParseValue(&value, 0)) return Error();
    SkipWhitespace();
    if (p_ != end_) {
      Fail(p_, "unexpected characters after the JSON value");
      return Error();
    }
    return value;
  }

 private:
  // Records the first error; always returns false.
  bool Fail(const char* at, std::string message) {
    error_at_ = at;
    error_ = std::move(message);
    return false;
  }

  absl::Status Error() const {
    int64_t line = 1;
    const char* line_start = begin_;
    for (const char* q = begin_; q < error_at_; ++q) {
      if (*q == '\n') {
        ++line;
        line_start = q + 1;
      }
    }
    return absl::InvalidArgumentError(
        absl::StrCat("line ", line, ", column ", error_at_ - line_start + 1, ": ", error_));
  }

  void SkipWhitespace() {
    while (p_ < end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }

  bool ConsumeLiteral(absl::string_view literal) {
    if (static_cast<size_t>(end_ - p_) < literal.size() ||
        std::memcmp(p_, literal.data(), literal.size()) != 0) {
      return Fail(p_, "expected a value");
    }
    p_ += literal.size();
    return true;
  }

  bool ParseValue(JsonValue* out, int depth) {
    SkipWhitespace();
    if (p_ == end_) return Fail(p_, "expected a value");
    switch (*p_) {
      case '[':
        return ParseArray(out, depth + 1);
      case '{':
        return ParseObject(out, depth + 1);
      case '"': {
        std::string s;
        if (!ParseString(&s)) return false;
        *out = JsonValue::String(std::move(s));
        return true;
      }
      case 't':
        if (!ConsumeLiteral("true")) return false;
        *out = JsonValue::Bool(true);
        return true;
      case 'f':
        if (!ConsumeLiteral("false")) return false;
        *out = JsonValue::Bool(false);
        return true;
      case 'n':
        if (!ConsumeLiteral("null")) return false;
        *out = JsonValue::Null();
        return true;
      default:
        if (*p_ == '-' || IsDigit(*p_)) return ParseNumber(out);
        return Fail(p_, "expected a value");
    }
  }

  void Push(JsonValue&& value) {
    if (stack_size_ == stack_.size()) stack_.resize(std::max<size_t>(1024, 2 * stack_.size()));
    stack_[stack_size_++] = std::move(value);
  }

  bool CheckDepth(int depth) {
    if (depth <= kMaxJsonDepth) return true;
    return Fail(p_,
                absl::StrCat("arrays and objects nested deeper than ", kMaxJsonDepth, " levels"));
  }

  ABSL_ATTRIBUTE_NOINLINE bool ParseArray(JsonValue* out, int depth) {
    if (!CheckDepth(depth)) return false;
    ++p_;  // '['
    SkipWhitespace();
    if (p_ < end_ && *p_ == ']') {
      ++p_;
      *out = JsonValue::MakeArray();
      return true;
    }
    // Items collect on a stack shared by all nesting levels, so that every array is allocated once
    // at its final size.
    const size_t base = stack_size_;
    for (;;) {
      SkipWhitespace();
      int64_t small_int;
      if (TryParseSmallInt(&small_int)) {  // the common case in expert maps
        Push(JsonValue::Int(small_int));
      } else {
        JsonValue item;
        if (!ParseValue(&item, depth)) return false;
        Push(std::move(item));
      }
      SkipWhitespace();
      if (p_ < end_ && *p_ == ',') {
        ++p_;
        continue;
      }
      if (p_ < end_ && *p_ == ']') {
        ++p_;
        break;
      }
      return Fail(p_, "expected ',' or ']'");
    }
    JsonValue::Array items(std::make_move_iterator(stack_.begin() + base),
                           std::make_move_iterator(stack_.begin() + stack_size_));
    stack_size_ = base;
    *out = JsonValue::MakeArray(std::move(items));
    return true;
  }

  ABSL_ATTRIBUTE_NOINLINE bool ParseObject(JsonValue* out, int depth) {
    if (!CheckDepth(depth)) return false;
    ++p_;  // '{'
    *out = JsonValue::MakeObject();
    JsonValue::Object& members = out->mutable_object_members();
    std::unordered_set<size_t, MemberKeyHash, MemberKeyEq> keys(0, MemberKeyHash{&members},
                                                                MemberKeyEq{&members});
    SkipWhitespace();
    if (p_ < end_ && *p_ == '}') {
      ++p_;
      return true;
    }
    for (;;) {
      SkipWhitespace();
      if (p_ == end_ || *p_ != '"') return Fail(p_, "expected an object key (a string)");
      const char* key_at = p_;
      std::string key;
      if (!ParseString(&key)) return false;
      members.emplace_back(std::move(key), JsonValue());
      if (!IsNewKey(members, keys)) {
        std::string message = "duplicate object key ";
        AppendJsonString(&message, members.back().first);
        return Fail(key_at, std::move(message));
      }
      SkipWhitespace();
      if (p_ == end_ || *p_ != ':') return Fail(p_, "expected ':'");
      ++p_;
      if (!ParseValue(&members.back().second, depth)) return false;
      SkipWhitespace();
      if (p_ < end_ && *p_ == ',') {
        ++p_;
        continue;
      }
      if (p_ < end_ && *p_ == '}') {
        ++p_;
        return true;
      }
      return Fail(p_, "expected ',' or '}'");
    }
  }

  // Whether the key of the last member differs from all earlier ones.
  template <typename KeySet>
  static bool IsNewKey(const JsonValue::Object& members, KeySet& keys) {
    const size_t last = members.size() - 1;
    if (members.size() <= kLinearKeyScanLimit) {
      for (size_t i = 0; i < last; ++i) {
        if (members[i].first == members[last].first) return false;
      }
      return true;
    }
    if (keys.empty()) {
      for (size_t i = 0; i < last; ++i) keys.insert(i);
    }
    return keys.insert(last).second;
  }

  ABSL_ATTRIBUTE_NOINLINE bool ParseString(std::string* out) {
    const char* start = p_;
    ++p_;  // '"'
    for (;;) {
      const char* run = p_;
      while (p_ < end_) {
        const auto c = static_cast<unsigned char>(*p_);
        if (c == '"' || c == '\\' || c < 0x20 || c >= 0x80) break;
        ++p_;
      }
      out->append(run, p_);
      if (p_ == end_) return Fail(start, "unterminated string");
      const auto c = static_cast<unsigned char>(*p_);
      if (c == '"') {
        ++p_;
        return true;
      }
      if (c < 0x20) {
        return Fail(p_, absl::StrFormat("unescaped control character U+%04X in a string", c));
      }
      if (c >= 0x80) {
        const int n = Utf8SequenceLength(p_, end_);
        if (n == 0) return Fail(p_, "invalid UTF-8 in a string");
        out->append(p_, n);
        p_ += n;
        continue;
      }
      if (!ParseEscape(start, out)) return false;
    }
  }

  // p_ is at a backslash inside the string that starts at `start`.
  bool ParseEscape(const char* start, std::string* out) {
    if (end_ - p_ < 2) return Fail(start, "unterminated string");
    switch (p_[1]) {
      case '"':
        out->push_back('"');
        break;
      case '\\':
        out->push_back('\\');
        break;
      case '/':
        out->push_back('/');
        break;
      case 'b':
        out->push_back('\b');
        break;
      case 'f':
        out->push_back('\f');
        break;
      case 'n':
        out->push_back('\n');
        break;
      case 'r':
        out->push_back('\r');
        break;
      case 't':
        out->push_back('\t');
        break;
      case 'u':
        return ParseUnicodeEscape(out);
      default:
        return Fail(p_, "invalid escape sequence in a string");
    }
    p_ += 2;
    return true;
  }

  // Reads the 4 hex digits of the \u escape at `at`, or returns -1.
  int32_t ReadHex4(const char* at) const {
    if (end_ - at < 6) return -1;
    int32_t cp = 0;
    for (int i = 2; i < 6; ++i) {
      const int h = HexValue(at[i]);
      if (h < 0) return -1;
      cp = cp * 16 + h;
    }
    return cp;
  }

  bool ParseUnicodeEscape(std::string* out) {
    const int32_t first = ReadHex4(p_);
    if (first < 0) return Fail(p_, "invalid \\u escape: expected 4 hex digits");
    if (first >= 0xDC00 && first <= 0xDFFF) {
      return Fail(p_, "invalid \\u escape: unpaired low surrogate");
    }
    if (first < 0xD800 || first > 0xDBFF) {
      AppendUtf8(out, static_cast<uint32_t>(first));
      p_ += 6;
      return true;
    }
    const char* second_at = p_ + 6;
    const int32_t second = (end_ - second_at >= 2 && second_at[0] == '\\' && second_at[1] == 'u')
                               ? ReadHex4(second_at)
                               : -1;
    if (second < 0xDC00 || second > 0xDFFF) {
      return Fail(p_, "invalid \\u escape: high surrogate not followed by a low surrogate");
    }
    AppendUtf8(out, 0x10000 + ((static_cast<uint32_t>(first) - 0xD800) << 10) +
                        (static_cast<uint32_t>(second) - 0xDC00));
    p_ += 12;
    return true;
  }

  // Parses an integer literal of at most 18 digits (so that it cannot overflow) at p_, if there is
  // one; leaves p_ alone and returns false for anything else, which ParseValue() then handles.
  bool TryParseSmallInt(int64_t* out) {
    const char* q = p_;
    const bool negative = q < end_ && *q == '-';
    if (negative) ++q;
    const char* digits = q;
    const char* limit = end_ - q > 18 ? q + 18 : end_;
    uint64_t v = 0;
    while (q < limit && IsDigit(*q)) v = v * 10 + static_cast<uint64_t>(*q++ - '0');
    const size_t num_digits = static_cast<size_t>(q - digits);
    if (num_digits == 0 || (digits[0] == '0' && num_digits > 1)) return false;
    if (q < end_ && (IsDigit(*q) || *q == '.' || *q == 'e' || *q == 'E')) return false;
    *out = negative ? -static_cast<int64_t>(v) : static_cast<int64_t>(v);
    p_ = q;
    return true;
  }

  ABSL_ATTRIBUTE_NOINLINE bool ParseNumber(JsonValue* out) {
    const char* start = p_;
    const bool negative = *p_ == '-';
    if (negative) ++p_;
    if (p_ == end_ || !IsDigit(*p_)) return Fail(start, "invalid number");
    const char* int_begin = p_;
    if (*p_ == '0') {
      ++p_;
      if (p_ < end_ && IsDigit(*p_)) return Fail(start, "invalid number: leading zero");
    } else {
      while (p_ < end_ && IsDigit(*p_)) ++p_;
    }
    const char* int_end = p_;
    const char* frac_begin = nullptr;
    const char* frac_end = nullptr;
    int64_t exponent = 0;
    if (p_ < end_ && *p_ == '.') {
      ++p_;
      if (p_ == end_ || !IsDigit(*p_)) return Fail(start, "invalid number: no digit after '.'");
      frac_begin = p_;
      while (p_ < end_ && IsDigit(*p_)) ++p_;
      frac_end = p_;
    }
    bool has_exponent = false;
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      has_exponent = true;
      ++p_;
      bool exponent_negative = false;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) exponent_negative = *p_++ == '-';
      if (p_ == end_ || !IsDigit(*p_)) return Fail(start, "invalid number: no digit in exponent");
      while (p_ < end_ && IsDigit(*p_)) {
        exponent = std::min<int64_t>(exponent * 10 + (*p_ - '0'), int64_t{1} << 40);
        ++p_;
      }
      if (exponent_negative) exponent = -exponent;
    }

    if (frac_begin == nullptr && !has_exponent) {
      const size_t num_digits = static_cast<size_t>(int_end - int_begin);
      if (num_digits <= 18) {  // fits in int64 without overflow
        uint64_t v = 0;
        for (const char* q = int_begin; q < int_end; ++q)
          v = v * 10 + static_cast<uint64_t>(*q - '0');
        *out = JsonValue::Int(negative ? -static_cast<int64_t>(v) : static_cast<int64_t>(v));
        return true;
      }
      int64_t v = 0;
      const auto [ptr, ec] = std::from_chars(start, p_, v);
      if (ec == std::errc() && ptr == p_) {
        *out = JsonValue::Int(v);
        return true;
      }
      // Too large for int64: kept as a double.
    }

    double d = 0;
    const auto [ptr, ec] = std::from_chars(start, p_, d, std::chars_format::general);
    if (ec == std::errc::result_out_of_range) {
      d = OverflowsDouble(int_begin, int_end, frac_begin, frac_end, exponent)
              ? std::numeric_limits<double>::infinity()
              : 0.0;
      if (negative) d = -d;
    } else if (ec != std::errc() || ptr != p_) {
      return Fail(start, "invalid number");
    }
    *out = JsonValue::Double(d);
    return true;
  }

  // For a literal out of the range of double: whether it is too large (rather than too small).
  static bool OverflowsDouble(const char* int_begin, const char* int_end, const char* frac_begin,
                              const char* frac_end, int64_t exponent) {
    // The decimal exponent of the first non-zero digit.
    for (const char* q = int_begin; q < int_end; ++q) {
      if (*q != '0') return (int_end - q - 1) + exponent > 0;
    }
    for (const char* q = frac_begin; q != nullptr && q < frac_end; ++q) {
      if (*q != '0') return -(q - frac_begin + 1) + exponent > 0;
    }
    return false;
  }

  const char* begin_;
  const char* p_;
  const char* end_;
  const char* error_at_ = nullptr;
  std::string error_;
  // Items of the arrays being parsed, innermost last: stack_[0, stack_size_). Entries beyond are
  // null. Managed by hand because vector::push_back is not inlined in the hot loop.
  std::vector<JsonValue> stack_;
  size_t stack_size_ = 0;
};

}  // namespace

absl::StatusOr<JsonValue> ParseJson(absl::string_view text) { return Parser(text).Parse(); }

// ---- Writer ------------------------------------------------------------------------------------

void AppendJsonString(std::string* out, absl::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  out->push_back('"');
  size_t run = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out->append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\b':
        out->append("\\b");
        break;
      case '\f':
        out->append("\\f");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default: {
        const char escape[] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xF]};
        out->append(escape, sizeof(escape));
      }
    }
  }
  out->append(s.data() + run, s.size() - run);
  out->push_back('"');
}

void AppendJsonNumber(std::string* out, double value) {
  EPLB_CHECK(std::isfinite(value), "JSON has no representation for ", value);
  char buf[32];
  const auto result = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, result.ptr);
}

void AppendJsonInt(std::string* out, int64_t value) {
  char buf[24];
  const auto result = std::to_chars(buf, buf + sizeof(buf), value);
  out->append(buf, result.ptr);
}

void AppendJsonIntArray(std::string* out, std::span<const int32_t> values) {
  constexpr size_t kMaxChars = 11 + 2;  // "-2147483648" and ", "
  const size_t old_size = out->size();
  out->resize(old_size + 2 + values.size() * kMaxChars);
  char* p = out->data() + old_size;
  *p++ = '[';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) {
      *p++ = ',';
      *p++ = ' ';
    }
    p = std::to_chars(p, p + 11, values[i]).ptr;
  }
  *p++ = ']';
  out->resize(static_cast<size_t>(p - out->data()));
}

namespace {

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
    case JsonValue::Type::kArray: {
      out->push_back('[');
      bool first = true;
      for (const JsonValue& item : value.array_items()) {
        if (!first) out->push_back(',');
        first = false;
        AppendJsonValue(out, item);
      }
      out->push_back(']');
      return;
    }
    case JsonValue::Type::kObject: {
      out->push_back('{');
      bool first = true;
      for (const auto& [key, member] : value.object_members()) {
        if (!first) out->push_back(',');
        first = false;
        AppendJsonString(out, key);
        out->push_back(':');
        AppendJsonValue(out, member);
      }
      out->push_back('}');
      return;
    }
  }
}

}  // namespace

std::string WriteJson(const JsonValue& value) {
  std::string out;
  AppendJsonValue(&out, value);
  return out;
}

}  // namespace eplb
