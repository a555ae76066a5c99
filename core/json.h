// JSON for the file formats (core/map_format.h): a DOM (JsonValue), a strict parser (RFC 8259) and
// writers, over RapidJSON (its SAX reader checks the grammar, escapes and UTF-8 and reports where
// an error is; its writer escapes strings) and std::to_chars (numbers: shortest round trip).
//
// The parser accepts exactly one JSON value surrounded by optional whitespace and refuses anything
// else with INVALID_ARGUMENT "line L, column C: <what is wrong>" (1-based; columns count bytes):
// trailing characters (a zero byte included), nesting deeper than kMaxJsonDepth, duplicate object
// keys, invalid escapes, unpaired surrogates, invalid UTF-8, unescaped control characters inside
// strings, numbers out of the range of a double (1e999, 1e-999) and texts longer than
// kMaxJsonBytes.
//
// Numbers keep their double value and whether the literal was an integer: an integer literal
// (no fraction, no exponent) that fits in int64 also keeps its exact int64 value; a longer one is
// kept as a double.
#ifndef EPLB_CORE_JSON_H_
#define EPLB_CORE_JSON_H_

#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/check.h"

namespace eplb {

// The deepest nesting of arrays and objects the parser accepts, so that hostile input cannot
// exhaust the stack.
inline constexpr int kMaxJsonDepth = 128;

// The longest text the parser reads: ten times the largest expert map in use (20 MB), and small
// enough that the digit counters of RapidJSON 1.1.0's number reader (an int) cannot overflow.
inline constexpr size_t kMaxJsonBytes = size_t{200} << 20;

// One JSON value. Object members keep their insertion (document) order. Copyable and movable;
// moves are cheap (a value is 16 bytes; strings, arrays and objects live on the heap). Not
// thread-safe for concurrent mutation; concurrent reads are safe.
//
// Arrays come in two forms. An array whose items are all integers (is_integer()) may be stored
// packed, as int64 values: is_int_array() is true and int_array_items() reads them. Any other
// array holds JsonValues: array_items(). The parser packs every non-empty array of integers (the
// tables of expert maps: half the memory and no per-item objects); MakeArray() never packs. Both
// forms are the same JSON: type() is kArray, array_size() counts the items, item() reads one,
// == compares items, the writer writes the same text and mutable_array_items() unpacks.
class JsonValue {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<JsonValue>;
  using Member = std::pair<std::string, JsonValue>;
  using Object = std::vector<Member>;

  JsonValue() = default;  // null
  JsonValue(const JsonValue& other);
  JsonValue& operator=(const JsonValue& other);
  JsonValue(JsonValue&& other) noexcept : kind_(other.kind_), payload_(other.payload_) {
    other.kind_ = Kind::kNull;
  }
  JsonValue& operator=(JsonValue&& other) noexcept {
    if (this != &other) {
      if (OwnsHeap()) Release();
      kind_ = other.kind_;
      payload_ = other.payload_;
      other.kind_ = Kind::kNull;
    }
    return *this;
  }
  ~JsonValue() {
    if (OwnsHeap()) Release();
  }

  static JsonValue Null() { return JsonValue(); }
  static JsonValue Bool(bool value) {
    JsonValue v(Kind::kBool);
    v.payload_.bool_value = value;
    return v;
  }
  // An integer number: is_integer() is true.
  static JsonValue Int(int64_t value) {
    JsonValue v(Kind::kInt);
    v.payload_.int_value = value;
    return v;
  }
  // A number that is not an integer literal: is_integer() is false, even for 2.0.
  static JsonValue Double(double value) {
    JsonValue v(Kind::kDouble);
    v.payload_.double_value = value;
    return v;
  }
  static JsonValue String(std::string value);
  static JsonValue MakeArray(Array items = {});
  // A packed array of integers. REQUIRES: !items.empty().
  static JsonValue MakeIntArray(std::span<const int64_t> items);
  static JsonValue MakeIntArray(std::initializer_list<int64_t> items) {
    return MakeIntArray(std::span<const int64_t>(items.begin(), items.size()));
  }
  static JsonValue MakeObject(Object members = {});

  Type type() const;
  bool is_null() const { return kind_ == Kind::kNull; }
  bool is_bool() const { return kind_ == Kind::kBool; }
  bool is_number() const { return kind_ == Kind::kInt || kind_ == Kind::kDouble; }
  bool is_string() const { return kind_ == Kind::kString; }
  bool is_array() const { return kind_ == Kind::kArray || kind_ == Kind::kIntArray; }
  // A packed array of integers (see the class comment).
  bool is_int_array() const { return kind_ == Kind::kIntArray; }
  bool is_object() const { return kind_ == Kind::kObject; }
  // A number written as an integer literal (or made by Int()) whose value fits in int64.
  bool is_integer() const { return kind_ == Kind::kInt; }

  // REQUIRES for each accessor: the value has that type (a number for number_value(),
  // is_integer() for int_value()). Violations crash.
  bool bool_value() const {
    EPLB_CHECK(is_bool(), TypeMismatch());
    return payload_.bool_value;
  }
  // For integers: the nearest double.
  double number_value() const {
    if (kind_ == Kind::kInt) return static_cast<double>(payload_.int_value);
    EPLB_CHECK(kind_ == Kind::kDouble, TypeMismatch());
    return payload_.double_value;
  }
  int64_t int_value() const {
    EPLB_CHECK(is_integer(), TypeMismatch());
    return payload_.int_value;
  }
  const std::string& string_value() const {
    EPLB_CHECK(is_string(), TypeMismatch());
    return *payload_.string_value;
  }
  // The items of an array that is not packed. REQUIRES: is_array() && !is_int_array().
  const Array& array_items() const {
    EPLB_CHECK(kind_ == Kind::kArray, TypeMismatch());
    return *payload_.array_value;
  }
  // REQUIRES: is_int_array().
  std::span<const int64_t> int_array_items() const {
    EPLB_CHECK(kind_ == Kind::kIntArray, TypeMismatch());
    return {payload_.int_array_value + 1, static_cast<size_t>(payload_.int_array_value[0])};
  }
  // The number of items of an array, either form.
  size_t array_size() const {
    if (kind_ == Kind::kIntArray) return static_cast<size_t>(payload_.int_array_value[0]);
    return array_items().size();
  }
  // A copy of item i of an array, either form: cheap for numbers (a packed item is an Int()),
  // a deep copy for strings, arrays and objects. REQUIRES: i < array_size().
  JsonValue item(size_t i) const;
  const Object& object_members() const {
    EPLB_CHECK(is_object(), TypeMismatch());
    return *payload_.object_value;
  }
  // The items of an array for changing them; a packed array is unpacked first (to JsonValues,
  // in place). REQUIRES: is_array().
  Array& mutable_array_items();
  Object& mutable_object_members() {
    EPLB_CHECK(is_object(), TypeMismatch());
    return *payload_.object_value;
  }

  // The value of the member named `key`, or nullptr (also when this is not an object). Linear in
  // the number of members.
  const JsonValue* Find(absl::string_view key) const;

  // Structural equality; numbers compare by value (Int(2) == Double(2.0)), objects member by member
  // in order.
  friend bool operator==(const JsonValue& a, const JsonValue& b);

 private:
  enum class Kind : uint8_t { kNull, kBool, kInt, kDouble, kString, kArray, kIntArray, kObject };
  union Payload {
    bool bool_value;
    int64_t int_value = 0;
    double double_value;
    std::string* string_value;  // owned
    Array* array_value;         // owned
    int64_t* int_array_value;   // owned (new[]): the count, then the items
    Object* object_value;       // owned
  };

  explicit JsonValue(Kind kind) : kind_(kind) {}
  bool OwnsHeap() const { return kind_ >= Kind::kString; }
  // Frees the string, array or object; leaves the value null.
  void Release();
  std::string TypeMismatch() const;

  Kind kind_ = Kind::kNull;
  Payload payload_;
};

// "null", "boolean", "number", "string", "array", "object".
absl::string_view JsonTypeName(JsonValue::Type type);

// Parses one JSON text. INVALID_ARGUMENT with the line and column of the first error otherwise.
absl::StatusOr<JsonValue> ParseJson(absl::string_view text);

// Serialises `value` compactly (no whitespace). REQUIRES: every number is finite.
std::string WriteJson(const JsonValue& value);

// Building blocks for writers that stream a document without building a DOM.
//
// Appends `s` as a quoted JSON string, escaping '"', '\\' and control characters. `s` should be
// valid UTF-8; bytes are copied as they are.
void AppendJsonString(std::string* out, absl::string_view s);
// Appends the shortest text that parses back to exactly `value` ("-0.0" for negative zero, which
// "-0" would not). REQUIRES: std::isfinite(value).
void AppendJsonNumber(std::string* out, double value);
void AppendJsonInt(std::string* out, int64_t value);
// Appends "[a, b, c]": `separator` between entries (", ", or "," for compact rows). REQUIRES:
// separator.size() ≤ 2.
void AppendJsonIntArray(std::string* out, std::span<const int32_t> values,
                        absl::string_view separator = ", ");

}  // namespace eplb

#endif  // EPLB_CORE_JSON_H_
